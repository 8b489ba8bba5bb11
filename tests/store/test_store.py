"""The sharded index store: shards, manifest, resume, locking, and the Parquet tables."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from descriptions import described, prompt_of

from dior_search.errors import IndexStoreError
from dior_search.store.manifest import MANIFEST, Manifest
from dior_search.store.reader import IndexReader, merge_top_k
from dior_search.store.schema import Row
from dior_search.store.writer import IndexWriter


def new_manifest(dim: int, shard_size: int, model: str = "m") -> Manifest:
    return Manifest(
        collection={"name": "c", "root": "/data"},
        condition={"name": "color", "text": "object color"},
        prompt=prompt_of("object color"),
        embedder=described(model, dim=dim),
        dim=dim,
        shard_size=shard_size,
    )


def build(directory, vectors, shard_size, start=0, model="m"):
    writer = IndexWriter(directory, new_manifest(vectors.shape[1], shard_size, model))
    for number, vector in enumerate(vectors[start:], start=start):
        writer.add(
            vector, Row(f"img/{number:04d}.png", f"hash{number}", {"color": str(number % 3)})
        )
    writer.close()
    return IndexReader(directory)


@pytest.fixture
def vectors():
    rng = np.random.default_rng(3)
    return rng.normal(size=(250, 24)).astype(np.float32)


def test_three_shards_search_like_one(tmp_path, vectors):
    one = build(tmp_path / "one", vectors, shard_size=1000)
    three = build(tmp_path / "three", vectors, shard_size=100)
    assert len(one.manifest.shards) == 1
    assert [s.rows for s in three.manifest.shards] == [100, 100, 50]
    queries = vectors[:20] + 0.3
    scores_1, ids_1 = one.search(queries, 10)
    scores_3, ids_3 = three.search(queries, 10)
    np.testing.assert_array_equal(ids_1, ids_3)
    np.testing.assert_allclose(scores_1, scores_3, atol=1e-5)
    # Against brute force in numpy.
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    np.testing.assert_array_equal(ids_3, np.argsort(-(q @ unit.T), axis=1)[:, :10])


def test_rows_and_vectors_round_trip(tmp_path, vectors):
    reader = build(tmp_path / "ix", vectors, shard_size=64)
    assert len(reader) == 250
    assert reader.row(130) == Row("img/0130.png", "hash130", {"color": "1"})
    expected = vectors[130] / np.linalg.norm(vectors[130])
    np.testing.assert_allclose(reader.vector(130), expected, rtol=1e-6)
    ids, stored = reader.all_vectors()
    np.testing.assert_array_equal(ids, np.arange(250))
    np.testing.assert_allclose(
        stored, vectors / np.linalg.norm(vectors, axis=1, keepdims=True), rtol=1e-5
    )
    with pytest.raises(IndexStoreError, match=r"no id 250 in .* \(ids 0\.\.249\)"):
        reader.row(250)


def test_k_larger_than_collection(tmp_path, vectors):
    reader = build(tmp_path / "ix", vectors[:5], shard_size=2)
    _, ids = reader.search(vectors[:1], 50)
    assert sorted(ids[0].tolist()) == [0, 1, 2, 3, 4]
    assert len(reader.rows(ids[0][ids[0] >= 0])) == 5


def test_parquet_reads_with_pyarrow_alone(tmp_path, vectors):
    build(tmp_path / "ix", vectors[:10], shard_size=4)
    table = pq.read_table(tmp_path / "ix" / "shard-00001.parquet")
    assert table.column_names == ["id", "path", "content_hash", "norm", "label_color"]
    assert table.column("id").to_pylist() == [4, 5, 6, 7]
    assert table.column("path").to_pylist()[0] == "img/0004.png"
    manifest = json.loads((tmp_path / "ix" / MANIFEST).read_text())
    assert manifest["format_version"] == 2
    assert [s["rows"] for s in manifest["shards"]] == [4, 4, 2]


def test_resume_appends_after_the_last_shard(tmp_path, vectors):
    build(tmp_path / "ix", vectors[:100], shard_size=30)
    writer = IndexWriter(tmp_path / "ix", new_manifest(24, 30))
    assert {h for _, h in writer.live_rows().values()} == {f"hash{n}" for n in range(100)}
    assert writer.next_id == 100
    writer.close()
    resumed = build(tmp_path / "ix", vectors, shard_size=30, start=100)
    whole = build(tmp_path / "whole", vectors, shard_size=30)
    _, a = resumed.all_vectors()
    _, b = whole.all_vectors()
    np.testing.assert_array_equal(a, b)
    assert resumed.paths() == whole.paths()


def test_leftovers_of_an_interrupted_shard_are_removed(tmp_path, vectors):
    build(tmp_path / "ix", vectors[:10], shard_size=5)
    (tmp_path / "ix" / "shard-00002.faiss").write_bytes(b"half a shard")
    (tmp_path / "ix" / ".manifest.json.tmp").write_text("{")
    writer = IndexWriter(tmp_path / "ix", new_manifest(24, 5))
    writer.close()
    assert not (tmp_path / "ix" / "shard-00002.faiss").exists()
    assert not (tmp_path / "ix" / ".manifest.json.tmp").exists()
    assert len(IndexReader(tmp_path / "ix")) == 10


def test_another_model_is_refused(tmp_path, vectors):
    build(tmp_path / "ix", vectors[:10], shard_size=5)
    with pytest.raises(IndexStoreError, match="was built with model 'm' \\(asked: 'other'\\)"):
        IndexWriter(tmp_path / "ix", new_manifest(24, 5, model="other"))


def test_second_writer_is_locked_out(tmp_path, vectors):
    first = IndexWriter(tmp_path / "ix", new_manifest(24, 5))
    with pytest.raises(IndexStoreError, match="another dior-search run is writing"):
        IndexWriter(tmp_path / "ix", new_manifest(24, 5))
    first.close()
    IndexWriter(tmp_path / "ix", new_manifest(24, 5)).close()


def test_merge_keeps_the_highest_scores():
    scores = np.array([[0.1, 0.9, -np.inf, 0.5, 0.9]], dtype=np.float32)
    ids = np.array([[4, 7, -1, 2, 3]])
    top_scores, top_ids = merge_top_k(scores, ids, 3)
    assert top_ids.tolist() == [[3, 7, 2]]
    np.testing.assert_allclose(top_scores, [[0.9, 0.9, 0.5]], rtol=1e-6)
