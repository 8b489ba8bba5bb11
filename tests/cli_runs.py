"""Running the CLI in-process as a user would, and what every run must show on stderr."""

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from dior_search.cli import main
from dior_search.data.synthetic import write_dataset

# README "Exit codes": every code a run may end with (1 is a bug: never expected here).
DOCUMENTED_EXIT_CODES = {0, 2, 3, 4, 5, 6, 7}
# The bundled model on the CPU: named, since the default model of an image folder is the 7B one.
TINY = ("--model", "tiny", "--device", "cpu")
# What a run of the bundled model on anything but the synthetic set says first (on stderr).
TINY_WARNING = "warning: the tiny model knows only the generated synthetic images"


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


def run_cli(capsys, *args: str) -> Run:
    """`dior-search ARGS` in this process; stdout and stderr as the user sees them."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)


def error_line(run: Run, code: int) -> str:
    """The run failed with `code` and said so in exactly one stderr line (no blank line
    before it, no traceback); that line."""
    assert run.code == code, (run.code, run.err)
    assert "Traceback" not in run.err + run.out
    lines = [line for line in run.err.splitlines() if not line.startswith(TINY_WARNING)]
    assert len(lines) == 1 and lines[0].startswith("error: "), repr(run.err)
    return lines[0]


def image_folder(root: Path, names: list[str], source_count: int = 0) -> Path:
    """A folder whose files are synthetic test images under `names` (os.fsdecode strings,
    sub-folders allowed)."""
    source = root.parent / f".{root.name}-source"
    count = source_count or len(names)
    write_dataset(source, {"test": count}, labels=False)
    root.mkdir(parents=True, exist_ok=True)
    for number, name in enumerate(names):
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / "test" / f"{number % count:05d}.png", target)
    return root


def odd(raw: bytes) -> str:
    """A file name from its bytes, held as the package holds names (see data.paths)."""
    return os.fsdecode(raw)


def deny_listing(monkeypatch, name: str) -> None:
    """Make every folder whose path ends in `name` unreadable (os.scandir refuses it with
    EACCES, as for a folder without read permission; chmod does not stop root)."""
    real_scandir = os.scandir

    def scandir(path):
        if os.fspath(path).endswith(name):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)


def synthetic_datasets(root: Path, n_images: int) -> Path:
    """A datasets folder at `root` holding the synthetic set's first `n_images` test images."""
    write_dataset(root / "synthetic", {"test": n_images})
    return root
