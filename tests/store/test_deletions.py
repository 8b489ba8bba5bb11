"""Deleted rows (tombstones), generations, compaction, and readers that outlive their files."""

import json

import numpy as np
import pytest
from descriptions import made_up_manifest
from test_index_types import build, clustered, exact_top_k, recall

from dior_search.errors import IndexStoreError
from dior_search.store import reader as store_reader
from dior_search.store.files import sha256_file
from dior_search.store.manifest import MANIFEST, TRAINED, Manifest
from dior_search.store.reader import IndexReader
from dior_search.store.schema import Row
from dior_search.store.writer import IndexWriter, compact_index


def delete(directory, ids):
    """Delete rows in one commit, without compaction."""
    writer = IndexWriter.existing(directory)
    writer.delete([int(i) for i in ids])
    writer.commit()
    writer.abort()


def random_ids(n, share, seed=4):
    return np.sort(np.random.default_rng(seed).choice(n, size=int(n * share), replace=False))


@pytest.mark.parametrize("spec", ["Flat", "IVF16,SQ8", "PCA32,IVF16,SQ8,Refine(SQfp16)", "HNSW16"])
def test_deleted_rows_are_never_answered(tmp_path, spec):
    vectors = clustered(2000)
    queries = clustered(50, seed=9)
    build(tmp_path / "ix", vectors, spec, shard_size=600)
    dead = random_ids(2000, 0.4)
    delete(tmp_path / "ix", dead)
    live = np.setdiff1d(np.arange(2000), dead)
    reader = IndexReader(tmp_path / "ix")
    assert len(reader) == len(live) and reader.deleted == len(dead)
    np.testing.assert_array_equal(reader.ids, live)
    assert reader.paths() == [f"img/{i:05d}.png" for i in live]
    ids, stored = reader.all_vectors()
    np.testing.assert_array_equal(ids, live)
    assert stored.shape == (len(live), vectors.shape[1])
    _, found = reader.search(queries, 10)
    assert (found >= 0).all()
    assert not np.isin(found, dead).any()
    truth = live[exact_top_k(vectors[live], queries, 10)]
    if spec == "Flat":
        np.testing.assert_array_equal(found, truth)
    else:
        assert recall(found, truth) >= 0.95
    with pytest.raises(IndexStoreError, match=f"no id {dead[0]} in"):
        reader.row(int(dead[0]))
    assert not reader.contains(int(dead[0]))


def test_exactly_k_live_hits_where_the_probed_lists_run_short(tmp_path):
    vectors = clustered(2000)
    queries = clustered(20, seed=9)
    build(tmp_path / "ix", vectors, "IVF64,Flat", shard_size=5000)
    dead = random_ids(2000, 0.95)
    delete(tmp_path / "ix", dead)
    live = np.setdiff1d(np.arange(2000), dead)
    # One list of 64 probed would hold about 31 rows, 1.5 of them live: with 100 live rows of
    # 2,000, the shard's live rows are scored exactly instead.
    reader = IndexReader(tmp_path / "ix", search_params="nprobe=1")
    _, found = reader.search(queries, 10)
    assert (found >= 0).all() and not np.isin(found, dead).any()
    np.testing.assert_array_equal(found, live[exact_top_k(vectors[live], queries, 10)])
    _, everything = reader.search(queries[:1], len(live))
    assert sorted(everything[0].tolist()) == live.tolist()


def test_compaction_keeps_the_training_and_every_live_vector(tmp_path):
    vectors = clustered(3000)
    queries = clustered(40, seed=9)
    spec = "PCA32,IVF16,SQ8,Refine(SQfp16)"
    build(tmp_path / "ix", vectors, spec, shard_size=700, packed_shard_size=1000)
    trained = sha256_file(tmp_path / "ix" / TRAINED)
    dead = random_ids(3000, 0.3)
    delete(tmp_path / "ix", dead)
    before = IndexReader(tmp_path / "ix")
    live = before.ids.copy()
    old_vectors = before.vectors(live)
    old_ids = before.search(queries, 10)[1]
    old_files = {p.name for p in (tmp_path / "ix").iterdir()}

    done = compact_index(tmp_path / "ix")
    assert done.rows_dropped == len(dead)
    assert done.shards_rewritten == len(before.manifest.shards) > 1
    after = IndexReader(tmp_path / "ix")
    assert after.manifest.trained == before.manifest.trained
    assert sha256_file(tmp_path / "ix" / TRAINED) == trained
    assert after.deleted == 0
    assert [s.rows for s in after.manifest.shards] == [s.live for s in before.manifest.shards]
    np.testing.assert_array_equal(after.ids, live)
    assert after.paths() == before.paths()
    # Re-encoded from what the fp16 copy gives back, every vector comes back the same.
    np.testing.assert_allclose(after.vectors(live), old_vectors, atol=1e-6)
    new_ids = after.search(queries, 10)[1]
    assert recall(new_ids, old_ids) >= 0.99
    assert recall(new_ids, live[exact_top_k(vectors[live], queries, 10)]) >= 0.95
    # The rewritten shards' old files are gone; the manifest lists every file there is.
    files = {p.name for p in (tmp_path / "ix").iterdir()} - {MANIFEST, "index.lock"}
    assert not files & {f for s in before.manifest.shards for f in s.files()}
    assert files == {f for s in after.manifest.shards for f in s.files()} | {TRAINED}
    assert old_files - files


