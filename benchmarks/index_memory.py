"""Peak memory of `dior-search index` against the number of images: it should stay flat.

    python benchmarks/index_memory.py [--sizes 250 500 1000] [--conditions 2]

Each size runs `dior-search index` in a fresh process over that many synthetic images with
the bundled tiny model, and prints the process's peak RSS. Images are streamed (decoded a
bounded window ahead of the model) and vectors are written shard by shard, so the peak should
not grow with the number of images beyond the one shard of vectors held in memory.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dior_search.data.synthetic import write_dataset


def peak_rss_mib(command: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of a command run in a child process."""
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # wait4 reports this child's own peak RSS (KiB on Linux), not the maximum over all children.
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"command failed: {' '.join(command)}")
    return usage.ru_maxrss / 1024, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000])
    parser.add_argument("--conditions", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=200)
    args = parser.parse_args()
    conditions = ["color", "background", "pattern", "size"][: args.conditions]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_dataset(root / "all", {"test": max(args.sizes)})
        print(f"{'images':>7} {'peak RSS MiB':>13} {'seconds':>8} {'images/s':>9}")
        for size in args.sizes:
            folder = root / f"images-{size}"
            folder.mkdir()
            for index in range(size):
                name = f"{index:05d}.png"
                (folder / name).symlink_to(root / "all" / "test" / name)
            command = [
                sys.executable,
                "-m",
                "dior_search",
                "index",
                "--images",
                str(folder),
                "--indexes",
                str(root / "indexes"),
                "--shard-size",
                str(args.shard_size),
                "--device",
                "cpu",
            ]
            for condition in conditions:
                command += ["--condition", condition]
            peak, seconds = peak_rss_mib(command)
            print(f"{size:>7} {peak:>13.0f} {seconds:>8.1f} {size / seconds:>9.1f}")


if __name__ == "__main__":
    main()
