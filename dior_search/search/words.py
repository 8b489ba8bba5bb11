"""Text queries: rank images by the model's probability of answering a word.

Under a condition asked about in words (`--text red -c color`), an image whose stored answer is
the word ranks first, by the answer's log-probability; every other image follows by the
log-probability of the word's first token, `log sum_t exp(W_U[t] . h) - logsumexp(W_U h)` over
the first tokens t of its surface forms (lower, capitalised, upper case, with and without a
leading space). `h` is the stored vector times its stored norm, `logsumexp(W_U h)` the stored
log-partition: a matrix product over the stored vectors, a block of rows at a time. A word of
several tokens is scored by its first token there (`scored_by` says which score a hit got).

Several word conditions: images are ranked by how many of their words they answered (more
first), then by the sum of their log-probabilities (answer or first token, per condition),
the log of the joint probability. With an image as well, the words sort the images into the
same tiers, and within a tier the image conditions' weighted cosine ranks them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from dior_search.search.joined import JoinedIndexes
from dior_search.store.backend import Reader
from dior_search.store.schema import ANSWER, ANSWER_LOGPROB, LOG_PARTITION

# Stored vectors scored at once by the first-token product.
BLOCK_ROWS = 16_384

SCORED_BY_ANSWER = "answer"
SCORED_BY_FIRST_TOKEN = "first-token"


@dataclass(frozen=True)
class WordCondition:
    """A condition asked about in words: its joined index, the word, and the output head's
    rows of the word's first tokens (tokens x hidden)."""

    name: str
    position: int
    word: str
    head_rows: np.ndarray


@dataclass(frozen=True)
class WordScores:
    """One image's scores under the word conditions: log-probability and how it was scored."""

    logprobs: tuple[float, ...]
    scored_by: tuple[str, ...]


def first_token_logprobs(reader: Reader, ids: np.ndarray, head_rows: np.ndarray) -> np.ndarray:
    """log p(the word's first token | h) of rows `ids`, from their stored vectors, norms and
    log-partitions, a block of rows at a time."""
    positions = reader.positions(ids)
    norms = np.asarray(reader.column("norm"), dtype=np.float32)[positions]
    partitions = np.asarray(reader.column(LOG_PARTITION), dtype=np.float64)[positions]
    out = np.empty(len(ids), dtype=np.float64)
    for low in range(0, len(ids), BLOCK_ROWS):
        block = slice(low, low + BLOCK_ROWS)
        logits = (reader.vectors(ids[block]) @ head_rows.T).astype(np.float64)
        logits *= norms[block, None]
        top = logits.max(axis=1, keepdims=True)
        out[block] = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1)) - partitions[block]
    return out


class WordRanking:
    """The word conditions of one query over one joined set of indexes."""

    def __init__(self, joined: JoinedIndexes, words: Sequence[WordCondition]) -> None:
        self.joined = joined
        self.words = list(words)
        self.matched = np.stack(
            [joined.column(w.position, ANSWER) == w.word for w in self.words]
        ).astype(bool)
        self.answer_logprobs = np.stack(
            [
                np.where(matched, joined.column(w.position, ANSWER_LOGPROB), np.nan).astype(
                    np.float64
                )
                for w, matched in zip(self.words, self.matched, strict=True)
            ]
        )
        self.tiers = self.matched.sum(axis=0)

    def logprobs(self, positions: np.ndarray) -> np.ndarray:
        """(word conditions, positions): the answer's log-probability where the stored answer
        is the word, else the first token's."""
        out: np.ndarray = self.answer_logprobs[:, positions].copy()
        for row, word in enumerate(self.words):
            missing = ~self.matched[row, positions]
            if missing.any():
                reader = self.joined.readers[word.position]
                ids = self.joined.from_first[word.position][positions[missing]]
                out[row, missing] = first_token_logprobs(reader, ids, word.head_rows)
        return out

    def explain(self, positions: np.ndarray) -> list[WordScores]:
        """Each position's per-condition log-probabilities and how each was scored."""
        logprobs = self.logprobs(positions)
        return [
            WordScores(
                tuple(float(v) for v in logprobs[:, column]),
                tuple(
                    SCORED_BY_ANSWER if self.matched[row, p] else SCORED_BY_FIRST_TOKEN
                    for row in range(len(self.words))
                ),
            )
            for column, p in enumerate(positions.tolist())
        ]

    def rank(
        self,
        rows: np.ndarray,
        k: int,
        within: Callable[[np.ndarray, int], list[int]] | None = None,
    ) -> list[int]:
        """The first k positions among `rows` (a mask), tier by tier (more words answered
        first). Within a tier: by `within(tier mask, n)` (an image similarity), else by the
        summed log-probabilities; ties by position."""
        ranked: list[int] = []
        for tier in range(len(self.words), -1, -1):
            if len(ranked) >= k:
                break
            members = rows & (self.tiers == tier)
            if not members.any():
                continue
            wanted = k - len(ranked)
            if within is not None:
                ranked += within(members, wanted)
                continue
            positions = np.flatnonzero(members)
            total = self.logprobs(positions).sum(axis=0)
            order = np.lexsort((positions, -total))[:wanted]
            ranked += positions[order].tolist()
        return ranked[:k]
