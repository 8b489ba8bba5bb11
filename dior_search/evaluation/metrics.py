"""Retrieval metrics over a labelled collection: every item queries all the others.

The conventions are those of pytorch-metric-learning's `AccuracyCalculator` with the reference
set equal to the query set, which is how the paper's code evaluates:

- the query itself is never among its results;
- a query whose label no other item has (a class of one) is left out of every metric;
- MAP@R uses R = the number of other items with the query's label;
- precision@1 is the share of queries whose nearest other item has their label, and recall@k
  the share with at least one same-label item among their k nearest others.

Labels are compared as whole strings. Scores are computed in float64 and rounded to float32, so
identical vectors tie exactly; ties are ranked by lower index first. `AccuracyCalculator` leaves
the order of tied scores to its k-NN search, so the two agree whenever the tied items share a
label (duplicate images do) and the metrics do not depend on the order.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Literal

import numpy as np

from dior_search.errors import InputError, UsageError

Distance = Literal["cosine", "euclidean"]
DISTANCES: tuple[Distance, ...] = ("cosine", "euclidean")
DEFAULT_KS = (1, 5, 10)
# Neighbours per image that leakage looks at.
LEAKAGE_K = 10
# Scores held at once per block of queries (float64): 128 MiB, whatever the collection size.
BLOCK_SCORES = 1 << 24


def retrieval_metrics(
    vectors: np.ndarray,
    labels: Sequence[str] | np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
    *,
    distance: Distance = "cosine",
) -> dict[str, float]:
    """recall@k for each k, map@r and precision@1, each in 0..1, every item a query.

    `distance` is `cosine` (the default) or `euclidean` on the raw vectors, which is what
    `AccuracyCalculator` does with its default k-NN and what the paper's numbers used.
    Queries go in blocks, so no all-pairs matrix is held in memory.
    """
    if any(k < 1 for k in ks):
        raise UsageError(f"recall@k needs k >= 1, got {list(ks)}")
    codes = label_codes(vectors, labels)
    others = np.bincount(codes)[codes] - 1
    queries = np.flatnonzero(others > 0)
    if len(queries) == 0:
        raise InputError("no two items share a label: there is nothing to retrieve")
    scorer = Scorer(vectors, distance)
    n = len(codes)
    top_k = min(max(ks, default=1), n - 1)
    hits_at = {k: 0 for k in ks}
    first_hits = 0
    precision_sum = 0.0
    for block in blocks(queries, n):
        r = others[block]
        ranked = top_ranked(scorer.scores(block), max(top_k, int(r.max())))
        same = codes[ranked] == codes[block, None]
        first_hits += int(same[:, 0].sum())
        for k in ks:
            hits_at[k] += int(same[:, :k].any(axis=1).sum())
        within_r = same & (np.arange(same.shape[1]) < r[:, None])
        precision_at_hits = np.cumsum(within_r, axis=1) * within_r / np.arange(1, same.shape[1] + 1)
        precision_sum += float((precision_at_hits.sum(axis=1) / r).sum())
    total = len(queries)
    return {
        **{f"recall@{k}": hits_at[k] / total for k in ks},
        "map@r": precision_sum / total,
        "precision@1": first_hits / total,
    }


def neighbours(vectors: np.ndarray, k: int, distance: Distance = "cosine") -> np.ndarray:
    """Indices of each row's k nearest other rows, itself excluded; ties by index."""
    scorer = Scorer(vectors, distance)
    n = len(vectors)
    rows = np.arange(n)
    out = np.empty((n, min(k, n - 1)), dtype=np.int64)
    for block in blocks(rows, n):
        out[block] = top_ranked(scorer.scores(block), out.shape[1])
    return out


