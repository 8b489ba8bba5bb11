"""The folder store's checksums and writer's lock; its crash-safe writes are the general
ones of dior_search.files (re-exported here for the store's modules)."""

from __future__ import annotations

import fcntl
import hashlib
from pathlib import Path
from typing import IO

from dior_search.errors import IndexStoreError
from dior_search.files import atomic_file as atomic_file
from dior_search.files import error_reason as error_reason
from dior_search.files import fsync_dir as fsync_dir
from dior_search.files import io_errors as io_errors

LOCK = "index.lock"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_file(path: Path, expected_sha256: str) -> None:
    """The file exists and has the checksum the manifest recorded; IndexStoreError otherwise."""
    if not path.is_file():
        raise IndexStoreError(f"index file missing: {path}")
    if sha256_file(path) != expected_sha256:
        raise IndexStoreError(f"index file damaged (checksum mismatch): {path}; rebuild the index")


def take_lock(directory: Path, wait: bool = False) -> IO[str]:
    """Hold the directory's writer lock (the one `index` run allowed to write there)."""
    handle = (directory / LOCK).open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise IndexStoreError(
            f"another dior-search run is writing {directory}; wait for it to finish"
        ) from None
    return handle
