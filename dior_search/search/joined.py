"""Several conditions at once: one collection's indexes joined on content hash, ranked by a
weighted sum of per-condition cosines.

The indexes of one collection under different conditions are joined row by row on the image's
content hash (ids agree only when the conditions were indexed together), and an image counts
only if every condition's index holds it. Ranking is a threshold algorithm (Fagin et al.):
take the top m of each condition's index, re-score the union exactly from the stored vectors,
and stop once the k-th combined score beats the best score an unseen image could reach, which
is the weighted sum of each condition's m-th score; otherwise grow m. With exact (Flat) indexes
the result is exactly the brute-force top k; with approximate ones it is as good as their
per-condition top-m lists.

Rows are addressed by their position in the first condition's index (its ids in order); ids
of the other indexes are only looked up, never assumed equal to positions. Not every joined
index need be searched by similarity: a condition asked about in words, or one whose answers
a filter reads, is joined for its columns (`column`). A search may be limited to the rows a
filter passes (a mask over positions): each searched index is then searched among its ids of
those rows only; one index joined alone may leave the filter to its store (`search_where`).
Each condition's index is joined as of the generation its reader holds: an image counts
where every one of them holds its content, whatever path each has it under, so conditions
synced at different times never mix two contents of one path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dior_search.errors import IndexStoreError, UsageError
from dior_search.store.backend import Reader, check_same_embedder
from dior_search.store.schema import normalize

# Candidates taken from each condition at first, as a multiple of k (and at least a floor).
FIRST_CANDIDATES_PER_K = 4
MIN_CANDIDATES = 64
GROWTH = 4
# Float32 searches and numpy re-scoring can differ in the last bits; never certify on that.
SCORE_SLACK = 1e-5


@dataclass(frozen=True)
class Fanout:
    """A map from positions to lists of positions, packed: `targets[starts[p]:starts[p + 1]]`."""

    starts: np.ndarray
    targets: np.ndarray

    @classmethod
    def identity(cls, n: int) -> Fanout:
        return cls(np.arange(n + 1, dtype=np.int64), np.arange(n, dtype=np.int64))

    @classmethod
    def of(cls, lists: Sequence[Sequence[int]]) -> Fanout:
        starts = np.zeros(len(lists) + 1, dtype=np.int64)
        starts[1:] = np.cumsum([len(t) for t in lists])
        targets = [p for t in lists for p in t]
        return cls(starts, np.asarray(targets, dtype=np.int64))

    def map(self, positions: np.ndarray) -> np.ndarray:
        """Every target of `positions`, concatenated."""
        lows, highs = self.starts[positions], self.starts[positions + 1]
        if len(positions) == 0 or not (highs > lows).any():
            return np.empty(0, dtype=np.int64)
        return np.concatenate([self.targets[a:b] for a, b in zip(lows, highs, strict=True)])


@dataclass(frozen=True)
class Ranked:
    """One ranked image: its id in the first condition's index, combined and per-condition."""

    id: int
    score: float
    scores: tuple[float, ...]


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
        raise UsageError(f"weights must be positive finite numbers, got {list(weights)}")
    total = sum(weights)
    if not math.isfinite(total):
        # Weights near the float maximum overflow their sum: scale them by the largest first.
        largest = max(weights)
        weights = [w / largest for w in weights]
        total = sum(weights)
    return tuple(w / total for w in weights)


def alone(scores: np.ndarray, ids: np.ndarray) -> list[Ranked]:
    """One index's hits (id -1: none) as rankings of their own."""
    return [
        Ranked(int(i), float(s), (float(s),))
        for s, i in zip(scores.tolist(), ids.tolist(), strict=True)
        if i >= 0
    ]


