"""Exact indexes give the same answers on either store: FAISS Flat shards in folders and a
Milvus FLAT collection, for single and multi-condition queries."""

import json

import numpy as np
import pytest
from stores import STORE_KINDS, opened, store_args
from sync_helpers import CachedEmbedder

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
def indexed(tmp_path_factory):
    """120 synthetic images under two conditions, indexed exactly into each store from the
    same vectors; the stores stay open."""
    root = tmp_path_factory.mktemp("both")
    write_dataset(root / "datasets" / "synthetic", {"test": 120})
    collection = open_dataset("synthetic", root / "datasets")
    embedder = CachedEmbedder(DiorEmbedder(DiorSettings(model="tiny", device="cpu", batch_size=16)))
    stores = {}
    for kind in STORE_KINDS:
        store = opened(kind, root)
        settings = IndexSettings(
            indexes_dir=root / "indexes", store=store, index_type="flat", shard_size=50
        )
        index_collection(collection, CONDITIONS, embedder, settings)
        stores[kind] = store
    yield root, stores
    for store in stores.values():
        store.close()


def test_exact_indexes_answer_alike_on_both_stores(indexed):
    _, stores = indexed
    searchers = {
        kind: Searcher.open(store, collection="synthetic") for kind, store in stores.items()
    }
    folder, database = searchers["folder"], searchers["milvus-lite"]
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


def test_the_query_verb_prints_the_same_hits(indexed, capsys):
    root, _ = indexed
    printed = {}
    for kind in STORE_KINDS:
        args = ["query", "--id", "17", "-c", "color", "-c", "background", "-w", "2", "-w", "1"]
        args += ["--dataset", "synthetic", "--json", "-k", "15", *store_args(kind, root)]
        assert main(args) == 0
        printed[kind] = json.loads(capsys.readouterr().out)
    folder, database = printed["folder"], printed["milvus-lite"]
    assert [h["id"] for h in database] == [h["id"] for h in folder]
    np.testing.assert_allclose(
        [h["score"] for h in database], [h["score"] for h in folder], atol=1e-5
    )
