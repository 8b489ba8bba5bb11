"""Distributed indexing: parts embedded by separate processes give the single-process index."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dior_search
from dior_search.cli import main
from dior_search.data.collections import open_folder, slug
from dior_search.data.synthetic import write_dataset
from dior_search.store import parts as folder_parts
from dior_search.store.manifest import MANIFEST, Manifest
from dior_search.store.parts import PARTS
from dior_search.store.reader import IndexReader
from dior_search.store.writer import IndexWriter

CONDITION = "object color"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    write_dataset(root, {"test": 60})
    (root / "labels.csv").unlink()
    return root / "test"


def index_args(images, indexes, *extra):
    return [
        "index",
        "--images",
        str(images),
        "--condition",
        CONDITION,
        "--shard-size",
        "7",
        "--indexes",
        str(indexes),
        "--model",
        "tiny",
        "--device",
        "cpu",
        *extra,
    ]


def index_directory(images, indexes):
    return indexes / open_folder(images).name / "tiny" / slug(CONDITION)


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory):
    """The index one process builds."""
    indexes = tmp_path_factory.mktemp("reference")
    assert main(index_args(images, indexes)) == 0
    return IndexReader(index_directory(images, indexes))


def assert_same_index(got, want):
    got_ids, got_vectors = got.all_vectors()
    want_ids, want_vectors = want.all_vectors()
    np.testing.assert_array_equal(got_ids, want_ids)
    assert got.paths() == want.paths()
    cosine = np.sum(got_vectors * want_vectors, axis=1)
    assert cosine.min() >= 0.9999
    assert not (got.directory / PARTS).exists()


@pytest.mark.slow
def test_accelerate_launch_two_processes_equals_one(images, reference, tmp_path):
    indexes = tmp_path / "indexes"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        # accelerate's --cpu runs one process (its multi-CPU mode needs MPI): --multi_gpu
        # starts torchrun, and --device cpu keeps every process on the CPU.
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "0",
        "-m",
        "dior_search",
        *index_args(images, indexes),
    ]
    package_root = str(Path(dior_search.__file__).resolve().parents[1])
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "part-00000-of-00002" in done.stdout and "part-00001-of-00002" in done.stdout
    assert "all parts complete, merged" in done.stdout
    assert_same_index(IndexReader(index_directory(images, indexes)), reference)


def test_parts_run_one_at_a_time_then_merge(images, reference, tmp_path, capsys):
    indexes = tmp_path / "indexes"
    assert main(index_args(images, indexes, "--part", "1", "--parts", "3")) == 0
    assert main(index_args(images, indexes, "--part", "0", "--parts", "3")) == 0
    out = capsys.readouterr().out
    assert "waiting for parts 0, 2" in out and "waiting for parts 2" in out
    directory = index_directory(images, indexes)
    assert not (directory / MANIFEST).exists()
    # The index is not there yet, so a plain run is refused rather than mixed in.
    assert main(index_args(images, indexes)) == 5
    assert "unfinished distributed run" in capsys.readouterr().err
    # As is a run with another number of parts.
    assert main(index_args(images, indexes, "--part", "0", "--parts", "2")) == 5
    assert "unfinished run in 3 parts, not 2" in capsys.readouterr().err
    # Or a part that would slice another list of work (here: another collection).
    fewer = tmp_path / "fewer"
    shutil.copytree(images, fewer)
    (fewer / "00059.png").unlink()
    directory_fewer = index_directory(fewer, indexes)
    shutil.copytree(directory / PARTS, directory_fewer / PARTS)
    assert main(index_args(fewer, indexes, "--part", "2", "--parts", "3")) == 5
    assert "was planned for another list of work" in capsys.readouterr().err
    assert main(index_args(images, indexes, "--part", "2", "--parts", "3")) == 0
    assert "all parts complete, merged" in capsys.readouterr().out
    assert_same_index(IndexReader(directory), reference)
    # Nothing left to do: another run adds nothing.
    assert main(index_args(images, indexes)) == 0
    assert "0 added, 0 changed, 0 moved, 0 removed, 60 unchanged" in capsys.readouterr().out


def test_a_failed_part_is_re_run_alone(images, reference, tmp_path, monkeypatch):
    indexes = tmp_path / "indexes"
    assert main(index_args(images, indexes, "--part", "0", "--parts", "2")) == 0
    real_flush = IndexWriter.commit
    flushes = []

    def crash_on_third_shard(writer):
        flushes.append(1)
        if len(flushes) == 3:
            raise KeyboardInterrupt  # as if the process were killed here
        real_flush(writer)

    monkeypatch.setattr(IndexWriter, "commit", crash_on_third_shard)
    assert main(index_args(images, indexes, "--part", "1", "--parts", "2")) == 130
    monkeypatch.undo()
    directory = index_directory(images, indexes)
    part = directory / PARTS / "part-00001-of-00002"
    assert not (part / "done.json").exists()
    assert [s.rows for s in Manifest.read(part).shards] == [7, 7]
    assert main(index_args(images, indexes, "--part", "1", "--parts", "2")) == 0
    assert_same_index(IndexReader(directory), reference)


@pytest.mark.parametrize("crash_in", ["write_manifest", "retire"])
def test_a_crashed_merge_is_re_run(images, reference, tmp_path, monkeypatch, crash_in):
    indexes = tmp_path / "indexes"
    assert main(index_args(images, indexes, "--part", "0", "--parts", "2")) == 0

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    if crash_in == "write_manifest":  # shards linked into the index, manifest not written
        monkeypatch.setattr(folder_parts, "write_manifest", crash)
    else:  # manifest written, parts/ not retired
        monkeypatch.setattr(folder_parts, "retire", crash)
    assert main(index_args(images, indexes, "--part", "1", "--parts", "2")) == 130
    monkeypatch.undo()
    directory = index_directory(images, indexes)
    assert (directory / PARTS / "merge.json").exists()
    # Re-running the last part (already complete) only merges.
    assert main(index_args(images, indexes, "--part", "1", "--parts", "2")) == 0
    assert_same_index(IndexReader(directory), reference)
    listed = {s.name for s in IndexReader(directory).manifest.shards}
    assert {p.name.split(".")[0] for p in directory.glob("shard-*")} == listed


def test_a_skipped_image_leaves_no_gap_in_the_ids(images, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(images, data)
    (data / "00004.png").write_bytes(b"not an image")
    assert main(index_args(data, tmp_path / "single")) == 0
    assert main(index_args(data, tmp_path / "parts", "--part", "0", "--parts", "2")) == 0
    assert main(index_args(data, tmp_path / "parts", "--part", "1", "--parts", "2")) == 0
    assert "skipped 00004.png" in capsys.readouterr().err
    single = IndexReader(index_directory(data, tmp_path / "single"))
    merged = IndexReader(index_directory(data, tmp_path / "parts"))
    assert len(merged) == 59 and merged.manifest.next_id == 59
    assert_same_index(merged, single)