def leakage(
    vectors: np.ndarray,
    labels: Mapping[str, Sequence[str | None]],
    condition: str,
    k: int = LEAKAGE_K,
    *,
    distance: Distance = "cosine",
) -> float:
    """How much the other labels still drive the neighbours under `condition`'s vectors.

    For each other label b: the mean over images of the share of the image's k nearest
    others that have its label b, minus that label's base rate (the share of all other
    images that have it); then the mean over b. 0: b does not drive the neighbours at all.
    Images without a label b, and neighbours without one, count for b as not sharing it.
    """
    others = [name for name in labels if name != condition]
    if not others:
        raise UsageError(f"leakage needs labels other than {condition!r}")
    if len(vectors) < 2:
        raise InputError("leakage needs at least two images")
    nearest = neighbours(vectors, k, distance)
    rates = []
    for name in others:
        values = np.asarray([v if v is not None else "" for v in labels[name]], dtype=object)
        present = np.asarray([v is not None for v in labels[name]], dtype=bool)
        if present.sum() < 2:
            continue
        codes = np.unique(values.astype(str), return_inverse=True)[1]
        codes[~present] = -1
        counts = np.bincount(codes[present])
        base = (counts[codes[present]] - 1) / (present.sum() - 1)
        shared = (codes[nearest] == codes[:, None]) & (codes[:, None] >= 0)
        rates.append(float((shared[present].mean(axis=1) - base).mean()))
    if not rates:
        raise InputError(f"no label other than {condition!r} is given for two images")
    return float(np.mean(rates))


class Scorer:
    """Similarity of chosen query rows to every row; higher is nearer, the query itself -inf."""

    def __init__(self, vectors: np.ndarray, distance: Distance) -> None:
        if distance not in DISTANCES:
            raise UsageError(f"unknown distance {distance!r}; valid: {', '.join(DISTANCES)}")
        self.distance = distance
        self.vectors = vectors.astype(np.float64)
        if distance == "cosine":
            norms = np.linalg.norm(self.vectors, axis=1, keepdims=True)
            self.vectors /= np.maximum(norms, 1e-12)
        else:
            self.squared_norms: np.ndarray = np.einsum("ij,ij->i", self.vectors, self.vectors)

    def scores(self, queries: np.ndarray) -> np.ndarray:
        """Float32 (len(queries), n) scores, rounded so that identical vectors tie exactly."""
        products = self.vectors[queries] @ self.vectors.T
        if self.distance == "euclidean":
            # -|q - r|^2 up to a per-query constant, which does not change the ranking.
            products = 2 * products - self.squared_norms
        scores: np.ndarray = products.astype(np.float32)
        scores[np.arange(len(queries)), queries] = -np.inf
        return scores


def top_ranked(scores: np.ndarray, depth: int) -> np.ndarray:
    """Column indices of each row's `depth` highest scores, best first, ties by lower index."""
    n = scores.shape[1]
    if depth >= n:
        candidates = np.broadcast_to(np.arange(n), scores.shape)
    else:
        threshold = -np.partition(-scores, depth - 1, axis=1)[:, depth - 1 : depth]
        # Wide enough to hold every item tied with the depth-th best, so ties can be ordered.
        width = int((scores >= threshold).sum(axis=1).max())
        candidates = np.argpartition(-scores, width - 1, axis=1)[:, :width]
    values = np.take_along_axis(scores, candidates, axis=1)
    order = np.lexsort((candidates, -values), axis=1)
    ranked: np.ndarray = np.take_along_axis(candidates, order[:, :depth], axis=1)
    return ranked


def blocks(rows: np.ndarray, n: int) -> Iterator[np.ndarray]:
    step = max(1, BLOCK_SCORES // n)
    for start in range(0, len(rows), step):
        yield rows[start : start + step]


def label_codes(vectors: np.ndarray, labels: Sequence[str] | np.ndarray) -> np.ndarray:
    """Integer codes of the labels as strings, after checking they fit the vectors."""
    if vectors.ndim != 2:
        raise InputError(f"vectors must be one row per item (2-D), got shape {vectors.shape}")
    as_text = np.asarray(labels).astype(str)
    if as_text.shape != (len(vectors),):
        raise InputError(f"{len(vectors)} vectors but labels of shape {as_text.shape}")
    codes: np.ndarray = np.unique(as_text, return_inverse=True)[1]
    return codes
