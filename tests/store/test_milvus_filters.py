"""`--where` that one index decides is a Milvus filter expression on its fields (answers,
stored labels): the same hits as the folder store's mask, exactly min(k, passing) of them,
and user text that can never change the expression."""

import numpy as np
import pytest
from descriptions import made_up_manifest
from stores import milvus_filters_sent, opened

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from pymilvus import MilvusClient

from dior_search.models.answers import Answer
from dior_search.search.searcher import Searcher, SearchRequest
from dior_search.store.backend import IndexEntry
from dior_search.store.milvus import fields_expression
from dior_search.store.schema import Row

pytestmark = pytest.mark.slow

DIM = 8
# Values a filter can carry (`=` ends the filter's name) that would widen an unescaped
# expression to every row.
HOSTILE = (
    'red" or id > -1 or answer < "x',
    'red\\" or id > -1 or "a" < "b',
    "back\\slash",
    "new\nline\r\tand tab",
    'ends in "',
)
# Row i's answer and label; the last rows hold the hostile values, each once.
WORDS = ["red"] * 30 + ["blue"] * 20 + ["green"] * 6
SHAPES = ["circle", "square", "star"]
ROWS = len(WORDS) + len(HOSTILE)


def answer_of(i):
    return WORDS[i] if i < len(WORDS) else HOSTILE[i - len(WORDS)]


def shape_of(i):
    return SHAPES[i % 3] if i < len(WORDS) else HOSTILE[i - len(WORDS)]


@pytest.fixture(scope="module")
def searchers(tmp_path_factory):
    """The same made-up vectors, answers and stored labels (collection "c": no label table)
    in exact indexes of either store."""
    root = tmp_path_factory.mktemp("filters")
    vectors = np.random.default_rng(4).normal(size=(ROWS, DIM)).astype(np.float32)
    found = {}
    for kind in ("folder", "milvus-lite"):
        store = opened(kind, root)
        manifest = made_up_manifest(dim=DIM, shard_size=25)
        location = store.location("c", manifest.embedder, "color")
        with store.writer(location, manifest) as writer:
            writer.store_answers()
            for i, vector in enumerate(vectors):
                row = Row(f"{i}.png", f"{i:064x}", {"shape": shape_of(i)})
                writer.add(vector, row, answer=Answer(answer_of(i), -0.1, 1.0))
        found[kind] = (store, Searcher([IndexEntry(location, store.manifest_at(location))]))
    yield found
    for store, _ in found.values():
        store.close()


@pytest.fixture
def filters_sent(monkeypatch):
    return milvus_filters_sent(monkeypatch)


def hits(searcher, where, k=10, row_id=0):
    """(id, score) of each hit of a query by row `row_id` under `color`, filtered."""
    request = SearchRequest(conditions=("color",), id=row_id, k=k, where=tuple(where))
    return [(h.id, h.score) for h in searcher.search(request).hits]


def same_hits(got, want):
    assert [i for i, _ in got] == [i for i, _ in want]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)


def passes(i, where):
    name, value = where.removeprefix("label:").split("=")
    return (answer_of(i) if name == "color" else shape_of(i)) == value


@pytest.mark.parametrize(
    "where",
    [
        ["color=red"],
        ["color=green"],
        ["label:shape=star"],
        ["color=blue", "label:shape=circle"],
        ["color=red", "color=blue"],
    ],
)
@pytest.mark.parametrize("k", [1, 5, 40])
def test_the_expression_gives_the_folder_stores_hits(searchers, filters_sent, where, k):
    (_, folder), (_, database) = searchers["folder"], searchers["milvus-lite"]
    passing = {i for i in range(ROWS) if all(passes(i, w) for w in where)}
    for row_id in (0, 31, 55):
        want = hits(folder, where, k, row_id)
        same_hits(hits(database, where, k, row_id), want)
        # Exactly min(k, passing) hits, each one that passes.
        assert len(want) == min(k, len(passing))
        assert {i for i, _ in want} <= passing
    assert all("id in [" not in sent for sent in filters_sent), filters_sent
    if passing:
        for w in where:
            name, value = w.removeprefix("label:").split("=")
            field = "answer" if name == "color" else f"label_{name}"
            assert any(f'{field} == "{value}"' in sent for sent in filters_sent), filters_sent


@pytest.mark.parametrize("value", HOSTILE)
def test_user_text_never_changes_the_expression(searchers, filters_sent, value):
    """Milvus selects by a hostile value the one row that holds it, and with a character
    added, or the expression-widening text, nothing; a label filter gives the folder's hits."""
    (_, folder), (store, database) = searchers["folder"], searchers["milvus-lite"]
    position = len(WORDS) + HOSTILE.index(value)
    name = database.collections["c"].conditions["color"].location.name
    for field in ("answer", "label_shape"):
        for text in (value, value + "x", "x" + value, 'red" or id >= 0 or answer == "x'):
            expression = fields_expression([(field, text)])
            selected = store.conn.call("select", "query", name, filter=expression)
            assert [r["id"] for r in selected] == ([position] if text == value else []), text
    for where in ([f"label:shape={value}"], [f"label:shape={value}x"]):
        got = hits(database, where, k=ROWS)
        assert [i for i, _ in got] == ([position] if where[0].endswith(value) else [])
        same_hits(got, hits(folder, where, k=ROWS))
    assert len(filters_sent) == 1 and "id in [" not in filters_sent[0]


def test_an_index_that_comes_back_short_is_filled_exactly(searchers, monkeypatch):
    """An approximate index may find fewer passing rows than exist: the reader then scores
    the rows that pass exactly, and gives the folder store's hits."""
    (_, folder), (_, database) = searchers["folder"], searchers["milvus-lite"]
    search = MilvusClient.search

    def short(self, *args, **kwargs):
        return [found[:1] for found in search(self, *args, **kwargs)]

    monkeypatch.setattr(MilvusClient, "search", short)
    for where in (["color=red"], ["label:shape=square"]):
        got = hits(database, where, k=7)
        assert len(got) == 7
        same_hits(got, hits(folder, where, k=7))
