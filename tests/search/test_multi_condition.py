"""Multi-condition queries: exact against brute force, joined by content hash, CLI and labels."""

import json
from contextlib import redirect_stdout
from io import StringIO

import numpy as np
import pytest
from descriptions import described, prompt_of

from dior_search.cli import main
from dior_search.errors import UsageError
from dior_search.evaluation.bench import shared_label_rate
from dior_search.search import joined as multi_condition
from dior_search.search.joined import JoinedIndexes, normalize_weights
from dior_search.store.manifest import Manifest
from dior_search.store.reader import IndexReader
from dior_search.store.schema import Row
from dior_search.store.writer import IndexWriter

N = 300
DIM = 16


def manifest(condition: str, shard_size: int) -> Manifest:
    return Manifest(
        collection={"name": "c", "root": "/data"},
        condition={"name": condition, "text": condition},
        prompt=prompt_of(condition),
        embedder=described("m", dim=DIM),
        dim=DIM,
        shard_size=shard_size,
    )


def build(directory, condition, vectors, order, shard_size):
    """An index of the images `order` names (in that order), as separate index runs make."""
    writer = IndexWriter(directory, manifest(condition, shard_size))
    for image in order:
        writer.add(vectors[image], Row(f"img/{image:04d}.png", f"hash{image}", {"n": str(image)}))
    writer.close()
    return IndexReader(directory)


@pytest.fixture(scope="module")
def two_conditions(tmp_path_factory):
    """Condition a holds images 0..N-1 in order; b holds them shuffled, without images 5 and 7."""
    root = tmp_path_factory.mktemp("multi")
    rng = np.random.default_rng(11)
    a = rng.normal(size=(N, DIM)).astype(np.float32)
    b = rng.normal(size=(N, DIM)).astype(np.float32)
    order_b = [int(i) for i in rng.permutation(N) if i not in (5, 7)]
    reader_a = build(root / "a", "a", a, range(N), shard_size=70)
    reader_b = build(root / "b", "b", b, order_b, shard_size=130)
    unit = [v / np.linalg.norm(v, axis=1, keepdims=True) for v in (a, b)]
    return JoinedIndexes([reader_a, reader_b]), unit


def brute_force(unit, queries, weights, k):
    scores = sum(
        w * (u @ (q / np.linalg.norm(q))) for w, u, q in zip(weights, unit, queries, strict=True)
    )
    scores[[5, 7]] = -np.inf  # not indexed under b
    order = np.argsort(-scores, kind="stable")[:k]
    return order, scores[order]


@pytest.mark.parametrize("weights", [(0.5, 0.5), (0.9, 0.1), (0.2, 0.8)])
@pytest.mark.parametrize("k", [1, 10, 100])
@pytest.mark.parametrize("small_start", [False, True])
def test_exact_against_brute_force(two_conditions, weights, k, small_start, monkeypatch):
    if small_start:  # force the candidate lists to grow several times
        monkeypatch.setattr(multi_condition, "MIN_CANDIDATES", 1)
        monkeypatch.setattr(multi_condition, "FIRST_CANDIDATES_PER_K", 1)
        monkeypatch.setattr(multi_condition, "GROWTH", 2)
    joined, unit = two_conditions
    rng = np.random.default_rng(k)
    for _ in range(5):
        queries = [rng.normal(size=DIM).astype(np.float32) for _ in range(2)]
        hits = joined.search(queries, weights, k)
        want_ids, want_scores = brute_force(unit, queries, weights, k)
        assert [h.id for h in hits] == want_ids.tolist()
        np.testing.assert_allclose([h.score for h in hits], want_scores, atol=1e-5)
        for hit in hits:
            assert hit.score == pytest.approx(np.dot(weights, hit.scores), abs=1e-9)
            assert joined.readers[0].row(hit.id).labels == {"n": str(hit.id)}


