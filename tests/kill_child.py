"""A sync (`index`) or compaction in a child process that SIGKILLs itself at its N-th file
operation (os.replace, os.unlink, os.fsync): every point where a crash leaves other files.

    python kill_child.py index FOLDER INDEXES KILL_AT
    python kill_child.py compact INDEX_DIR - KILL_AT

KILL_AT 0 runs to the end and prints how many such operations there were.
"""

import os
import signal
import sys
from pathlib import Path

from kill_runs import PixelEmbedder

from dior_search.data.collections import open_folder
from dior_search.indexing.job import IndexSettings
from dior_search.indexing.run import index_collection
from dior_search.store.writer import compact_index

CONDITIONS = ["color"]
SHARD_SIZE = 4


def count_operations(kill_at: int) -> list[int]:
    count = [0]
    for name in ("replace", "unlink", "fsync"):
        real = getattr(os, name)

        def counted(*args, real=real, **kwargs):
            count[0] += 1
            if count[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)

        setattr(os, name, counted)
    return count


def sync(folder: Path, indexes: Path, **settings) -> None:
    index_collection(
        open_folder(folder),
        CONDITIONS,
        PixelEmbedder(),
        IndexSettings(indexes_dir=indexes, shard_size=SHARD_SIZE, **settings),
        confirm_removal=lambda removals: True,
    )


def main() -> None:
    mode, target, indexes, kill_at = sys.argv[1:]
    count = count_operations(int(kill_at))
    if mode == "index":
        sync(Path(target), Path(indexes))
    else:
        compact_index(Path(target), threshold=0.0)
    print(count[0])


if __name__ == "__main__":
    main()
