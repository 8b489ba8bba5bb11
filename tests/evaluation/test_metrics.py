import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from dior_search.errors import InputError, UsageError
from dior_search.evaluation import metrics
from dior_search.evaluation.metrics import neighbours, retrieval_metrics


def labelled_collection(
    seed: int, n: int, dim: int, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Random vectors and labels with classes of one and groups of identical vectors.

    Identical vectors share a label, so however their tied scores are ordered the metrics are
    the same: the comparison with AccuracyCalculator is well defined.
    """
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    labels = rng.integers(0, n_classes, n)
    labels[:4] = n_classes + np.arange(4)  # four classes of a single image
    for start, size in ((10, 5), (30, 2), (50, 3)):
        vectors[start : start + size] = vectors[start]
        labels[start : start + size] = labels[start]
    vectors[70] = vectors[4]  # a duplicate that is also the other member of a two-image class
    labels[70] = labels[4] = n_classes + 10
    order = rng.permutation(n)
    return vectors[order], labels[order]


def pml_metrics(vectors: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The paper's call: reference = query, faiss L2 k-NN over the whole collection."""
    calculator = AccuracyCalculator(
        include=("mean_average_precision_at_r", "precision_at_1"), device=torch.device("cpu")
    )
    found = calculator.get_accuracy(vectors, labels)
    return {"map@r": found["mean_average_precision_at_r"], "precision@1": found["precision_at_1"]}


def brute_force_recall(vectors: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Rank of each query's best same-label item, counted without sorting; ties by index."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = (unit.astype(np.float64) @ unit.T.astype(np.float64)).astype(np.float32)
    hits, queries = 0, 0
    for q in range(len(vectors)):
        others = np.arange(len(vectors)) != q
        same = others & (labels == labels[q])
        if not same.any():
            continue
        queries += 1
        best = np.flatnonzero(same & (scores[q] == scores[q][same].max()))[0]
        ahead = others & (
            (scores[q] > scores[q, best])
            | ((scores[q] == scores[q, best]) & (np.arange(len(vectors)) < best))
        )
        hits += int(ahead.sum()) < k
    return hits / queries


@pytest.mark.parametrize(("seed", "n", "dim", "n_classes"), [(0, 300, 8, 12), (1, 257, 3, 40)])
def test_equals_accuracy_calculator(seed, n, dim, n_classes):
    vectors, labels = labelled_collection(seed, n, dim, n_classes)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    ours = retrieval_metrics(vectors, labels.astype(str))
    for name, value in pml_metrics(unit, labels).items():
        assert ours[name] == pytest.approx(value, abs=1e-6), name
    euclidean = retrieval_metrics(vectors, labels, distance="euclidean")
    for name, value in pml_metrics(vectors, labels).items():
        assert euclidean[name] == pytest.approx(value, abs=1e-6), name
    # The test can fail: the two distances rank these vectors differently.
    assert euclidean["map@r"] != pytest.approx(ours["map@r"], abs=1e-6)


@pytest.mark.parametrize(("seed", "n", "dim", "n_classes"), [(2, 300, 8, 12), (3, 200, 4, 60)])
def test_recall_equals_brute_force(seed, n, dim, n_classes):
    vectors, labels = labelled_collection(seed, n, dim, n_classes)
    ours = retrieval_metrics(vectors, labels, ks=(1, 5, 10, 1000))
    for k in (1, 5, 10, 1000):
        assert ours[f"recall@{k}"] == pytest.approx(
            brute_force_recall(vectors, labels, k), abs=1e-6
        )
    assert ours["recall@1"] == ours["precision@1"]
    assert ours["recall@1000"] == 1.0


def test_blocks_change_nothing(monkeypatch):
    vectors, labels = labelled_collection(4, 150, 6, 9)
    whole = retrieval_metrics(vectors, labels)
    monkeypatch.setattr(metrics, "BLOCK_SCORES", 7 * 150 + 1)
    assert retrieval_metrics(vectors, labels) == pytest.approx(whole, abs=1e-12)
    np.testing.assert_array_equal(neighbours(vectors, 4), full_neighbours(vectors, 4))


def full_neighbours(vectors: np.ndarray, k: int) -> np.ndarray:
    unit = vectors.astype(np.float64) / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = (unit @ unit.T).astype(np.float32)
    np.fill_diagonal(scores, -np.inf)
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def at_angles(*degrees: float) -> np.ndarray:
    radians = np.deg2rad(degrees)
    return np.stack([np.cos(radians), np.sin(radians)], axis=1)


def test_hand_computed_ranking():
    # Query 0 ranks b, a, a; query 2 ranks b, a, a; query 3 ranks a, b, a; b is a class of one.
    found = retrieval_metrics(at_angles(0, 10, 25, 45), ["a", "b", "a", "a"], ks=(1, 2, 5))
    assert found == pytest.approx(
        {
            "recall@1": 1 / 3,
            "recall@2": 1.0,
            "recall@5": 1.0,
            "map@r": (1 / 4 + 1 / 4 + 1 / 2) / 3,
            "precision@1": 1 / 3,
        }
    )


def test_tied_scores_rank_lower_index_first():
    # Identical vectors: query 0 sees 1 (y) before 2 (x); query 2 sees 0 (x) first; y is alone.
    found = retrieval_metrics(np.ones((3, 4)), ["x", "y", "x"], ks=(1, 2))
    assert found == {"recall@1": 0.5, "recall@2": 1.0, "map@r": 0.5, "precision@1": 0.5}


def test_euclidean_sees_lengths_cosine_does_not():
    vectors = np.array([[1.0, 0.0], [10.0, 0.0], [1.0, 2.0], [0.0, 1.2]])
    labels = ["a", "a", "b", "b"]
    assert retrieval_metrics(vectors, labels, ks=())["precision@1"] == 1.0
    assert retrieval_metrics(vectors, labels, ks=(), distance="euclidean")["precision@1"] == 0.75


def test_labels_compare_as_whole_strings():
    vectors = at_angles(0, 5, 90, 95)
    found = retrieval_metrics(vectors, ["red|silk", "red|silk", "red|wool", "red|wool"], ks=(1,))
    assert found["map@r"] == 1.0
    # The test can fail: a prefix or part match would merge the classes.
    mixed = retrieval_metrics(vectors, ["red|silk", "red|wool", "red|silk", "red|wool"], ks=(1,))
    assert mixed["precision@1"] == 0.0
    assert retrieval_metrics(vectors, np.array([7, 7, 3, 3])) == retrieval_metrics(
        vectors, ["7", "7", "3", "3"]
    )


def test_bad_input_says_what_is_valid():
    with pytest.raises(InputError, match="no two items share a label"):
        retrieval_metrics(np.eye(3), ["a", "b", "c"])
    with pytest.raises(InputError, match="3 vectors but labels of shape"):
        retrieval_metrics(np.eye(3), ["a", "a"])
    with pytest.raises(UsageError, match="k >= 1"):
        retrieval_metrics(np.eye(3), ["a", "a", "b"], ks=(0, 5))
    with pytest.raises(UsageError, match="valid: cosine, euclidean"):
        retrieval_metrics(np.eye(3), ["a", "a", "b"], distance="dot")  # type: ignore[arg-type]
