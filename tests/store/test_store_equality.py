"""Exact indexes give the same answers on every store: FAISS Flat shards in folders and a
Milvus FLAT collection (of Milvus Lite, and of a standalone Milvus server), for single and
multi-condition queries."""

import json

import numpy as np
import pytest
from stores import DATABASE_KINDS, milvus_filters_sent, opened, store_args
from sync_helpers import AnsweringCache, CachedEmbedder

from dior_search.cli import main
from dior_search.data.collections import open_dataset
from dior_search.data.synthetic import write_dataset
from dior_search.indexing.job import IndexSettings
from dior_search.indexing.run import index_collection
from dior_search.models.dior import DiorEmbedder
from dior_search.models.settings import DiorSettings
from dior_search.search.searcher import Searcher, SearchRequest

CONDITIONS = ("color", "background")
QUERIES = 50


@pytest.fixture(scope="module")
def cached_tiny():
    return CachedEmbedder(DiorEmbedder(DiorSettings(model="tiny", device="cpu", batch_size=16)))


@pytest.fixture(scope="module", params=DATABASE_KINDS)
def indexed(request, tmp_path_factory, cached_tiny):
    """120 synthetic images under two conditions, indexed exactly into the folder store and a
    database store from the same vectors; the stores stay open."""
    root = tmp_path_factory.mktemp("both")
    write_dataset(root / "datasets" / "synthetic", {"test": 120})
    collection = open_dataset("synthetic", root / "datasets")
    embedder = cached_tiny
    stores = {}
    for kind in ("folder", request.param):
        store = opened(kind, root)
        settings = IndexSettings(indexes_dir=root / "indexes", index_type="flat", shard_size=50)
        index_collection(collection, CONDITIONS, embedder, settings, store=store)
        stores[kind] = store
    yield root, stores
    for store in stores.values():
        store.close()


def test_exact_indexes_answer_alike_on_both_stores(indexed):
    _, stores = indexed
    searchers = {
        kind: Searcher.open(store, collection="synthetic") for kind, store in stores.items()
    }
    folder, database = (searchers[kind] for kind in stores)
    for kind, searcher in searchers.items():
        types = {c.manifest.index_type for c in searcher.entries}
        assert types == ({"Flat"} if kind == "folder" else {"FLAT"})
    ids = np.random.default_rng(11).choice(120, QUERIES, replace=False).tolist()
    for conditions, weights in (
        (("color",), None),
        (("background",), None),
        (CONDITIONS, (0.7, 0.3)),
    ):
        for row_id in ids:
            request = SearchRequest(conditions=conditions, weights=weights, id=row_id, k=10)
            want, got = folder.search(request), database.search(request)
            assert [h.id for h in got.hits] == [h.id for h in want.hits], (conditions, row_id)
            np.testing.assert_allclose(
                [h.score for h in got.hits], [h.score for h in want.hits], atol=1e-5
            )
            for hit, other in zip(got.hits, want.hits, strict=True):
                assert (hit.path, hit.labels) == (other.path, other.labels)
                np.testing.assert_allclose(
                    list(hit.scores.values()), list(other.scores.values()), atol=1e-5
                )


def printed_alike(root, kinds, capsys, args):
    """The hits `query ... --json` prints on the folder store, the same (ids, and scores
    within 1e-5) as those it prints on the database store."""
    printed = []
    for kind in kinds:
        assert main([*args, "--dataset", "synthetic", "--json", *store_args(kind, root)]) == 0
        printed.append(json.loads(capsys.readouterr().out))
    folder, database = printed
    assert [h["id"] for h in database] == [h["id"] for h in folder]
    np.testing.assert_allclose(
        [h["score"] for h in database], [h["score"] for h in folder], atol=1e-5
    )
    return folder


def test_the_query_verb_prints_the_same_hits(indexed, capsys):
    root, stores = indexed
    args = ["query", "--id", "17", "-c", "color", "-c", "background", "-w", "2", "-w", "1"]
    assert len(printed_alike(root, list(stores), capsys, [*args, "-k", "15"])) == 15


@pytest.fixture(scope="module", params=DATABASE_KINDS)
def answered(request, tmp_path_factory):
    """60 synthetic images under `color`, with the model's answers, indexed exactly into the
    folder store and a database store from the same vectors and answers."""
    root = tmp_path_factory.mktemp("answered")
    write_dataset(root / "datasets" / "synthetic", {"test": 60})
    collection = open_dataset("synthetic", root / "datasets")
    embedder = AnsweringCache(DiorEmbedder(DiorSettings(model="tiny", device="cpu")))
    stores = {}
    for kind in ("folder", request.param):
        store = opened(kind, root)
        settings = IndexSettings(indexes_dir=root / "indexes", index_type="flat")
        index_collection(collection, ("color",), embedder, settings, store=store)
        stores[kind] = store
    yield root, stores
    for store in stores.values():
        store.close()


def test_a_filter_on_the_searched_condition_is_a_milvus_expression(answered, capsys, monkeypatch):
    """`query -c color --where color=WORD`: Milvus filters by the answer field itself (no
    `id in [...]`), with the folder store's hits: k of them, or every image that passes."""
    root, stores = answered
    sent = milvus_filters_sent(monkeypatch)
    counts = Searcher.open(stores["folder"], collection="synthetic").facets(None, "color").counts
    assert len(counts) >= 2
    for word, passing in (counts[0], counts[-1]):
        for row_id in (5, 44):
            args = ["query", "--id", str(row_id), "-c", "color", "--where", f"color={word}"]
            folder = printed_alike(root, list(stores), capsys, [*args, "-k", "12"])
            assert len(folder) == min(12, passing)
            assert {h["answers"]["color"] for h in folder} == {word}
        assert any(f'answer == "{word}"' in s for s in sent), sent
    assert sent and all("id in [" not in s for s in sent), sent
