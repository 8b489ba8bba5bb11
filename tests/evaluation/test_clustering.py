"""AMI and NMI as the reference evaluation computes them (pytorch-metric-learning's
AccuracyCalculator defaults): k-means with as many clusters as labels, then scikit-learn's
adjusted and normalized mutual information, here without either library."""

import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import FaissKMeans
from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

from dior_search.data.synthetic import CONDITIONS
from dior_search.errors import InputError
from dior_search.evaluation.bench import evaluate_index
from dior_search.evaluation.clustering import (
    adjusted_mutual_information,
    clustering_metrics,
    kmeans_assignments,
    normalized_mutual_information,
)
from dior_search.store.reader import IndexReader


def pml_clustering(vectors: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The reference's call, AMI and NMI only: AccuracyCalculator on the CPU, query = reference."""
    calculator = AccuracyCalculator(include=("AMI", "NMI"), device=torch.device("cpu"))
    tensor, codes = torch.from_numpy(vectors), torch.from_numpy(labels)
    found = calculator.get_accuracy(tensor, codes, tensor, codes, ref_includes_query=True)
    return {"ami": found["AMI"], "nmi": found["NMI"]}


def labellings(seed: int, n: int, n_true: int, n_predicted: int, agree: float):
    rng = np.random.default_rng(seed)
    true = rng.integers(0, n_true, n)
    noise = rng.integers(0, n_predicted, n)
    return true, np.where(rng.random(n) < agree, true % n_predicted, noise)


@pytest.mark.parametrize(
    ("seed", "n", "n_true", "n_predicted", "agree"),
    [(0, 40, 3, 4, 0.0), (1, 400, 6, 6, 0.7), (2, 1000, 20, 7, 0.5), (3, 25, 2, 9, 0.9),
     (4, 600, 4, 4, 1.0)],
)  # fmt: skip
def test_mutual_information_equals_scikit_learn(seed, n, n_true, n_predicted, agree):
    true, predicted = labellings(seed, n, n_true, n_predicted, agree)
    assert adjusted_mutual_information(true, predicted) == pytest.approx(
        adjusted_mutual_info_score(true, predicted), abs=1e-10
    )
    assert normalized_mutual_information(true, predicted) == pytest.approx(
        normalized_mutual_info_score(true, predicted), abs=1e-10
    )


def test_hand_computed_and_limit_cases():
    same = np.array([0, 0, 1, 1, 2, 2])
    renamed = np.array([5, 5, 3, 3, 9, 9])
    assert normalized_mutual_information(same, renamed) == pytest.approx(1.0)
    assert adjusted_mutual_information(same, renamed) == pytest.approx(1.0)
    # Independent halves: no information shared; AMI below 0 as chance expects some.
    rows, columns = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])
    assert normalized_mutual_information(rows, columns) == 0.0
    assert adjusted_mutual_information(rows, columns) == pytest.approx(
        adjusted_mutual_info_score(rows, columns)
    )
    assert adjusted_mutual_information(rows, columns) < 0
    one = np.zeros(4, dtype=int)
    assert adjusted_mutual_information(one, one) == normalized_mutual_information(one, one) == 1.0
    assert adjusted_mutual_information(one, columns) == 0.0


def test_kmeans_assigns_as_pytorch_metric_learning():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 5, 300)
    vectors = rng.normal(size=(300, 16)).astype(np.float32)
    vectors[np.arange(300), labels] += 2.5
    expected = FaissKMeans(niter=20)(torch.from_numpy(vectors), 5).numpy()
    np.testing.assert_array_equal(kmeans_assignments(vectors, 5), expected)
    # Below FAISS's 39 points per cluster, where it warns: the same clusters all the same.
    few = vectors[:60]
    expected = FaissKMeans(niter=20)(torch.from_numpy(few), 5).numpy()
    np.testing.assert_array_equal(kmeans_assignments(few, 5), expected)


@pytest.mark.parametrize(
    ("seed", "n", "n_classes", "spread"), [(6, 300, 5, 2.0), (7, 257, 12, 0.8)]
)
def test_equals_accuracy_calculator(seed, n, n_classes, spread):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    vectors = rng.normal(size=(n, 24)).astype(np.float32)
    vectors[np.arange(n), labels] += spread
    ours = clustering_metrics(vectors, labels.astype(str))
    assert ours == pytest.approx(pml_clustering(vectors, labels), abs=1e-10)


def test_bad_input_is_refused():
    with pytest.raises(InputError, match="3 vectors but 2 labels"):
        clustering_metrics(np.eye(3, dtype=np.float32), ["a", "b"])
    with pytest.raises(InputError, match="cannot cluster 2 vectors into 3 clusters"):
        kmeans_assignments(np.eye(2, dtype=np.float32), 3)


@pytest.mark.slow
def test_bench_equals_accuracy_calculator_on_the_synthetic_set(synthetic_workspace):
    """What bench reports for each condition's index equals the reference's numbers."""
    for condition in CONDITIONS:
        reader = IndexReader(synthetic_workspace / "indexes" / "synthetic" / "tiny" / condition)
        rows = [{condition: label} for label in reader.labels(condition)]
        got = evaluate_index(reader, rows, condition)
        _, vectors = reader.all_vectors()
        codes = np.unique(reader.labels(condition), return_inverse=True)[1]
        expected = pml_clustering(np.ascontiguousarray(vectors, dtype=np.float32), codes)
        assert got["ami"] == pytest.approx(expected["ami"], abs=5e-5), condition
        assert got["nmi"] == pytest.approx(expected["nmi"], abs=5e-5), condition
        # The tiny model's vectors cluster by their condition's labels.
        assert got["nmi"] > 0.5, condition
