"""Clustering quality of a condition's vectors: AMI and NMI against its labels.

As the reference evaluation does with pytorch-metric-learning's `AccuracyCalculator` defaults:
the vectors are clustered by FAISS k-means (20 iterations, FAISS's default seed, as PML's
`FaissKMeans(niter=20)` runs it) into as many clusters as there are distinct labels, each
vector is assigned its nearest centroid, and the assignment is compared with the labels by
adjusted and normalized mutual information, both with the arithmetic mean of the two
entropies as normaliser (scikit-learn's defaults, which PML calls). Computed here with numpy,
so the package depends on neither PML nor scikit-learn.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dior_search.errors import InputError

# PML's k-means: FaissKMeans(niter=20) -> faiss.Kmeans(d, k, niter=20), seed left at FAISS's.
KMEANS_ITERATIONS = 20
EPSILON = float(np.finfo(np.float64).eps)


def clustering_metrics(vectors: np.ndarray, labels: Sequence[str] | np.ndarray) -> dict[str, float]:
    """`ami` and `nmi` of k-means clusters of `vectors` (k = the number of distinct labels)
    against `labels` (compared as whole strings)."""
    codes = np.unique(np.asarray(labels).astype(str), return_inverse=True)[1]
    if len(codes) != len(vectors):
        raise InputError(f"{len(vectors)} vectors but {len(codes)} labels")
    clusters = kmeans_assignments(vectors, int(codes.max()) + 1 if len(codes) else 0)
    # Both are at most 1 by definition; summing the entropies' terms can overshoot it in the
    # last bits (1.0000000000000007 for a perfect clustering), which no reader should see.
    return {
        "ami": min(adjusted_mutual_information(codes, clusters), 1.0),
        "nmi": min(normalized_mutual_information(codes, clusters), 1.0),
    }


def kmeans_assignments(vectors: np.ndarray, k: int) -> np.ndarray:
    """Each row's nearest centroid after FAISS k-means with `k` clusters, as PML runs it."""
    import faiss

    if k < 1 or len(vectors) < k:
        raise InputError(f"cannot cluster {len(vectors)} vectors into {k} clusters")
    data = np.ascontiguousarray(vectors, dtype=np.float32)
    # min_points_per_centroid only sets when FAISS warns on stderr that the sample is small
    # (PML's call warns below 39 points per cluster); the clustering is the same.
    kmeans = faiss.Kmeans(data.shape[1], k, niter=KMEANS_ITERATIONS, min_points_per_centroid=1)
    kmeans.train(data)
    _, nearest = kmeans.index.search(data, 1)
    assignments: np.ndarray = nearest[:, 0].astype(np.int64)
    return assignments


def contingency(true: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Counts (true class, predicted cluster), empty rows and columns dropped."""
    rows = np.unique(true, return_inverse=True)[1]
    columns = np.unique(predicted, return_inverse=True)[1]
    table = np.zeros((int(rows.max()) + 1, int(columns.max()) + 1), dtype=np.int64)
    np.add.at(table, (rows, columns), 1)
    return table


def entropy(counts: np.ndarray) -> float:
    """Entropy (nats) of a labelling given by its class sizes."""
    share = counts[counts > 0] / counts.sum()
    return float(-(share * np.log(share)).sum())


def mutual_information(table: np.ndarray) -> float:
    n = table.sum()
    rows, columns = np.nonzero(table)
    joint = table[rows, columns].astype(np.float64)
    a, b = table.sum(axis=1).astype(np.float64), table.sum(axis=0).astype(np.float64)
    terms = joint / n * (np.log(joint * n) - np.log(a[rows] * b[columns]))
    return float(max(terms.sum(), 0.0))


def log_factorials(n: int) -> np.ndarray:
    """log(m!) for m = 0..n."""
    return np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))])


def expected_mutual_information(table: np.ndarray) -> float:
    """E[MI] between two random labellings with the table's class and cluster sizes (the
    hypergeometric model of Vinh, Epps and Bailey, 2010)."""
    a = table.sum(axis=1)
    b = table.sum(axis=0)
    if len(a) == 1 or len(b) == 1:
        return 0.0
    n = int(table.sum())
    lf = log_factorials(n)
    # Every (class i, cluster j) pair, with the log of its nij-independent factorials.
    ai, bj = np.meshgrid(a, b, indexing="ij")
    ai, bj = ai.ravel(), bj.ravel()
    fixed = lf[ai] + lf[bj] + lf[n - ai] + lf[n - bj] - lf[n]
    total = 0.0
    # nij runs from max(1, a + b - n) to min(a, b): one vectorised pass per value of nij.
    for nij in range(1, int(min(a.max(), b.max())) + 1):
        live = (nij <= np.minimum(ai, bj)) & (nij >= ai + bj - n)
        if not live.any():
            continue
        x, y = ai[live], bj[live]
        log_p = fixed[live] - lf[nij] - lf[x - nij] - lf[y - nij] - lf[n - x - y + nij]
        mi_term = nij / n * (np.log(n * nij) - np.log(x.astype(np.float64) * y))
        total += float((mi_term * np.exp(log_p)).sum())
    return total


def adjusted_mutual_information(true: np.ndarray, predicted: np.ndarray) -> float:
    """AMI with the arithmetic-mean normaliser; 1.0 where both labellings are one class, 0.0
    where only one of them is (scikit-learn's conventions)."""
    n_true, n_predicted = len(np.unique(true)), len(np.unique(predicted))
    if n_true == n_predicted and n_true <= 1:
        return 1.0
    if n_true == 1 or n_predicted == 1:
        return 0.0
    table = contingency(true, predicted)
    mi = mutual_information(table)
    emi = expected_mutual_information(table)
    normaliser = (entropy(table.sum(axis=1)) + entropy(table.sum(axis=0))) / 2
    # Keep the sign where rounding makes the expectation reach the maximum.
    denominator = normaliser - emi
    denominator = min(denominator, -EPSILON) if denominator < 0 else max(denominator, EPSILON)
    numerator = mi - emi
    numerator = min(numerator, -EPSILON) if numerator < 0 else max(numerator, EPSILON)
    return float(numerator / denominator)


def normalized_mutual_information(true: np.ndarray, predicted: np.ndarray) -> float:
    """NMI with the arithmetic-mean normaliser; 1.0 where both labellings are one class."""
    n_true, n_predicted = len(np.unique(true)), len(np.unique(predicted))
    if n_true == n_predicted and n_true <= 1:
        return 1.0
    table = contingency(true, predicted)
    mi = mutual_information(table)
    if mi == 0:
        return 0.0
    normaliser = (entropy(table.sum(axis=1)) + entropy(table.sum(axis=0))) / 2
    return float(mi / max(normaliser, EPSILON))
