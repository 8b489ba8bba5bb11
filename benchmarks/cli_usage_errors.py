"""How fast the command line answers a usage error (and `--help`), for every verb.

Each case runs `python -m dior_search ARGS` in a fresh process, as a user's shell does, and
records its wall time, its exit code and whether a model library (torch, transformers, faiss)
was imported. The target (issue 26): every usage error in under 1.5 s, no model library loaded.

    python benchmarks/cli_usage_errors.py              # every case, 3 runs each
    python benchmarks/cli_usage_errors.py --repeats 1

Writes `benchmarks/results/cli_usage_errors.json` (see results_file.py).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from results_file import write_results

REPOSITORY = Path(__file__).resolve().parents[1]
TARGET_S = 1.5
MODEL_LIBRARIES = ("torch", "transformers", "faiss")
# (verb, arguments, expected exit code): each a usage error (2), or --help (0).
USAGE_ERRORS: list[tuple[str, list[str], int]] = [
    ("(none)", [], 2),
    ("(none)", ["--help"], 0),
    ("(none)", ["nosuch"], 2),
    ("index", ["--help"], 0),
    ("index", ["index", "--images", "", "-c", "color"], 2),
    ("index", ["index", "--images", "x", "--dataset", "synthetic"], 2),
    ("index", ["index", "--dataset", "synthetic", "-c", "nosuch"], 2),
    ("index", ["index", "--images", "x", "-c", ""], 2),
    ("index", ["index", "--images", "x", "-c", "a", "--device", "banana"], 2),
    ("index", ["index", "--images", "x", "-c", "a", "--batch-size", "0"], 2),
    ("index", ["index", "--images", "x", "-c", "a", "--shard-size", "0"], 2),
    ("index", ["index", "--images", "x", "-c", "a", "--template", "nosuch"], 2),
    ("index", ["index", "--images", "x", "-c", "a", "--store", "milvus://h:99999"], 2),
    ("query", ["--help"], 0),
    ("query", ["query"], 2),
    ("query", ["query", "--images", "x", "-c", "a"], 2),
    ("query", ["query", "--images", "x", "-c", "", "--id", "0"], 2),
    ("query", ["query", "--images", "x", "--text", "red"], 2),
    ("query", ["query", "--images", "x", "-c", "a", "--id", "0", "--where", "a=two words"], 2),
    ("query", ["query", "--images", "x", "-c", "a", "--id", "0", "--device", "banana"], 2),
    ("query", ["query", "--images", "x", "-c", "a", "--id", "0", "--dtype", "float8"], 2),
    ("query", ["query", "--images", "x", "-c", "a", "--id", "0", "--nprobe", "0"], 2),
    ("query", ["query", "--index", "x", "--images", "y", "--id", "0"], 2),
    ("query", ["query", "--images", "x", "--text", "a", "-c", "a", "--weight", "1"], 2),
    ("facets", ["--help"], 0),
    ("facets", ["facets"], 2),
    ("facets", ["facets", "--images", "x", "-c", ""], 2),
    ("facets", ["facets", "--images", "x", "-c", "a", "--top", "0"], 2),
    ("export", ["--help"], 0),
    ("export", ["export", ""], 2),
    ("export", ["export", "out"], 2),
    ("export", ["export", "out", "--images", "x", "-c", ""], 2),
    ("compact", ["--help"], 0),
    ("compact", ["compact", "--threshold", "2"], 2),
    ("compact", ["compact", "--images", "x", "-c", ""], 2),
    ("bench", ["--help"], 0),
    ("bench", ["bench", "--distance", "nosuch"], 2),
    ("bench", ["bench", "--generative-answers", "nosuch"], 2),
    ("bench", ["bench", "--device", "banana"], 2),
    ("demo", ["--help"], 0),
    ("demo", ["demo", "--device", "banana"], 2),
    ("demo", ["demo", "--batch-size", "0"], 2),
    ("serve", ["--help"], 0),
    ("serve", ["serve", "--port", "70000"], 2),
    ("serve", ["serve", "--timeout", "0"], 2),
    ("serve", ["serve", "--device", "banana"], 2),
]
# A verb's --help is `VERB --help`.
CASES = [
    (verb, [verb, "--help"] if args == ["--help"] and verb != "(none)" else args, code)
    for verb, args, code in USAGE_ERRORS
]
# Prints, after the CLI has run in this process, which model libraries it imported.
PROBE = (
    "import sys\n"
    "from dior_search.cli import main\n"
    "code = main(sys.argv[1:])\n"
    f"loaded = [m for m in {MODEL_LIBRARIES!r} if m in sys.modules]\n"
    "sys.stderr.write('LOADED ' + ','.join(loaded) + '\\n')\n"
    "sys.exit(code)\n"
)


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_case(args: list[str], workdir: Path) -> tuple[float, float, int, list[str], str]:
    """(wall seconds, CPU seconds, exit code, model libraries imported, the error line) of
    one run. CPU time says what the run costs on a machine busy with other work, where the
    wall time also holds the time spent waiting for a core."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPOSITORY), COLUMNS="80")
    cpu = children_cpu_s()
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    seconds = time.perf_counter() - started
    cpu = children_cpu_s() - cpu
    lines = done.stderr.splitlines()
    loaded = next((line[7:] for line in lines if line.startswith("LOADED ")), "")
    error = next((line for line in lines if line.startswith("error:")), "")
    return seconds, cpu, done.returncode, [m for m in loaded.split(",") if m], error


