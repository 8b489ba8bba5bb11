"""`dior-search index` in a child process, for the tests that SIGKILL it and resume."""

import sys
from pathlib import Path

import numpy as np

from dior_search.store.reader import IndexReader


def index_command(folder: Path, indexes: Path, conditions: list[str], shard_size: int) -> list[str]:
    condition_args = [arg for condition in conditions for arg in ("--condition", condition)]
    return [
        sys.executable,
        "-m",
        "dior_search",
        "index",
        "--images",
        str(folder),
        *condition_args,
        "--shard-size",
        str(shard_size),
        "--indexes",
        str(indexes),
        "--model",
        "tiny",
        "--device",
        "cpu",
    ]


def assert_same_index(got: IndexReader, want: IndexReader) -> list[str]:
    """Every image of `want` exactly once in `got`, with `want`'s vector; `got`'s paths."""
    wanted = dict(zip(want.paths(), want.vectors(want.ids), strict=True))
    paths = got.paths()
    assert len(paths) == len(set(paths)), "an image was indexed twice"
    assert sorted(paths) == sorted(wanted)
    for path, vector in zip(paths, got.vectors(got.ids), strict=True):
        np.testing.assert_allclose(vector, wanted[path], atol=1e-6)
    return paths
