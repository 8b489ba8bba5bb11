"""Retrieval metrics over a labelled collection: every item queries all the others."""

import numpy as np


def cosine_scores(vectors: np.ndarray) -> np.ndarray:
    """All-pairs cosine similarity of row vectors, float64 for stable ranking."""
    unit = vectors.astype(np.float64)
    unit /= np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
    scores: np.ndarray = unit @ unit.T
    return scores


def neighbours(vectors: np.ndarray, k: int) -> np.ndarray:
    """Indices of each row's k nearest other rows by cosine, itself excluded; ties by index."""
    scores = cosine_scores(vectors)
    np.fill_diagonal(scores, -np.inf)
    order: np.ndarray = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order


def recall_at_k(vectors: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of queries with at least one same-label item among their k nearest others."""
    nearest = neighbours(vectors, k)
    hits = (labels[nearest] == labels[:, None]).any(axis=1)
    return float(hits.mean())
