"""Benchmark figures as data: each script writes what it measured to `benchmarks/results/`.

    from results_file import write_results
    write_results("embed_throughput_cpu", {"rows": rows}, tag="3b-bf16")

The file `benchmarks/results/NAME[-TAG].json` holds the figures together with what makes them
reproducible and comparable: the command line that made them, the commit (and whether the tree
had uncommitted changes), the machine (processor, cores, torch threads, memory) and the time.
The docs' tables and plots are generated from these files, so re-measuring changes data, not
prose.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", *args], cwd=RESULTS.parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "system": platform.platform(),
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_results(name: str, figures: dict[str, Any], *, tag: str = "") -> Path:
    """Write `figures` (JSON-serialisable) as `results/NAME[-TAG].json`; return the path."""
    stem = f"{name}-{tag}" if tag else name
    path = RESULTS / f"{stem}.json"
    record = {
        "benchmark": name,
        "tag": tag,
        "command": shlex.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "figures": figures,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    print(f"results written to {path.relative_to(RESULTS.parent.parent)}", flush=True)
    return path