def plain_start(workdir: Path) -> float:
    """Seconds for `python -c pass`: the interpreter's own share of every case."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], cwd=workdir, check=True)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="Runs of each case (median).")
    options = parser.parse_args(argv)
    workdir = Path(os.environ.get("TMPDIR", "/tmp"))
    rows = []
    for verb, args, expected in CASES:
        runs = [run_case(args, workdir) for _ in range(options.repeats)]
        seconds = statistics.median(run[0] for run in runs)
        cpu = statistics.median(run[1] for run in runs)
        _, _, code, loaded, error = runs[-1]
        rows.append(
            {
                "verb": verb,
                "args": args,
                "exit_code": code,
                "expected_exit_code": expected,
                "median_s": round(seconds, 3),
                "max_s": round(max(run[0] for run in runs), 3),
                "median_cpu_s": round(cpu, 3),
                "model_libraries_loaded": loaded,
                "error": error,
            }
        )
        mark = "ok" if seconds < TARGET_S and not loaded and code == expected else "SLOW/BAD"
        shown = f"{seconds:6.2f} s ({cpu:4.2f} s CPU)  exit {code}  {mark:8}"
        print(f"{shown} dior-search {' '.join(args)}", flush=True)
    slowest = max(row["median_s"] for row in rows)  # type: ignore[type-var]
    figures = {
        "target_s": TARGET_S,
        "repeats": options.repeats,
        "python_start_s": round(plain_start(workdir), 3),
        "cases": len(rows),
        "slowest_median_s": slowest,
        "slowest_median_cpu_s": max(row["median_cpu_s"] for row in rows),  # type: ignore[type-var]
        "load_average_1min": round(os.getloadavg()[0], 2),
        "over_target": [row["args"] for row in rows if row["median_s"] >= TARGET_S],  # type: ignore[operator]
        "loading_model_libraries": [row["args"] for row in rows if row["model_libraries_loaded"]],
        "wrong_exit_code": [
            row["args"] for row in rows if row["exit_code"] != row["expected_exit_code"]
        ],
        "rows": rows,
    }
    print(f"slowest median {slowest:.2f} s over {len(rows)} cases (target {TARGET_S} s)")
    print(f"results: {write_results('cli_usage_errors', figures)}")
    return rows


if __name__ == "__main__":
    main()