class JoinedIndexes:
    """The indexes of one collection under several conditions, rows joined by content hash."""

    def __init__(self, readers: Sequence[Reader]) -> None:
        if not readers:
            raise UsageError("give at least one condition")
        first = readers[0]
        for reader in readers[1:]:
            if reader.manifest.collection["name"] != first.manifest.collection["name"]:
                raise IndexStoreError(
                    f"{reader.location} indexes collection {reader.manifest.collection['name']}"
                    f", not {first.manifest.collection['name']}: conditions can only be "
                    "combined within one collection"
                )
            check_same_embedder(reader.location, reader.manifest.embedder, first.manifest.embedder)
        self.readers = list(readers)
        self._first_ids_by_hash: dict[str, int] | None = None
        # Per condition: its id of each first-condition position (-1: missing), and the
        # first-condition positions of each of its positions (several where the first
        # condition has one content at several paths).
        self.from_first: list[np.ndarray] = [first.ids]
        self.to_first: list[Fanout] = [Fanout.identity(len(first))]
        for reader in readers[1:]:
            forward, backward = self.align(reader)
            self.from_first.append(forward)
            self.to_first.append(backward)
        # First-condition positions present under every condition.
        self.complete = np.logical_and.reduce([f >= 0 for f in self.from_first])

    def align(self, reader: Reader) -> tuple[np.ndarray, Fanout]:
        """Join `reader`'s rows to the first condition's on content hash (conditions synced
        at different times hold different rows; a content may be at several paths)."""
        first = self.readers[0]
        if reader.content_hashes() == first.content_hashes():
            return reader.ids, Fanout.identity(len(reader))
        positions: dict[str, int] = {}
        for position, content_hash in enumerate(reader.content_hashes()):
            positions.setdefault(content_hash, position)
        firsts_of: dict[str, list[int]] = {}
        for position, content_hash in enumerate(first.content_hashes()):
            firsts_of.setdefault(content_hash, []).append(position)
        forward = np.full(len(first), -1, dtype=np.int64)
        for content_hash, firsts in firsts_of.items():
            if content_hash in positions:
                forward[firsts] = reader.ids[positions[content_hash]]
        backward = Fanout.of([firsts_of.get(h, []) for h in reader.content_hashes()])
        return forward, backward

    def first_id_of_hash(self, content_hash: str) -> int | None:
        """The first condition's id of an image, by content hash; None if it is not there."""
        if self._first_ids_by_hash is None:
            first = self.readers[0]
            self._first_ids_by_hash = {
                h: int(i) for h, i in zip(first.content_hashes(), first.ids.tolist(), strict=True)
            }
        return self._first_ids_by_hash.get(content_hash)

    def is_complete(self, first_id: int) -> bool:
        """Whether the image with this first-condition id is indexed under every condition."""
        first = self.readers[0]
        return first.contains(first_id) and bool(self.complete[first.positions([first_id])[0]])

    def absent_under(self, first_id: int, among: Sequence[int]) -> list[int]:
        """Which of the joined indexes `among` lack the image with this first-condition id."""
        first = self.readers[0]
        if not first.contains(first_id):
            return [0, *(j for j in among if j != 0)]
        position = int(first.positions([first_id])[0])
        return [j for j in among if self.from_first[j][position] < 0]

    def stored_query(
        self, first_id: int, searched: Sequence[int] | None = None
    ) -> list[np.ndarray]:
        """An indexed image's stored vector under each searched condition (default: all), to
        query with."""
        position = int(self.readers[0].positions([first_id])[0])  # raises on an unknown id
        chosen = range(len(self.readers)) if searched is None else searched
        # Only the searched indexes need it: a filter's index may lack the query image.
        if any(self.from_first[j][position] < 0 for j in chosen):
            raise IndexStoreError(
                f"id {first_id} of {self.readers[0].location} is not indexed under every "
                "condition asked for"
            )
        return [self.readers[j].vector(int(self.from_first[j][position])) for j in chosen]

    def column(self, j: int, name: str) -> np.ndarray:
        """Index j's column `name` at every first-condition position (object array; None
        where that index lacks the image or the value)."""
        values = np.empty(len(self.readers[0]), dtype=object)
        ids = self.from_first[j]
        present = ids >= 0
        stored = np.asarray(self.readers[j].column(name), dtype=object)
        if present.any():
            values[present] = stored[self.readers[j].positions(ids[present])]
        return values

    def ids_of(self, j: int, positions: np.ndarray) -> np.ndarray:
        """Index j's ids of first-condition positions (each present in it), sorted, unique."""
        return np.unique(self.from_first[j][positions])

    def search(
        self,
        vectors: Sequence[np.ndarray],
        weights: Sequence[float],
        k: int,
        searched: Sequence[int] | None = None,
        passing: np.ndarray | None = None,
    ) -> list[Ranked]:
        """The top k by sum of weight x cosine over the `searched` indexes (default: all), one
        query vector and weight each, among the rows `passing` (a mask over first-condition
        positions; default all). One index searched alone, and the only one joined, is searched
        as it is."""
        chosen = list(range(len(self.readers))) if searched is None else list(searched)
        if len(vectors) != len(chosen) or len(weights) != len(chosen):
            raise UsageError("give one query vector and one weight per condition")
        if chosen == [0] and (len(self.readers) == 1 or passing is not None):
            allowed = None
            if passing is not None:
                allowed = self.readers[0].ids[passing & self.complete]
                if len(allowed) == 0:
                    return []
            scores, ids = self.readers[0].search(np.asarray(vectors[0])[None, :], k, allowed)
            return alone(scores[0], ids[0])
        if not all(w > 0 for w in weights):
            raise UsageError(f"weights must be positive, got {list(weights)}")
        queries = [normalize(np.asarray(v)[None, :])[0] for v in vectors]
        w = np.asarray(weights, dtype=np.float64)
        rows = self.complete if passing is None else self.complete & passing
        k = min(k, int(rows.sum()))
        if k < 1:
            return []
        # Each searched index among its ids of the rows that count (all of them: no filter).
        allowed = [
            None if passing is None else self.ids_of(j, np.flatnonzero(rows)) for j in chosen
        ]
        m = max(FIRST_CANDIDATES_PER_K * k, MIN_CANDIDATES)
        while True:
            candidates, bound, seen_all = self.candidates(chosen, queries, w, m, allowed, rows)
            scores = np.stack(
                [
                    self.readers[j].vectors(self.from_first[j][candidates]) @ query
                    for j, query in zip(chosen, queries, strict=True)
                ]
            ).astype(np.float64)
            combined = w @ scores
            order = np.lexsort((candidates, -combined))[:k]
            certified = len(order) == k and combined[order[-1]] >= bound + SCORE_SLACK
            if seen_all or certified:
                break
            m *= GROWTH
        first_ids = self.readers[0].ids
        return [
            Ranked(
                int(first_ids[candidates[p]]),
                float(combined[p]),
                tuple(float(s) for s in scores[:, p]),
            )
            for p in order.tolist()
        ]

    def search_where(
        self, vector: np.ndarray, k: int, equals: Sequence[tuple[str, str]]
    ) -> list[Ranked]:
        """The top k of the only joined index among the rows whose columns hold the values
        `equals` names, filtered by its store (see search.filters.store_filter)."""
        if len(self.readers) != 1:
            raise ValueError("a store decides filters of one index searched alone")
        scores, ids = self.readers[0].search_where(np.asarray(vector)[None, :], k, equals)
        return alone(scores[0], ids[0])

    def candidates(
        self,
        chosen: Sequence[int],
        queries: Sequence[np.ndarray],
        weights: np.ndarray,
        m: int,
        allowed: Sequence[np.ndarray | None],
        rows: np.ndarray,
    ) -> tuple[np.ndarray, float, bool]:
        """(first-condition positions of `rows` in any searched index's top m, bound on unseen
        scores, whether every row was seen)."""
        found: list[np.ndarray] = []
        bound = 0.0
        seen_all = False
        for j, query, weight, ids in zip(chosen, queries, weights, allowed, strict=True):
            reader = self.readers[j]
            size = len(reader) if ids is None else len(ids)
            top = min(m, size)
            scores, hits = reader.search(query[None, :], top, ids)
            valid = hits[0] >= 0
            found.append(self.to_first[j].map(reader.positions(hits[0][valid])))
            # Every image not found here scores at most this one's m-th score.
            bound += float(weight) * float(scores[0][valid][-1]) if valid.any() else 0.0
            seen_all = seen_all or top >= size
        union = np.unique(np.concatenate(found))
        return union[rows[union]], bound, seen_all
