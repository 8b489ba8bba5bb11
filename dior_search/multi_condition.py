"""Queries over several conditions at once: rank by a weighted sum of per-condition cosines.

The indexes of one collection under different conditions are joined row by row on the image's
content hash (ids agree only when the conditions were indexed together), and an image counts
only if every condition's index holds it. Ranking is a threshold algorithm (Fagin et al.):
take the top m of each condition's index, re-score the union exactly from the stored vectors,
and stop once the k-th combined score beats the best score an unseen image could reach, which
is the weighted sum of each condition's m-th score; otherwise grow m. With exact (Flat) indexes
the result is exactly the brute-force top k; with approximate ones it is as good as their
per-condition top-m lists.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from dior_search.embedder import Embedder
from dior_search.errors import IndexStoreError, UsageError
from dior_search.index_store import IndexReader, check_same_embedder, normalize

# Candidates taken from each condition at first, as a multiple of k (and at least a floor).
FIRST_CANDIDATES_PER_K = 4
MIN_CANDIDATES = 64
GROWTH = 4
# Float32 searches and numpy re-scoring can differ in the last bits; never certify on that.
SCORE_SLACK = 1e-5


@dataclass(frozen=True)
class ConditionHit:
    """One result of a (multi-)condition query; `id` is in the first condition's index."""

    id: int
    score: float
    scores: tuple[float, ...]
    path: str
    labels: dict[str, str]


def normalize_weights(weights: Sequence[float] | None, n_conditions: int) -> tuple[float, ...]:
    """Weights scaled to sum to 1 (equal if not given), so a score is a weighted mean cosine."""
    if weights is None or len(weights) == 0:
        return tuple(1.0 / n_conditions for _ in range(n_conditions))
    if len(weights) != n_conditions:
        raise UsageError(
            f"got {len(weights)} weights for {n_conditions} conditions: give one weight per "
            "condition, in the same order, or none"
        )
    if not all(math.isfinite(w) and w > 0 for w in weights):
        raise UsageError(f"weights must be positive numbers, got {list(weights)}")
    total = sum(weights)
    return tuple(w / total for w in weights)


def content_hashes(reader: IndexReader) -> list[str]:
    """Every row's content hash, in id order."""
    hashes: list[str] = []
    for table in reader.tables:
        hashes.extend(table.column("content_hash").to_pylist())
    return hashes


def stored_vectors(reader: IndexReader, ids: np.ndarray) -> np.ndarray:
    """The stored (normalised) vectors of `ids`, shape (len(ids), dim)."""
    out = np.empty((len(ids), reader.manifest.dim), dtype=np.float32)
    if len(ids) == 0:
        return out
    shards = np.searchsorted(reader.first_ids, ids, side="right") - 1
    for shard in np.unique(shards):
        rows = np.flatnonzero(shards == shard)
        out[rows] = reader.shards[int(shard)].reconstruct_batch(
            np.ascontiguousarray(ids[rows], dtype=np.int64)
        )
    return out


