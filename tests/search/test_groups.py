"""search.groups' parts on generated data: ARI and silhouette equal scikit-learn's, k-means
recovers separated clusters, and a group no member answered is named by the nearest answer."""

import numpy as np
import pytest

from dior_search.search.groups import adjusted_rand_index, group_name, kmeans, silhouette


def blobs(rng, k=4, per=30, dim=16, spread=0.05):
    centres = rng.normal(size=(k, dim))
    vectors = np.repeat(centres, per, axis=0) + spread * rng.normal(size=(k * per, dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32), np.repeat(np.arange(k), per)


def test_ari_equals_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(20):
        truth = rng.integers(0, 5, 80)
        found = np.where(rng.random(80) < 0.7, truth, rng.integers(0, 6, 80))
        assert adjusted_rand_index([str(t) for t in truth], found) == pytest.approx(
            metrics.adjusted_rand_score(truth, found), abs=1e-12
        )


def test_silhouette_equals_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    vectors, labels = blobs(rng, spread=0.8)
    assert silhouette(vectors.astype(np.float64), labels) == pytest.approx(
        metrics.silhouette_score(vectors, labels, metric="cosine"), abs=1e-5
    )


def test_kmeans_recovers_separated_clusters():
    vectors, labels = blobs(np.random.default_rng(2))
    assignment, centroids = kmeans(vectors, 4)
    assert adjusted_rand_index([str(x) for x in labels], assignment) == 1.0
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-5)


def test_a_group_without_answers_takes_the_nearest_answer():
    vectors, labels = blobs(np.random.default_rng(3), k=3)
    answers = [None if x == 2 else ("red", "blue")[x] for x in labels]
    members = np.flatnonzero(labels == 2)
    centroid = vectors[members].mean(axis=0)
    # Give group 2's centroid a lean towards "blue"'s images.
    centroid = centroid + 2 * vectors[labels == 1].mean(axis=0)
    assert group_name(answers, members, centroid, vectors, 2) == ("blue", "nearest-answer", 0.0)
    named = group_name(answers, np.flatnonzero(labels == 0), centroid, vectors, 0)
    assert named == ("red", "answer", 1.0)
    assert group_name(None, members, centroid, vectors, 2) == ("group 3", "none", None)
