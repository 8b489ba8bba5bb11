"""Every I/O failure is one line naming the path and the errno's meaning, with the exit code
README documents; output paths are checked before the run; nothing indexed is lost.

Faults are injected by monkeypatching (the tests may run as root, for whom permissions do not
apply, and need no mounts)."""

import errno
import json
import os
from pathlib import Path

import pytest
from cli_runs import TINY, error_line, image_folder, run_cli

from dior_search.store import files as store_files
from dior_search.store import packing as store_packing
from dior_search.store import shards as store_shards
from dior_search.store import writer as store_writer
from dior_search.store.manifest import MANIFEST
from dior_search.store.reader import IndexReader


def os_error(code: int, path: object = None) -> OSError:
    return OSError(code, os.strerror(code), None if path is None else str(path))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return image_folder(tmp_path_factory.mktemp("io") / "photos", [f"{n}.png" for n in range(6)])


def index(capsys, folder, indexes, *extra):
    args = ["index", "--images", folder, "-c", "color", "--indexes", indexes, *TINY]
    return run_cli(capsys, *args, *extra)


def test_read_only_indexes_folder(folder, tmp_path, capsys, monkeypatch):
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self.is_relative_to(tmp_path / "indexes"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    line = error_line(index(capsys, folder, tmp_path / "indexes"), 5)
    assert line.startswith(f"error: cannot write index {tmp_path / 'indexes'}")
    assert line.endswith(": Permission denied")


def test_read_only_index_folder(folder, tmp_path, capsys, monkeypatch):
    assert index(capsys, folder, tmp_path).code == 0
    (directory,) = tmp_path.glob("*/tiny/color")

    def no_lock(directory, wait=False):
        raise PermissionError(
            errno.EACCES, os.strerror(errno.EACCES), str(directory / "index.lock")
        )

    monkeypatch.setattr(store_writer, "take_lock", no_lock)
    line = error_line(index(capsys, folder, tmp_path), 5)
    assert (
        line == f"error: cannot write index {directory} ({directory}/index.lock): Permission denied"
    )
    assert len(IndexReader(directory)) == 6


def test_disk_full_creating_the_manifest(folder, tmp_path, capsys, monkeypatch):
    def full(directory, manifest):
        raise os_error(errno.ENOSPC, directory / f".{MANIFEST}.tmp")

    monkeypatch.setattr(store_writer, "write_manifest", full)
    line = error_line(index(capsys, folder, tmp_path), 5)
    assert line.startswith("error: cannot open index ") and "for writing" in line
    assert line.endswith(": No space left on device")


def test_disk_full_while_packing_keeps_the_index(folder, tmp_path, capsys, monkeypatch):
    assert index(capsys, folder, tmp_path).code == 0
    (directory,) = tmp_path.glob("*/tiny/color")
    before = (directory / MANIFEST).read_bytes()

    def full(index, path):
        # What FAISS raises when its write fails.
        raise RuntimeError("Error in faiss::FileIOWriter::operator() at io.cpp:1: write error")

    monkeypatch.setattr(store_packing, "write_index_file", full)
    line = error_line(index(capsys, folder, tmp_path, "--index-type", "IVF2,Flat"), 5)
    assert line.startswith(f"error: cannot pack index {directory}") and "write error" in line
    assert (directory / MANIFEST).read_bytes() == before
    monkeypatch.undo()
    assert len(IndexReader(directory)) == 6


def test_disk_full_writing_a_shard(folder, tmp_path, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise os_error(errno.ENOSPC)

    monkeypatch.setattr(store_shards, "write_table", full)
    line = error_line(index(capsys, folder, tmp_path), 5)
    assert "No space left on device" in line and "keeps its 0 rows" in line


def test_datasets_dir_that_is_not_a_folder(tmp_path, capsys):
    run = run_cli(capsys, "index", "--dataset", "synthetic", "--datasets-dir", "/dev/null")
    assert error_line(run, 3) == (
        "error: cannot write the synthetic set to /dev/null/synthetic/test: Not a directory"
    )
    run = run_cli(
        capsys, "bench", "--dataset", "synthetic", "--method", "dior", "--datasets-dir", "/dev/null"
    )
    assert "Not a directory" in error_line(run, 3)


def test_synthetic_set_in_a_read_only_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if "datasets" in self.parts:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    line = error_line(run_cli(capsys, "index", "--dataset", "synthetic", "-c", "color"), 3)
    assert line.startswith("error: cannot write the synthetic set to datasets/synthetic")
    assert line.endswith(": Permission denied")


@pytest.fixture(scope="module")
def small_index(folder, tmp_path_factory):
    from dior_search.cli import main

    indexes = tmp_path_factory.mktemp("small")
    args = ["index", "--images", str(folder), "-c", "color", "--indexes", str(indexes), *TINY]
    assert main(args) == 0
    (directory,) = indexes.glob("*/tiny/color")
    return directory


def bad_outputs(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    (tmp_path / "folder.png").mkdir()
    return [
        (tmp_path / "folder.png", "is a folder: give a file name"),
        (fifo, "is not a regular file"),
        (Path("/dev/full"), "is not a regular file"),
        (Path("/nonexistent/dir/x.png"), "folder /nonexistent/dir does not exist"),
        (tmp_path / "file.txt" / "x.png", ": Not a directory"),
    ]


def test_sheet_paths_are_checked_before_the_run(small_index, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("a file")
    for path, message in bad_outputs(tmp_path):
        # --index names no index: the sheet is refused first, before anything is read.
        run = run_cli(capsys, "query", "--id", "0", "--index", tmp_path / "none", "--sheet", path)
        line = error_line(run, 7)
        assert line.startswith(f"error: --sheet {path}") and message in line
    assert not Path("/nonexistent").exists()


def test_read_only_sheet_and_json_paths(small_index, tmp_path, capsys, monkeypatch):
    real_access = os.access

    def access(path, mode, **kwargs):
        if Path(path).is_relative_to(tmp_path / "ro") and mode & os.W_OK:
            return False
        return real_access(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", access)
    (tmp_path / "ro").mkdir()
    run = run_cli(
        capsys, "query", "--id", "0", "--index", small_index, "--sheet", tmp_path / "ro" / "s.png"
    )
    assert error_line(run, 7).endswith("Permission denied")
    run = run_cli(capsys, "bench", "--dataset", "synthetic", "--json", tmp_path / "ro" / "o.json")
    assert error_line(run, 7) == (
        f"error: --json {tmp_path / 'ro' / 'o.json'}: cannot write in {tmp_path / 'ro'}: "
        "Permission denied"
    )


def test_bench_json_and_plot_are_checked_before_the_run(tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    for option in ("--json", "--plot"):
        run = run_cli(capsys, "bench", "--dataset", "synthetic", option, tmp_path / "taken")
        assert (
            error_line(run, 7)
            == f"error: {option} {tmp_path / 'taken'} is a folder: give a file name"
        )


def test_a_sheet_write_that_fails_is_one_line(small_index, tmp_path, capsys, monkeypatch):
    def full(self, *args, **kwargs):
        raise os_error(errno.ENOSPC)

    from PIL import Image

    monkeypatch.setattr(Image.Image, "save", full)
    sheet = tmp_path / "sheet.png"
    run = run_cli(capsys, "query", "--id", "0", "--index", small_index, "--sheet", sheet)
    assert error_line(run, 7) == f"error: cannot write --sheet {sheet}: No space left on device"
    assert not sheet.exists() and not list(tmp_path.glob(".*tmp"))


def test_sheet_folder_inside_the_working_directory_is_created(
    small_index, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    run = run_cli(
        capsys, "query", "--id", "0", "--index", small_index, "--sheet", "out/s.png", "--json"
    )
    assert run.code == 0, run.err
    assert (tmp_path / "out" / "s.png").is_file() and json.loads(run.out)[0]["id"] == 0


def test_an_unexpected_os_error_is_still_one_line(tmp_path, capsys, monkeypatch):
    from dior_search.cli import query as cli_query

    def broken(*args, **kwargs):
        raise os_error(errno.EIO, tmp_path / "x")

    monkeypatch.setattr(cli_query, "open_searcher", broken)
    run = run_cli(capsys, "query", "--id", "0", "--index", tmp_path)
    assert error_line(run, 1) == f"error: {tmp_path / 'x'}: Input/output error"


def test_lock_file_errors_name_the_lock(tmp_path):
    from dior_search.errors import IndexStoreError

    (tmp_path / "ix").mkdir()
    holder = store_files.take_lock(tmp_path / "ix")
    try:
        with pytest.raises(IndexStoreError, match="another dior-search run is writing"):
            store_files.take_lock(tmp_path / "ix")
    finally:
        holder.close()


def test_an_unreadable_index_file_is_an_index_error(small_index, capsys, monkeypatch):
    def denied(path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(store_files, "sha256_file", denied)
    run = run_cli(capsys, "query", "--id", "0", "--index", small_index)
    line = error_line(run, 5)
    assert line.startswith(f"error: cannot read index {small_index} ({small_index}/shard-00000")
    assert line.endswith(": Permission denied")
