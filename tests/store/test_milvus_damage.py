"""Milvus Lite keeps no checksum: any 8 bytes flipped in one of its segment files (the
Parquet of the rows, the copy of the vectors that searches read) are refused with one line
(IndexStoreError, exit 5) or answer exactly as before, never silently otherwise."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from descriptions import made_up_manifest

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from dior_search.errors import IndexStoreError
from dior_search.models.answers import Answer
from dior_search.store.schema import Row
from dior_search.store.stores import open_store

ROWS, DIM = 120, 16
# Positions sampled evenly across each segment file, its first and last bytes included.
FLIPS_PER_FILE = 40
VECTORS = np.random.default_rng(3).standard_normal((ROWS, DIM)).astype(np.float32)
QUERIES = VECTORS[:12] / np.linalg.norm(VECTORS[:12], axis=1, keepdims=True)
MANIFEST = made_up_manifest(dim=DIM, shard_size=50)


def answers(database: Path) -> tuple:
    """What the index answers: hits and scores of a few queries, its rows and vectors."""
    store = open_store(f"milvus-lite:{database}", database.parent)
    try:
        reader = store.reader(store.location("c", MANIFEST.embedder, "color"))
        scores, ids = reader.search(QUERIES, 10)
        vectors = reader.vectors(reader.ids[:40])
        rows = [(r.path, r.content_hash, r.labels) for r in reader.rows(reader.ids.tolist())]
        return np.round(scores, 5).tolist(), ids.tolist(), vectors.round(6).tolist(), rows
    finally:
        store.close()


@pytest.fixture(scope="module")
def database(tmp_path_factory) -> Path:
    """An exact Milvus Lite index of made-up vectors with labels and answers, deleted rows
    among them."""
    path = tmp_path_factory.mktemp("flips") / "indexes.db"
    store = open_store(f"milvus-lite:{path}", path.parent, create=True)
    location = store.location("c", MANIFEST.embedder, "color")
    with store.writer(location, MANIFEST) as writer:
        writer.store_answers()
        for i, vector in enumerate(VECTORS):
            row = Row(f"{i}.png", f"{i:064x}", {"shape": ("circle", "star")[i % 2]})
            writer.add(vector, row, answer=Answer(("red", "blue")[i % 3 == 0], -0.25, 1.5))
    store.close()
    return path


def segment_files(database: Path) -> list[Path]:
    found = sorted(database.glob("collections/*/partitions/*/data/*.parquet"))
    found += sorted(database.glob("collections/*/partitions/*/indexes/*"))
    return found


def test_any_flipped_bytes_in_a_segment_are_refused_or_answer_as_before(database, tmp_path):
    original = answers(database)
    files = segment_files(database)
    assert {f.parent.name for f in files} == {"data", "indexes"}
    outcomes = {"refused": 0, "same": 0}
    for file in files:
        size = file.stat().st_size
        for position in np.linspace(0, size - 8, FLIPS_PER_FILE).astype(int).tolist():
            copy = tmp_path / "copy.db"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(database, copy)
            target = copy / file.relative_to(database)
            data = bytearray(target.read_bytes())
            data[position : position + 8] = bytes(b ^ 0xFF for b in data[position : position + 8])
            target.write_bytes(bytes(data))
            try:
                got = answers(copy)
            except IndexStoreError as exc:
                assert "\n" not in str(exc)
                outcomes["refused"] += 1
                continue
            assert got == original, (file.name, position)
            outcomes["same"] += 1
    assert outcomes["refused"] >= len(files) * FLIPS_PER_FILE // 2, outcomes
