"""SIGKILL at random points of a sync and of a compaction: the next run ends where an
uninterrupted one does, with every file it does not list removed."""

import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from descriptions import made_up_manifest
from kill_child import sync
from PIL import Image

import dior_search
from dior_search.data.synthetic import write_dataset
from dior_search.store.files import sha256_file
from dior_search.store.manifest import MANIFEST, TRAINED, Manifest, listed_files
from dior_search.store.reader import IndexReader
from dior_search.store.schema import Row
from dior_search.store.writer import IndexWriter, compact_index

TESTS = Path(__file__).parents[1]
KILLS = 10


def child(*args: str) -> subprocess.CompletedProcess:
    package = str(Path(dior_search.__file__).resolve().parents[1])
    path = os.pathsep.join([package, str(TESTS), os.environ.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, str(TESTS / "kill_child.py"), *map(str, args)],
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=120,
    )


def operations(*args: str) -> int:
    """How many file operations the child makes when it is not killed."""
    done = child(*args, 0)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.strip().splitlines()[-1])


def restore(pristine: Path, target: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(pristine, target)


def kill_points(total: int, seed: int) -> list[int]:
    return sorted(random.Random(seed).sample(range(1, total + 1), min(KILLS, total)))


def assert_no_leftovers(directory: Path) -> None:
    files = {p.name for p in directory.iterdir()} - {MANIFEST, "index.lock"}
    assert files == listed_files(Manifest.read(directory))


def condition_dir(indexes: Path) -> Path:
    (directory,) = indexes.glob("*/*/color")
    return directory


def rows_and_vectors(reader: IndexReader) -> dict[tuple[str, str], np.ndarray]:
    keys = zip(reader.paths(), reader.content_hashes(), strict=True)
    return dict(zip(keys, reader.vectors(reader.ids), strict=True))


def assert_same(got: IndexReader, want: dict[tuple[str, str], np.ndarray]) -> None:
    found = rows_and_vectors(got)
    assert len(found) == len(got) and sorted(found) == sorted(want)
    for key, vector in found.items():
        np.testing.assert_allclose(vector, want[key], atol=1e-6)


def change(folder: Path) -> None:
    """Deletions, overwrites, renames (into a subfolder), copies and new files."""
    names = sorted(p.name for p in folder.glob("*.png"))
    for name in names[:5]:
        (folder / name).unlink()
    for name, other in zip(names[5:8], names[20:23], strict=True):
        (folder / name).write_bytes((folder / other).read_bytes())
    (folder / "moved").mkdir()
    for name in names[8:12]:
        (folder / name).rename(folder / "moved" / name)
    for name in names[12:14]:
        shutil.copy(folder / name, folder / f"copy-{name}")
    for number in range(4):
        Image.new("RGB", (30, 20), (60 * number, 200, 90)).save(folder / f"new-{number}.png")


@pytest.mark.slow
def test_sigkill_during_a_sync_then_a_run_ends_as_a_fresh_build(tmp_path):
    write_dataset(tmp_path / "data", {"test": 24})
    folder = tmp_path / "data" / "test"
    indexes = tmp_path / "indexes"
    sync(folder, indexes)
    change(folder)
    shutil.copytree(indexes, tmp_path / "pristine")
    sync(folder, tmp_path / "fresh")
    fresh = rows_and_vectors(IndexReader(condition_dir(tmp_path / "fresh")))
    total = operations("index", folder, indexes)
    assert total > 30  # deletions, copies, new shards, compaction: many points to stop at
    for point in kill_points(total, seed=20261212):
        restore(tmp_path / "pristine", indexes)
        killed = child("index", folder, indexes, point)
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr[-2000:])
        sync(folder, indexes)
        directory = condition_dir(indexes)
        assert_same(IndexReader(directory), fresh)
        assert_no_leftovers(directory)


@pytest.mark.slow
def test_sigkill_during_a_compaction_then_it_completes(tmp_path):
    directory = tmp_path / "index"
    vectors = np.random.default_rng(3).normal(size=(64, 16)).astype(np.float32)
    manifest = made_up_manifest(
        shard_size=4, index_spec="IVF4,Flat", index_type="IVF4,Flat", packed_shard_size=8
    )
    with IndexWriter(directory, manifest) as writer:
        for number, vector in enumerate(vectors):
            writer.add(vector, Row(f"{number}.png", f"h{number}"))
    writer = IndexWriter.existing(directory)
    writer.delete(sorted(random.Random(5).sample(range(64), 26)))
    writer.commit()
    writer.abort()
    before = IndexReader(directory)
    assert before.deleted == 26 and len(before.manifest.shards) == 8
    want = rows_and_vectors(before)
    trained = sha256_file(directory / TRAINED)
    shutil.copytree(directory, tmp_path / "pristine")
    total = operations("compact", directory, "-")
    for point in kill_points(total, seed=20261213):
        restore(tmp_path / "pristine", directory)
        killed = child("compact", directory, "-", point)
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr[-2000:])
        compact_index(directory, threshold=0.0)
        after = IndexReader(directory)
        assert after.deleted == 0
        assert_same(after, want)
        assert sha256_file(directory / TRAINED) == trained
        assert_no_leftovers(directory)