def test_rows_are_joined_by_content_hash(two_conditions):
    joined, unit = two_conditions
    vectors = joined.stored_query(42)
    np.testing.assert_allclose(vectors[0], unit[0][42], atol=1e-6)
    np.testing.assert_allclose(vectors[1], unit[1][42], atol=1e-6)
    hits = joined.search(vectors, (0.5, 0.5), 3)
    assert hits[0].id == 42 and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert joined.first_id_of_hash("hash42") == 42
    assert joined.first_id_of_hash("nope") is None
    with pytest.raises(Exception, match="not indexed under every condition"):
        joined.stored_query(5)


def test_one_condition_is_the_plain_query(two_conditions):
    joined, _ = two_conditions
    reader = joined.readers[0]
    single = JoinedIndexes([reader])
    query = np.arange(DIM, dtype=np.float32)
    hits = single.search([query], (1.0,), 7)
    scores, ids = reader.search(query[None, :], 7)
    plain = zip(ids[0].tolist(), scores[0].tolist(), strict=True)
    assert [(h.id, h.score) for h in hits] == list(plain)


def test_weights_are_checked_and_normalised():
    assert normalize_weights(None, 2) == (0.5, 0.5)
    assert normalize_weights([3, 1], 2) == (0.75, 0.25)
    with pytest.raises(UsageError, match="one weight per condition"):
        normalize_weights([1.0], 2)
    with pytest.raises(UsageError, match="positive"):
        normalize_weights([1.0, -1.0], 2)
    with pytest.raises(UsageError, match="positive"):
        normalize_weights([1.0, float("nan")], 2)


def run_json(args):
    out = StringIO()
    with redirect_stdout(out):
        assert main(args) == 0
    return json.loads(out.getvalue())


def cli_query(served, *extra):
    return run_json(
        [
            "query",
            "--dataset",
            "synthetic",
            *served.store_args,
            "--device",
            "cpu",
            "--json",
            *extra,
        ]
    )


def test_cli_two_conditions_with_weights(served):
    hits = cli_query(served, "--id", "3", "-c", "color", "-c", "background", "-w", "3", "-w", "1")
    assert hits[0]["id"] == 3 and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert [h["rank"] for h in hits] == list(range(1, 11))
    for hit in hits:
        expected = 0.75 * hit["scores"]["color"] + 0.25 * hit["scores"]["background"]
        assert hit["score"] == pytest.approx(expected, abs=1e-6)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)


def test_cli_two_conditions_by_image_matches_by_id(served):
    by_image = cli_query(served, str(served.image(9)), "-c", "background", "-c", "color", "-k", "5")
    by_id = cli_query(served, "--id", "9", "-c", "background", "-c", "color", "-k", "5")
    assert [h["id"] for h in by_image] == [h["id"] for h in by_id]
    np.testing.assert_allclose(
        [h["score"] for h in by_image], [h["score"] for h in by_id], atol=1e-4
    )


def test_cli_refuses_repeated_condition_and_bad_weights(served, capsys):
    base = ["query", "--id", "1", "--dataset", "synthetic", *served.store_args]
    assert main([*base, "-c", "color", "-c", "color"]) == 2
    assert "repeated" in capsys.readouterr().err
    assert main([*base, "-c", "color", "-c", "background", "-w", "1"]) == 2
    assert "one weight per condition" in capsys.readouterr().err


def share_both(served, conditions, k=10):
    """Mean share of each image's top k (itself left out) with its color and background."""
    searcher = served.service.searcher
    collection = searcher.collection("synthetic")
    joined = searcher.joined([searcher.condition(collection, c) for c in conditions])
    weights = normalize_weights(None, len(conditions))
    return shared_label_rate(joined, weights, ["color", "background"], k)


def test_two_conditions_find_both_labels_more_often(served):
    color = share_both(served, ["color"])
    background = share_both(served, ["background"])
    both = share_both(served, ["color", "background"])
    print(
        f"top-10 sharing color and background: color {color:.3f}, "
        f"background {background:.3f}, both {both:.3f}"
    )
    assert both > max(color, background), (color, background, both)
