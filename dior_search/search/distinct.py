"""Distinct results: a hit that is a near-copy of a better-ranked one is hidden.

Two images are near-copies when the cosine of their stored vectors, in the index that judges
copies (the unconditional one when indexed, which sees the whole image; else the searched
condition's), is at least the threshold. Hits are walked in rank order and each one is kept
unless it is that close to one already kept; the ranking is asked for more hits until k are
kept or every image was seen.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from dior_search.errors import UsageError
from dior_search.search.joined import Ranked
from dior_search.search.words import WordScores
from dior_search.store.backend import Reader
from dior_search.store.schema import normalize

# Hits asked for at first, as a multiple of k; doubled while too many are hidden.
FIRST_FETCH_PER_K = 3


def check_distinct(threshold: float | None) -> None:
    """UsageError unless the threshold is None or a similarity in (-1, 1]."""
    if threshold is not None and not (math.isfinite(threshold) and -1 < threshold <= 1):
        raise UsageError(f"--distinct takes a similarity in (-1, 1], not {threshold}")


def distinct_ranking(
    judge: Reader,
    first: Reader,
    ranking: Callable[[int], tuple[list[Ranked], list[WordScores]]],
    k: int,
    threshold: float,
) -> tuple[list[Ranked], list[WordScores], int]:
    """The top k of `ranking` (hits as ids of `first`) with near-copies of better-ranked hits
    left out, and how many were left out before the k-th kept one."""
    same_index = judge.location == first.location
    judge_ids: dict[str, int] = {}
    if not same_index:
        judge_ids = {
            h: int(i) for h, i in zip(judge.content_hashes(), judge.ids.tolist(), strict=True)
        }
    fetch = max(1, min(k * FIRST_FETCH_PER_K, len(first)))
    while True:
        ranked, scored = ranking(fetch)
        exhausted = len(ranked) < fetch or fetch >= len(first)
        ids = [r.id for r in ranked]
        if same_index:
            judged = ids
        else:
            hashes = [row.content_hash for row in first.rows(ids)]
            judged = [judge_ids.get(h, -1) for h in hashes]
        present = [i for i in judged if i >= 0]
        vectors = dict(zip(present, normalize(judge.vectors(present)), strict=True))
        kept: list[int] = []
        kept_vectors: list[np.ndarray] = []
        hidden = 0
        for position, judge_id in enumerate(judged):
            if len(kept) == k:
                break
            vector = vectors.get(judge_id)
            near = vector is not None and kept_vectors
            if near and float(np.max(np.stack(kept_vectors) @ vector)) >= threshold:
                hidden += 1
                continue
            kept.append(position)
            if vector is not None:
                kept_vectors.append(vector)
        if len(kept) == k or exhausted:
            break
        fetch = min(fetch * 2, len(first))
    return (
        [ranked[p] for p in kept],
        [scored[p] for p in kept] if scored else [],
        hidden,
    )
