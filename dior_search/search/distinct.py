"""Distinct results: a hit that is a copy of a better-ranked one's picture is hidden.

Copies are judged on the pictures, not on a condition's vectors (why: data/fingerprints.py):
two hits are copies when their fingerprint similarity is at least the threshold. Hits are
walked in rank order and each one is kept unless it is that close to one already kept; the
ranking is asked for more hits until k are kept or every image was seen. A hit whose picture
cannot be read is kept and compared with nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from dior_search.data.fingerprints import fingerprint_similarity
from dior_search.errors import UsageError
from dior_search.search.joined import Ranked
from dior_search.search.words import WordScores
from dior_search.store.backend import Reader
from dior_search.store.schema import Row

# Hits asked for at first, as a multiple of k; doubled while too many are hidden.
FIRST_FETCH_PER_K = 3


def check_distinct(threshold: float | None) -> None:
    """UsageError unless the threshold is None or a similarity in (-1, 1]."""
    if threshold is not None and not (math.isfinite(threshold) and -1 < threshold <= 1):
        raise UsageError(f"--distinct takes a similarity in (-1, 1], not {threshold}")


def distinct_ranking(
    first: Reader,
    ranking: Callable[[int], tuple[list[Ranked], list[WordScores]]],
    k: int,
    threshold: float,
    fingerprint_of: Callable[[Row], np.ndarray | None],
) -> tuple[list[Ranked], list[WordScores], int]:
    """The top k of `ranking` (hits as ids of `first`) with copies of better-ranked hits' pictures
    left out, and how many were left out before the k-th kept one."""
    fetch = max(1, min(k * FIRST_FETCH_PER_K, len(first)))
    while True:
        ranked, scored = ranking(fetch)
        exhausted = len(ranked) < fetch or fetch >= len(first)
        fingerprints = [fingerprint_of(row) for row in first.rows([r.id for r in ranked])]
        kept: list[int] = []
        kept_fingerprints: list[np.ndarray] = []
        hidden = 0
        for position, fingerprint in enumerate(fingerprints):
            if len(kept) == k:
                break
            if fingerprint is not None and any(
                fingerprint_similarity(fingerprint, other) >= threshold
                for other in kept_fingerprints
            ):
                hidden += 1
                continue
            kept.append(position)
            if fingerprint is not None:
                kept_fingerprints.append(fingerprint)
        if len(kept) == k or exhausted:
            break
        fetch = min(fetch * 2, len(first))
    return (
        [ranked[p] for p in kept],
        [scored[p] for p in kept] if scored else [],
        hidden,
    )
