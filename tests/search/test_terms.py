"""Composed queries (search.terms): the scoring rule against brute force over the stored
vectors on both stores, the single-image query as its simplest case, and its errors."""

import numpy as np
import pytest
from stores import STORE_KINDS, opened

from dior_search.data.collections import open_dataset
from dior_search.data.synthetic import write_dataset
from dior_search.errors import UsageError
from dior_search.indexing.job import IndexSettings
from dior_search.indexing.run import index_collection
from dior_search.models.dior import DiorEmbedder
from dior_search.models.settings import DiorSettings
from dior_search.search.examples import stored_example
from dior_search.search.searcher import NotIndexed, Searcher, SearchRequest
from dior_search.search.terms import NEGATIVE_SCALE, Term
from dior_search.store.schema import ANSWER

CONDITIONS = ("color", "pattern")
N = 90


@pytest.fixture(scope="module")
def searchers(tmp_path_factory):
    """90 synthetic images under color and pattern (answers stored), exact indexes in each
    store; a searcher per store kind."""
    root = tmp_path_factory.mktemp("terms")
    write_dataset(root / "datasets" / "synthetic", {"test": N})
    collection = open_dataset("synthetic", root / "datasets")
    embedder = DiorEmbedder(DiorSettings(model="tiny", device="cpu", batch_size=16))
    found, stores = {}, []
    for kind in (k if isinstance(k, str) else k.values[0] for k in STORE_KINDS):
        try:
            store = opened(kind, root)
        except pytest.skip.Exception:
            continue
        stores.append(store)
        settings = IndexSettings(indexes_dir=root / "indexes", index_type="flat", shard_size=40)
        index_collection(collection, CONDITIONS, embedder, settings, store=store)
        found[kind] = Searcher(Searcher.open(store, collection="synthetic").entries, None, embedder)
    yield found
    for store in stores:
        store.close()


def stored(searcher, condition):
    """(ids, unit vectors, answers) of a condition's index, in id order."""
    reader = searcher.reader(searcher.condition(searcher.collection("synthetic"), condition))
    ids, vectors = reader.all_vectors()
    answers = np.asarray(reader.column(ANSWER), dtype=object)
    return ids, vectors.astype(np.float64), answers


def brute_force(searcher, terms, weights, k):
    """Top k ids and scores by the rule, computed over every stored vector with numpy."""
    names = list(dict.fromkeys(t.condition for t in terms))
    weights = np.asarray(weights or [1.0] * len(names), dtype=np.float64)
    weights = weights / weights.sum()
    total = None
    for name, weight in zip(names, weights, strict=True):
        ids, vectors, answers = stored(searcher, name)
        score = np.zeros(len(ids))
        for positive, scale in ((True, 1.0), (False, -NEGATIVE_SCALE)):
            side = [t for t in terms if t.condition == name and t.positive == positive]
            if not side:
                continue
            sims = []
            for t in side:
                if t.id is not None:
                    sims.append(vectors @ vectors[np.searchsorted(ids, t.id)])
                else:
                    sims.append((vectors @ vectors[answers == t.word].T).mean(axis=1))
            w = np.asarray([t.weight for t in side])
            score += scale * (w @ np.stack(sims)) / w.sum()
        total = weight * score if total is None else total + weight * score
    order = np.argsort(-total, kind="stable")[:k]
    return ids[order].tolist(), total[order]


def random_terms(rng, answers):
    """A few positive and negative terms by id and by word over both conditions; at least
    one positive."""
    terms = []
    for condition in CONDITIONS:
        for _ in range(int(rng.integers(1, 4))):
            positive = bool(rng.random() < 0.6) or not terms
            weight = float(rng.choice([0.5, 1.0, 2.0]))
            if rng.random() < 0.25:
                word = str(rng.choice(sorted(set(answers[condition]) - {None})))
                terms.append(Term(condition, word=word, positive=positive, weight=weight))
            else:
                row_id = int(rng.integers(N))
                terms.append(Term(condition, id=row_id, positive=positive, weight=weight))
    keys = {}
    return [t for t in terms if keys.setdefault(t.key(), t.positive) == t.positive]


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_scores_equal_brute_force_on_each_store(searchers, kind):
    if kind not in searchers:
        pytest.skip(f"{kind} store not available")
    searcher = searchers[kind]
    answers = {c: stored(searcher, c)[2] for c in CONDITIONS}
    rng = np.random.default_rng(3)
    for trial in range(12):
        terms = random_terms(rng, answers)
        names = tuple(dict.fromkeys(t.condition for t in terms))
        weights = None if trial % 2 else tuple(float(w) for w in rng.uniform(0.2, 2, len(names)))
        k = int(rng.choice([1, 7, 25]))
        result = searcher.search(SearchRequest(terms=tuple(terms), weights=weights, k=k))
        want_ids, want_scores = brute_force(searcher, terms, weights, k)
        got = [h.score for h in result.hits]
        np.testing.assert_allclose(got, want_scores, atol=1e-5)
        # Ties within float noise may swap places; anything else must be in the same order.
        assert [h.id for h in result.hits] == want_ids or np.allclose(got, want_scores, atol=1e-6)
        for hit in result.hits:
            total = sum(w * hit.scores[n] for w, n in zip(result.weights, names, strict=True))
            assert hit.score == pytest.approx(total, abs=1e-6)


