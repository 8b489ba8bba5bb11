#!/usr/bin/env bash
# Issue 16's GPU session: profile, benchmark and check DIOR embedding at Qwen2.5-VL-7B shapes
# (bf16, 448 x 448) and the 25M-parameter model at C = 10 (benchmarks/gpu_session.py has the
# steps). About 7 minutes on one H100/H200, cut at DEADLINE seconds (default 420): steps that
# would not fit are skipped. Outputs in $OUT: session.log, profile_7b.md, profile_mid.md.
#
#   bash benchmarks/gpu_wheels.sh     # on the dev machine first: .whl/ with transformers 5.24
#   OUT=/tmp/out bash benchmarks/gpu_session.sh                              # on the GPU machine
#   OUT=/tmp/out PYTHON=.venv/bin/python bash benchmarks/gpu_session.sh --tiny       # CPU check
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ "${1:-}" = "--tiny" ]; then export DEADLINE=${DEADLINE:-1800}; fi  # 2 busy cores are slow
# The GPU machine's image has an older transformers; the project needs 5.24 (carried as wheels).
if [ "${1:-}" != "--tiny" ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{
  nvidia-smi -L 2>/dev/null || echo "no GPU (nvidia-smi)"
  "$PYTHON" -c "import torch, transformers, os; print('torch', torch.__version__,
'transformers', transformers.__version__, 'cores', os.cpu_count(),
'gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
  # One limit for everything: the deadline inside, plus the time to finish the last step.
  timeout $(( ${DEADLINE:-420} + 60 )) "$PYTHON" benchmarks/gpu_session.py "$@"
  echo "=== exit $? after $SECONDS s; outputs in $OUT"
} 2>&1 | grep --line-buffered -v "^USDT\|SyncActivityProfilerHandler" | tee "$OUT/session.log"
