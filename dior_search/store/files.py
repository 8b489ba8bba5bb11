"""Crash-safe file writing, checksums and the writer's lock."""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from dior_search.errors import IndexStoreError, first_line

LOCK = "index.lock"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is fsynced and renamed onto `path`."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        with tmp.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


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


def error_reason(exc: BaseException) -> str:
    """What an I/O error says (the errno's meaning), FAISS's write errors included."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return first_line(exc)


@contextmanager
def io_errors(doing: str) -> Iterator[None]:
    """Turn an OSError (or FAISS's RuntimeError for a failed write) into one IndexStoreError
    line: what was being done, the file, and the errno's meaning."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        where = getattr(exc, "filename", None)
        named = f" ({where})" if where else ""
        raise IndexStoreError(f"{doing}{named}: {error_reason(exc)}") from None
