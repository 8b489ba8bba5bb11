"""Leakage: how much the other labels still drive the neighbours under a condition."""

import numpy as np
import pytest

from dior_search.errors import UsageError
from dior_search.evaluation.metrics import leakage


def naive_leakage(vectors, labels, condition, k=10, distance="cosine"):
    """The definition, one image and one label at a time."""
    n = len(vectors)
    if distance == "cosine":
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        scores = unit.astype(np.float64) @ unit.T.astype(np.float64)
    else:
        diff = vectors[:, None].astype(np.float64) - vectors[None].astype(np.float64)
        scores = -(diff**2).sum(axis=-1)
    per_label = []
    for name, values in labels.items():
        if name == condition:
            continue
        rates = []
        for i in range(n):
            if values[i] is None:
                continue
            others = [j for j in range(n) if j != i]
            ranked = sorted(others, key=lambda j: (-scores[i, j], j))[:k]
            share = sum(values[j] == values[i] for j in ranked) / len(ranked)
            present = [j for j in range(n) if values[j] is not None]
            base = (sum(values[j] == values[i] for j in present) - 1) / (len(present) - 1)
            rates.append(share - base)
        per_label.append(np.mean(rates))
    return float(np.mean(per_label))


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_leakage_is_its_definition(distance):
    rng = np.random.default_rng(0)
    n = 40
    labels = {
        "a": [str(v) for v in rng.integers(0, 3, n)],
        "b": [str(v) for v in rng.integers(0, 4, n)],
        "c": [str(v) if v else None for v in rng.integers(0, 3, n)],
    }
    # Vectors that follow label b, so it leaks into a's neighbours.
    codes = np.array([int(v) for v in labels["b"]])
    vectors = rng.normal(size=(n, 8)) + 3 * np.eye(8)[codes]
    got = leakage(vectors.astype(np.float32), labels, "a", k=5, distance=distance)
    assert got == pytest.approx(naive_leakage(vectors, labels, "a", k=5, distance=distance))
    assert got > 0.1


def test_no_leakage_where_the_neighbours_ignore_the_other_label():
    """Each image's neighbours are its own group of four, which holds every value of b once:
    the share of same-b neighbours is 0, their base rate 3/15: leakage -3/15."""
    groups, members = 4, 4
    vectors = np.repeat(np.eye(groups), members, axis=0) + 1e-3 * np.arange(16)[:, None]
    labels = {"a": [str(g) for g in range(groups) for _ in range(members)]}
    labels["b"] = [str(m) for _ in range(groups) for m in range(members)]
    assert leakage(vectors, labels, "a", k=3) == pytest.approx(-3 / 15)


def test_leakage_needs_another_label():
    with pytest.raises(UsageError, match="labels other than 'a'"):
        leakage(np.eye(3), {"a": ["x", "y", "x"]}, "a")