def test_one_positive_term_per_condition_is_the_plain_query(searchers):
    searcher = searchers["folder"]
    for row_id in (0, 17, 55):
        plain = searcher.search(SearchRequest(CONDITIONS, id=row_id, weights=(0.3, 0.7), k=12))
        terms = tuple(Term(c, id=row_id) for c in CONDITIONS)
        composed = searcher.search(SearchRequest(terms=terms, weights=(0.3, 0.7), k=12))
        assert [h.id for h in composed.hits] == [h.id for h in plain.hits]
        np.testing.assert_allclose(
            [h.score for h in composed.hits], [h.score for h in plain.hits], atol=1e-6
        )


def test_an_image_term_equals_its_embedding(searchers, tmp_path):
    from PIL import Image

    searcher = searchers["folder"]
    root = searcher.collection("synthetic").conditions["color"].root
    image = Image.open(root / "test" / "00004.png").convert("RGB")
    by_image = searcher.search(SearchRequest(("color",), image=image, k=5))
    composed = searcher.search(SearchRequest(terms=(Term("color", image=image),), k=5))
    assert [h.id for h in composed.hits] == [h.id for h in by_image.hits]


def test_a_negative_term_pushes_its_label_down(searchers):
    searcher = searchers["folder"]
    colour = searcher.search(SearchRequest(("color",), id=0, k=1)).hits[0].labels["color"]
    # Positive: image 0's pattern; negative: image 0's own colour.
    terms = (Term("pattern", id=0), Term("color", id=0, positive=False))
    hits = searcher.search(SearchRequest(terms=terms, k=10)).hits
    without = searcher.search(SearchRequest(terms=terms[:1], k=10)).hits
    assert sum(h.labels["color"] == colour for h in hits) < sum(
        h.labels["color"] == colour for h in without
    )


@pytest.mark.parametrize(
    ("terms", "error", "message"),
    [
        ((Term("color", id=1, positive=False),), UsageError, "at least one positive"),
        ((Term("color", id=1), Term("color", id=1, positive=False)), UsageError, "conflicting"),
        ((Term("color", word="chartreuse"),), UsageError, "no image's answer under 'color'"),
        ((Term("shape", id=1),), NotIndexed, "no index for condition 'shape'"),
        ((Term("color", id=1, weight=-1),), UsageError, "positive finite"),
        ((Term("color", id=10_000),), NotIndexed, "no id 10000"),
        ((Term("color"),), UsageError, "exactly one example"),
    ],
)
def test_bad_terms_are_one_line_errors(searchers, terms, error, message):
    with pytest.raises(error, match=message) as caught:
        searchers["folder"].search(SearchRequest(terms=terms))
    assert "\n" not in str(caught.value)


def test_terms_with_an_image_or_id_conflict(searchers):
    with pytest.raises(UsageError, match="conflicting terms"):
        searchers["folder"].search(SearchRequest(terms=(Term("color", id=1),), id=2))
    with pytest.raises(UsageError, match="not among the conditions searched"):
        searchers["folder"].search(
            SearchRequest(conditions=("color",), terms=(Term("pattern", id=1),))
        )


def test_distinct_takes_a_similarity(searchers):
    # What it hides: tests/search/test_distinct.py.
    with pytest.raises(UsageError, match="similarity in"):
        searchers["folder"].search(SearchRequest(("color",), id=3, distinct=1.5))


def test_groups_are_the_same_on_each_store(searchers):
    from dior_search.search.groups import group_images

    found = {
        kind: group_images(searcher, "synthetic", "color") for kind, searcher in searchers.items()
    }
    if len(found) < 2:
        pytest.skip("one store only")
    folder, database = found["folder"], found["milvus-lite"]
    assert folder.k == database.k
    assert [(g.name, sorted(g.ids)) for g in folder.groups] == [
        (g.name, sorted(g.ids)) for g in database.groups
    ]


def test_an_example_id_of_another_conditions_index_is_found_by_its_content(searchers, monkeypatch):
    """`--example-id color=ID` with the id from pattern's index: the color vector of the row
    with that image's content, looked up in the cached join (no scan of every content hash
    per request)."""
    searcher = searchers["folder"]
    collection = searcher.collection("synthetic")
    color = searcher.reader(searcher.condition(collection, "color"))
    pattern = searcher.reader(searcher.condition(collection, "pattern"))
    color_ids = dict(zip(color.content_hashes(), color.ids.tolist(), strict=True))
    scans = []
    original = color.content_hashes

    def counted():
        scans.append(1)
        return original()

    monkeypatch.setattr(color, "content_hashes", counted)
    for row_id in (0, 7, 42, N - 1):
        term = Term("color", id=row_id, id_condition="pattern")
        found = stored_example(searcher, collection, term)
        expected = color.vector(color_ids[pattern.row(row_id).content_hash])
        np.testing.assert_array_equal(found, expected)
    assert len(scans) <= 1  # the join's hash map, built once for this generation
