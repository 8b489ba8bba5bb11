"""Files the verbs write for the user (`--sheet`, `--json`, `--plot`): checked before the
run, written whole or not at all, and every failure one line with exit code 7.

A missing parent folder is created only inside the working directory; elsewhere it is
refused (a typo in `--sheet /nonexistent/x.png` must not create `/nonexistent`).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from dior_search.errors import OutputError
from dior_search.files import atomic_file


def check_output(path: Path, option: str) -> None:
    """Fail now, before any work, if `path` cannot be written as a new or replaced file."""
    try:
        info = path.stat()
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise OutputError(f"{option} {path}: {exc.strerror}") from None
    if info is not None:
        if stat.S_ISDIR(info.st_mode):
            raise OutputError(f"{option} {path} is a folder: give a file name")
        if not stat.S_ISREG(info.st_mode):
            raise OutputError(f"{option} {path} is not a regular file (a device or a pipe)")
        if not os.access(path, os.W_OK):
            raise OutputError(f"{option} {path}: {os.strerror(13)}")
    folder = existing_parent(path, option)
    if not folder.is_dir():
        raise OutputError(f"{option} {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path}: cannot write in {folder}: {os.strerror(13)}")


def existing_parent(path: Path, option: str) -> Path:
    """The folder `path` will be written in, or its nearest existing ancestor when the folder
    is missing and may be created (inside the working directory only)."""
    parent = path.absolute().parent
    if parent.exists():
        return parent
    if not parent.is_relative_to(Path.cwd()):
        raise OutputError(
            f"{option} {path}: folder {parent} does not exist (only folders inside the "
            "working directory are created)"
        )
    ancestor = parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    return ancestor


def write_output(path: Path, option: str, write: Callable[[Path], None]) -> None:
    """Write `path` with `write(temporary path)`, then move it into place (see store.files);
    OutputError naming the path and the errno's meaning if anything fails."""
    check_output(path, option)
    try:
        path.absolute().parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:
            write(tmp)
    except OSError as exc:
        raise OutputError(f"cannot write {option} {path}: {exc.strerror or exc}") from None
