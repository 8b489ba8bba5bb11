"""Filtered search, `IndexReader.search(queries, k, allowed_ids)`: only allowed ids come back,
exactly k of them whenever k live ones are allowed, whatever the index type and however few
rows pass (exactly where few pass, with a selector or over-fetched otherwise)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_deletions import delete
from test_index_types import build, clustered, exact_top_k, recall

from dior_search.store import reader as store_reader
from dior_search.store.reader import IndexReader

SPECS = ["Flat", "IVF16,SQ8", "PCA32,IVF16,SQ8,Refine(SQfp16)", "HNSW16"]
K = 10


def allowed_truth(vectors, queries, allowed, live):
    """The exact top K among the allowed live rows."""
    passing = np.intersect1d(allowed, live)
    return passing[exact_top_k(vectors[passing], queries, min(K, len(passing)))]


@pytest.fixture(scope="module", params=SPECS)
def index(request, tmp_path_factory):
    """2,000 clustered vectors in shards of 700, 300 of them deleted."""
    directory = tmp_path_factory.mktemp("filtered") / "ix"
    vectors = clustered(2000)
    build(directory, vectors, request.param, shard_size=700)
    dead = np.random.default_rng(3).choice(2000, 300, replace=False)
    delete(directory, dead)
    return request.param, directory, vectors, np.setdiff1d(np.arange(2000), dead)


@pytest.mark.parametrize("share", [0.002, 0.02, 0.2, 0.6, 1.0])
@pytest.mark.parametrize("exact_rows", [2048, 5])
def test_exactly_k_allowed_hits(index, share, exact_rows, monkeypatch):
    """Below the exact-scan threshold (the default) and above it (forced low): the same
    guarantees; exact search stays exact."""
    spec, directory, vectors, live = index
    monkeypatch.setattr(store_reader, "EXACT_FILTER_ROWS", exact_rows)
    monkeypatch.setattr(store_reader, "EXACT_FILTER_SHARE", 0.0 if exact_rows < 10 else 0.02)
    allowed = np.sort(np.random.default_rng(5).choice(2000, int(2000 * share), replace=False))
    queries = clustered(30, seed=8)
    _, found = IndexReader(directory).search(queries, K, allowed)
    expected = min(K, len(np.intersect1d(allowed, live)))
    assert found.shape == (len(queries), expected)
    assert (found >= 0).all()
    assert np.isin(found, np.intersect1d(allowed, live)).all()
    truth = allowed_truth(vectors, queries, allowed, live)
    if spec == "Flat":
        np.testing.assert_array_equal(found, truth)
    else:
        assert recall(found, truth) >= 0.9


def test_allowed_ids_in_any_order_deleted_or_unknown(index):
    _, directory, vectors, live = index
    reader = IndexReader(directory)
    queries = clustered(5, seed=2)
    allowed = np.array([1999, 5, 5, 123456, -3, *live[:40].tolist()], dtype=np.int64)
    _, found = reader.search(queries, K, allowed)
    passing = np.intersect1d(allowed, live)
    np.testing.assert_array_equal(found, allowed_truth(vectors, queries, passing, live))
    _, nothing = reader.search(queries, K, np.array([123456], dtype=np.int64))
    assert nothing.shape == (5, 0)
    _, unfiltered = reader.search(queries, K)
    _, everything = reader.search(queries, K, reader.ids)
    assert recall(everything, unfiltered) >= 0.95


@settings(max_examples=25, deadline=None)
@given(
    passing=st.sets(st.integers(0, 599), max_size=600),
    dead=st.sets(st.integers(0, 599), max_size=200),
    exact_rows=st.sampled_from([0, 3, 50, 2048]),
)
def test_flat_filtered_search_is_brute_force(tmp_path_factory, passing, dead, exact_rows):
    """On exact (Flat) shards, a filtered search is brute force over the passing live rows,
    whichever way each shard is searched."""
    directory = tmp_path_factory.mktemp("flat") / "ix"
    vectors = clustered(600, seed=1)
    build(directory, vectors, "Flat", shard_size=250)
    if dead:
        delete(directory, sorted(dead))
    live = np.setdiff1d(np.arange(600), sorted(dead))
    allowed = np.array(sorted(passing), dtype=np.int64)
    original = store_reader.EXACT_FILTER_ROWS, store_reader.EXACT_FILTER_SHARE
    store_reader.EXACT_FILTER_ROWS, store_reader.EXACT_FILTER_SHARE = exact_rows, 0.0
    try:
        queries = clustered(4, seed=6)
        scores, found = IndexReader(directory).search(queries, K, allowed)
    finally:
        store_reader.EXACT_FILTER_ROWS, store_reader.EXACT_FILTER_SHARE = original
    passing_live = np.intersect1d(allowed, live)
    if len(passing_live) == 0:
        assert found.shape[1] == 0
        return
    truth = allowed_truth(vectors, queries, allowed, live)
    np.testing.assert_array_equal(found, truth)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