def test_flat_compaction_is_exact_and_drops_empty_shards(tmp_path):
    vectors = clustered(30)
    build(tmp_path / "ix", vectors, "Flat", shard_size=10)
    delete(tmp_path / "ix", [*range(12), 25])
    before = IndexReader(tmp_path / "ix")
    # Shard 0 is all deleted, shard 1 is 20% deleted (not more), shard 2 10%.
    done = compact_index(tmp_path / "ix", threshold=0.2)
    assert (done.shards_dropped, done.shards_rewritten, done.rows_dropped) == (1, 0, 10)
    assert compact_index(tmp_path / "ix", threshold=0).shards_rewritten == 2
    after = IndexReader(tmp_path / "ix")
    np.testing.assert_array_equal(after.ids, before.ids)
    np.testing.assert_array_equal(after.all_vectors()[1], before.all_vectors()[1])
    assert after.deleted == 0 and after.rows(after.ids) == before.rows(before.ids)
    # Ids are never given again: the next row gets 30, though ids 0..9 and 25 are free.
    writer = IndexWriter.existing(tmp_path / "ix")
    writer.add(vectors[0], Row("again.png", "again"))
    writer.close()
    assert IndexReader(tmp_path / "ix").ids[-1] == 30


def test_a_reader_keeps_its_generation_while_its_files_are_deleted(tmp_path):
    vectors = clustered(40)
    writer = IndexWriter(tmp_path / "ix", made_up_manifest(dim=64))
    for number, vector in enumerate(vectors):
        writer.add(vector, Row(f"{number}.png", f"h{number}", {"color": f"c{number}"}))
    writer.close()
    old = IndexReader(tmp_path / "ix")
    assert old.is_current()
    delete(tmp_path / "ix", range(15))
    compact_index(tmp_path / "ix")
    assert not (tmp_path / "ix" / "shard-00000.parquet").exists()
    # The old reader still answers as of its generation, labels read for the first time now.
    assert not old.is_current()
    assert len(old) == 40 and old.labels("color")[0] == "c0"
    assert old.row(3) == Row("3.png", "h3", {"color": "c3"})
    np.testing.assert_allclose(old.vector(3), vectors[3] / np.linalg.norm(vectors[3]), rtol=1e-5)
    assert old.search(vectors[3], 1)[1][0, 0] == 3
    new = old.reopen()
    assert new.is_current() and new.generation > old.generation
    assert len(new) == 25 and new.labels("color")[0] == "c15"
    assert new.search(vectors[3], 1)[1][0, 0] != 3


def test_reopen_shares_the_shards_that_did_not_change(tmp_path):
    build(tmp_path / "ix", clustered(30), "Flat", shard_size=10)
    old = IndexReader(tmp_path / "ix")
    delete(tmp_path / "ix", [25])
    new = old.reopen()
    assert [a is b for a, b in zip(old.open_shards, new.open_shards, strict=True)] == [
        True,
        True,
        True,
    ]
    assert 25 in old.ids and 25 not in new.ids


def test_a_reader_opening_during_a_commit_opens_the_newer_generation(tmp_path, monkeypatch):
    build(tmp_path / "ix", clustered(30), "Flat", shard_size=10)
    stale = Manifest.read(tmp_path / "ix")
    delete(tmp_path / "ix", range(10))
    compact_index(tmp_path / "ix")  # shard-00000's files are gone
    reads = []
    original = Manifest.read

    def read(directory):
        # The first read gets the manifest of before the commit, which lands just after it.
        reads.append(directory)
        if len(reads) > 1:
            return original(directory)
        (directory / MANIFEST).write_bytes((directory / MANIFEST).read_bytes())
        return stale

    monkeypatch.setattr(store_reader.Manifest, "read", staticmethod(read))
    reader = IndexReader(tmp_path / "ix")
    assert len(reads) == 2 and len(reader) == 20
    # Files gone under a manifest that did not change: damage, said as such.
    monkeypatch.undo()
    (tmp_path / "ix" / "shard-00001.faiss").unlink()
    with pytest.raises(IndexStoreError, match=r"index file missing: .*shard-00001\.faiss"):
        IndexReader(tmp_path / "ix")


def test_a_version_1_index_is_read_and_upgraded_by_the_next_commit(tmp_path):
    build(tmp_path / "ix", clustered(20), "Flat", shard_size=10)
    path = tmp_path / "ix" / MANIFEST
    data = json.loads(path.read_text())
    data["format_version"] = 1
    del data["checksum"]  # version-1 manifests were written before checksums
    for key in ("generation", "next_shard", "next_row_id"):
        del data[key]
    for shard in data["shards"]:
        for key in ("deleted", "tombstones", "tombstones_sha256"):
            del shard[key]
    path.write_text(json.dumps(data))
    reader = IndexReader(tmp_path / "ix")
    assert (reader.generation, reader.deleted, len(reader)) == (0, 0, 20)
    delete(tmp_path / "ix", [3])
    upgraded = json.loads(path.read_text())
    assert upgraded["format_version"] == 2 and upgraded["generation"] == 1
    assert upgraded["shards"][0]["deleted"] == 1
    assert 3 not in IndexReader(tmp_path / "ix").ids
    # A "version 1" manifest with version 2's fields is not misread.
    upgraded["format_version"] = 1
    del upgraded["checksum"]
    path.write_text(json.dumps(upgraded))
    with pytest.raises(IndexStoreError, match="format version 1 with the version-2 field"):
        IndexReader(tmp_path / "ix")


def test_unlisted_tombstones_are_leftovers(tmp_path):
    build(tmp_path / "ix", clustered(20), "Flat", shard_size=10)
    delete(tmp_path / "ix", [1])
    listed = Manifest.read(tmp_path / "ix").shards[0].tombstones
    stray = tmp_path / "ix" / "shard-00000.deleted-99.parquet"
    stray.write_bytes(b"left by a killed run")
    IndexWriter.existing(tmp_path / "ix").abort()
    assert not stray.exists() and (tmp_path / "ix" / listed).exists()
