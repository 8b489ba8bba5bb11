"""Crash-safe file writing and I/O errors as one line: general helpers that the stores, the
index run and the CLI's output files share (no store's layout in here)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dior_search.errors import IndexStoreError, first_line


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
