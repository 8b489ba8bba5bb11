"""The steps of issue 16's GPU session, in one process (a 7B model loads once per dtype).

Run by benchmarks/gpu_session.sh, which sets up the machine and keeps the log. Steps run in
order of what they are worth; one that would not finish before the deadline (DEADLINE seconds,
default 420) is skipped, and one that fails is reported and the next one runs.

    OUT=/tmp/out python benchmarks/gpu_session.py           # 7B shapes on the GPU
    OUT=/tmp/out python benchmarks/gpu_session.py --tiny    # every step on the CPU, tiny sizes
"""

from __future__ import annotations

import importlib
import os
import sys
import time
import traceback
from pathlib import Path


def steps(out: Path, tiny: bool) -> list[tuple[str, float, str, list[str]]]:
    """(title, seconds it is expected to take, module, argv), most valuable first."""
    if tiny:
        cpu = ["--model-size", "mid", "--device", "cpu", "--image-size", "56", "--batch-size", "4"]
        big = [*cpu, "--model-dir", "/tmp/dior_tiny_big"]
        mid = [*cpu, "--model-dir", "/tmp/dior_tiny_mid"]
        bench = ["--images", "4", "--repeats", "1"]
        mid_bench = ["--images", "4", "--repeats", "1"]
        profile = ["--batches", "1"]
        agree = ["--images", "3", "--conditions", "2"]
        scale = 0.0  # nothing is skipped: the deadline is for the GPU
    else:
        gpu = ["--device", "cuda", "--dtype", "bfloat16", "--image-size", "448"]
        big = ["--model-size", "7b", *gpu, "--batch-size", "32", "--model-dir", "/tmp/dior_7b"]
        mid = ["--model-size", "mid", *gpu, "--batch-size", "32", "--model-dir", "/tmp/dior_mid"]
        bench = ["--images", "32", "--repeats", "1", "--passes-per-group", "2"]
        mid_bench = ["--images", "48", "--repeats", "2", "--passes-per-group", "2"]
        profile = ["--batches", "2"]
        agree = ["--images", "8", "--conditions", "5"]
        scale = 1.0
    markdown = ["--markdown", str(out / "profile_7b.md")]
    every = ["--paths", "naive", "reference-kv", "ours", "ours-before", "lower bound"]
    grouped = ["--paths", "ours", "lower bound", "--vision-attention", "grouped"]
    return [
        # Where each millisecond of one batch goes: before, after, after with the vision
        # attention grouped (builds the 7B folder first).
        (
            "profile, 7B shapes, C = 1 and 10",
            150 * scale,
            "profile_embed",
            [*big, "--conditions", "1", "10", *profile, "--operators", *markdown],
        ),
        # The benchmark, every path and ours as it was (naive is most of its time).
        (
            "benchmark, 7B shapes, C = 1 5 10",
            120 * scale,
            "embed_throughput",
            [*big, "--conditions", "1", "5", "10", *bench, *every],
        ),
        # Input building with a 25M-parameter model (the bound that matters is at C = 10).
        (
            "benchmark, 25M, C = 1 5 10",
            50 * scale,
            "embed_throughput",
            [*mid, "--conditions", "1", "5", "10", *mid_bench, *every],
        ),
        (
            "profile, 25M, C = 10",
            25 * scale,
            "profile_embed",
            [*mid, "--conditions", "10", *profile, "--markdown", str(out / "profile_mid.md")],
        ),
        # bf16 within cosine 0.999 of fp32, fast feeding = plain feeding (mixed image sizes).
        (
            "agreement, 7B shapes, fp32 and bf16",
            70 * scale,
            "dtype_agreement",
            [*big, *agree],
        ),
        # The vision attention experiment in the benchmark, if there is time left.
        (
            "benchmark, 7B shapes, grouped vision attention: ours and bound",
            30 * scale,
            "embed_throughput",
            [*big, "--conditions", "1", "5", "10", *bench, *grouped],
        ),
    ]


def main() -> int:
    tiny = "--tiny" in sys.argv[1:]
    out = Path(os.environ.get("OUT", "/tmp/gpu_session"))
    out.mkdir(parents=True, exist_ok=True)
    deadline = float(os.environ.get("DEADLINE", "420"))
    sys.path.insert(0, str(Path(__file__).parent))
    began = time.monotonic()
    failed = 0
    for title, expected, module, argv in steps(out, tiny):
        elapsed = time.monotonic() - began
        if elapsed + expected > deadline:
            print(f"=== skipped: {title} (expected {expected:.0f} s, {elapsed:.0f} s gone)")
            continue
        print(f"=== {title}: {' '.join(argv)}", flush=True)
        started = time.monotonic()
        try:
            importlib.import_module(module).main(argv)
        except (Exception, SystemExit):  # one step's failure must not cost the others
            traceback.print_exc()
            failed += 1
        print(f"=== {time.monotonic() - started:.0f} s ({time.monotonic() - began:.0f} s in all)")
        sys.stdout.flush()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
