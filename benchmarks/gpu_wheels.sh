#!/usr/bin/env bash
# Wheels for the GPU machine, whose image lacks the project's transformers (it has 5.17; the
# project needs 5.24), downloaded here into .whl/ (git-ignored) for gpu_session.sh to install.
# Its python is 3.12 on x86-64; everything else the benchmarks import is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  platforms+=(--platform "$p")
done
"${PYTHON:-python3}" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${platforms[@]}" -d .whl \
  "transformers==$(grep -i '^transformers==' constraints.txt | cut -d= -f3)" \
  "regex==$(grep -i '^regex==' constraints.txt | cut -d= -f3)"
ls -la .whl