class JoinedIndexes:
    """The indexes of one collection under several conditions, rows joined by content hash."""

    def __init__(self, readers: Sequence[IndexReader]) -> None:
        if not readers:
            raise UsageError("give at least one condition")
        first = readers[0]
        for reader in readers[1:]:
            if reader.manifest.collection["name"] != first.manifest.collection["name"]:
                raise IndexStoreError(
                    f"{reader.directory} indexes collection {reader.manifest.collection['name']}"
                    f", not {first.manifest.collection['name']}: conditions can only be "
                    "combined within one collection"
                )
            check_same_embedder(reader.directory, reader.manifest.embedder, first.manifest.embedder)
        self.readers = list(readers)
        self.first_hashes: list[str] | None = None
        self.first_ids_by_hash: dict[str, int] | None = None
        # Per condition: its id of each first-condition id (-1: missing), and the inverse.
        self.from_first: list[np.ndarray] = [np.arange(len(first), dtype=np.int64)]
        self.to_first: list[np.ndarray] = [np.arange(len(first), dtype=np.int64)]
        for reader in readers[1:]:
            forward, backward = self.align(reader)
            self.from_first.append(forward)
            self.to_first.append(backward)
        # First-condition ids present under every condition.
        self.complete = np.logical_and.reduce([f >= 0 for f in self.from_first])

    def align(self, reader: IndexReader) -> tuple[np.ndarray, np.ndarray]:
        first = self.readers[0]
        same_rows = len(reader) == len(first) and all(
            a.column("content_hash").equals(b.column("content_hash"))
            for a, b in zip(reader.tables, first.tables, strict=False)
        )
        if same_rows and len(reader.tables) == len(first.tables):
            identity = np.arange(len(first), dtype=np.int64)
            return identity, identity.copy()
        ids = {h: i for i, h in enumerate(content_hashes(reader))}
        forward = np.array([ids.get(h, -1) for h in self.hashes()], dtype=np.int64)
        backward = np.full(len(reader), -1, dtype=np.int64)
        present = forward >= 0
        backward[forward[present]] = np.flatnonzero(present)
        return forward, backward

    def hashes(self) -> list[str]:
        if self.first_hashes is None:
            self.first_hashes = content_hashes(self.readers[0])
        return self.first_hashes

    def first_id_of_hash(self, content_hash: str) -> int | None:
        """The first condition's id of an image, by content hash; None if it is not there."""
        if self.first_ids_by_hash is None:
            self.first_ids_by_hash = {h: i for i, h in enumerate(self.hashes())}
        return self.first_ids_by_hash.get(content_hash)

    def stored_query(self, first_id: int) -> list[np.ndarray]:
        """An indexed image's stored vector under each condition, to query with."""
        self.readers[0].locate(first_id)  # raises on an unknown id
        if not self.complete[first_id]:
            raise IndexStoreError(
                f"id {first_id} of {self.readers[0].directory} is not indexed under every "
                "condition asked for"
            )
        return [
            reader.vector(int(ids[first_id]))
            for reader, ids in zip(self.readers, self.from_first, strict=True)
        ]

    def search(
        self, vectors: Sequence[np.ndarray], weights: Sequence[float], k: int
    ) -> list[ConditionHit]:
        """The top k by sum of weight x cosine; one condition searches exactly as `query`."""
        if len(vectors) != len(self.readers) or len(weights) != len(self.readers):
            raise UsageError("give one query vector and one weight per condition")
        if len(self.readers) == 1:
            hits = self.readers[0].top_hits(vectors[0], k)
            return [ConditionHit(h.id, h.score, (h.score,), h.path, h.labels) for h in hits]
        if not all(w > 0 for w in weights):
            raise UsageError(f"weights must be positive, got {list(weights)}")
        queries = [normalize(np.asarray(v)[None, :])[0] for v in vectors]
        w = np.asarray(weights, dtype=np.float64)
        k = min(k, int(self.complete.sum()))
        if k < 1:
            return []
        m = max(FIRST_CANDIDATES_PER_K * k, MIN_CANDIDATES)
        while True:
            candidates, bound, seen_all = self.candidates(queries, w, m)
            scores = np.stack(
                [
                    stored_vectors(reader, ids[candidates]) @ query
                    for reader, ids, query in zip(
                        self.readers, self.from_first, queries, strict=True
                    )
                ]
            ).astype(np.float64)
            combined = w @ scores
            order = np.lexsort((candidates, -combined))[:k]
            certified = len(order) == k and combined[order[-1]] >= bound + SCORE_SLACK
            if seen_all or certified:
                break
            m *= GROWTH
        first = self.readers[0]
        found = []
        for position in order.tolist():
            row_id = int(candidates[position])
            row = first.row(row_id)
            found.append(
                ConditionHit(
                    row_id,
                    float(combined[position]),
                    tuple(float(s) for s in scores[:, position]),
                    row.path,
                    row.labels,
                )
            )
        return found

    def candidates(
        self, queries: Sequence[np.ndarray], weights: np.ndarray, m: int
    ) -> tuple[np.ndarray, float, bool]:
        """(first-condition ids in any condition's top m, bound on unseen scores, all seen)."""
        found: list[np.ndarray] = []
        bound = 0.0
        seen_all = False
        for reader, to_first, query, weight in zip(
            self.readers, self.to_first, queries, weights, strict=True
        ):
            top = min(m, len(reader))
            scores, ids = reader.search(query[None, :], top)
            valid = ids[0] >= 0
            mapped = to_first[ids[0][valid]]
            found.append(mapped[mapped >= 0])
            # Every image not found here scores at most this one's m-th score.
            bound += float(weight) * float(scores[0][valid][-1]) if valid.any() else 0.0
            seen_all = seen_all or top >= len(reader)
        union = np.unique(np.concatenate(found))
        return union[self.complete[union]], bound, seen_all


def embed_conditions(
    embedder: Embedder, readers: Sequence[IndexReader], image: Image.Image
) -> list[np.ndarray]:
    """One image embedded under each index's condition, in one call to the model."""
    vectors = embedder.embed([image], [r.manifest.condition["text"] for r in readers])
    return [np.asarray(vectors[0, column]) for column in range(len(readers))]


def shared_label_rate(
    joined: JoinedIndexes, weights: Sequence[float], label_names: Sequence[str], k: int = 10
) -> float:
    """Mean share of each indexed image's top k (itself left out) that has all its labels named.

    Every image indexed under all the conditions queries with its stored vectors, as `--id`.
    """
    first = joined.readers[0]
    rates = []
    for row_id in np.flatnonzero(joined.complete).tolist():
        labels = first.row(row_id).labels
        hits = joined.search(joined.stored_query(row_id), weights, k + 1)
        others = [h for h in hits if h.id != row_id][:k]
        same = [all(h.labels.get(n) == labels.get(n) for n in label_names) for h in others]
        rates.append(sum(same) / max(1, len(same)))
    return float(np.mean(rates)) if rates else 0.0
