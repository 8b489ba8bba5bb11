"""Composed queries: a list of terms (condition, example, polarity, weight), scored by one rule.

An example is an image (uploaded, or already embedded), an indexed image's id, or a word among
the model's stored answers under the term's condition (standing for the images that answered
it). The scoring rule, per searched condition c, for an indexed image x (unit vector x_c):

    s_c(x) = mean_w { cos(x_c, p) : p positive under c }
             - NEGATIVE_SCALE * mean_w { cos(x_c, n) : n negative under c }

where mean_w is the mean weighted by the terms' weights (a missing side counts 0), and a word's
similarity is its answerers' mean similarity (their mean unit vector). Conditions are combined
as for a plain query: score(x) = sum_c w_c s_c(x), the condition weights scaled to sum to 1.

Every part is linear in x_c, so s_c(x) = x_c . q_c with q_c the weighted mean of the positive
unit vectors minus the scaled weighted mean of the negative ones: one query vector per
condition, searched through the same exact threshold ranking as a plain multi-condition query
(search.joined) with direction q_c / |q_c| and weight w_c |q_c|. The single-image query is the
case of one positive term per condition, where |q_c| = 1 and nothing changes. The alternatives
measured (scripts/eval_composition.py, docs/composition.md) were other negative scales and the
cosine to q_c (each condition's query vector normalised, which weighs a condition whose
positives and negatives nearly cancel as much as one with a clear direction).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from dior_search.errors import UsageError
from dior_search.search.joined import Ranked

# How much the negative examples' mean similarity weighs against the positives'. Measured
# (scripts/eval_composition.py, docs/composition.md): 0.5 beat 1 and 2 on "pattern of A, not
# the colour of C" and on simulated feedback, where at 1 a single negative outweighs all the
# positives it is set against.
NEGATIVE_SCALE = 0.5
# Below this, a condition's positives and negatives cancel: no direction is left to rank by.
MIN_QUERY_NORM = 1e-6


@dataclass(frozen=True, eq=False)
class Term:
    """One part of a query: under `condition`, more like (positive) or less like an example,
    with a weight within that condition's positives or negatives. Exactly one of `image`,
    `vector` (an example already embedded under `condition`), `id` or `word` is given."""

    condition: str
    image: Image.Image | None = None
    vector: np.ndarray | None = None
    id: int | None = None
    # The condition whose index `id` is from (None: the term's own condition).
    id_condition: str | None = None
    word: str | None = None
    positive: bool = True
    weight: float = 1.0
    # What the example is called where it is shown (a file name, "upload ab12..").
    label: str | None = None

    def check(self) -> None:
        """UsageError unless exactly one example is given and the weight is positive."""
        given = [self.image is not None, self.vector is not None]
        given += [self.id is not None, self.word is not None]
        if sum(given) != 1:
            raise UsageError(
                f"a term under '{self.condition}' needs exactly one example: an image, an id "
                "or a word"
            )
        if self.id is not None and not 0 <= self.id < 1 << 63:
            raise UsageError(f"an id must be between 0 and {(1 << 63) - 1}")
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise UsageError(f"a term's weight must be a positive finite number, not {self.weight}")

    @property
    def example(self) -> str:
        """The example as the result's title shows it."""
        if self.id is not None:
            where = f" of '{self.id_condition}'" if self.id_condition else ""
            return f"id {self.id}{where}"
        if self.word is not None:
            return repr(self.word)
        return self.label or "image"

    def key(self) -> tuple[object, ...]:
        """What makes two terms the same example (for conflicts between polarities)."""
        example: object = self.id if self.id is not None else self.word
        if example is None:
            example = id(self.image if self.image is not None else self.vector)
        return (self.condition, example, self.id_condition if self.id is not None else None)

    def to_json(self) -> dict[str, object]:
        found: dict[str, object] = {
            "condition": self.condition,
            "polarity": "positive" if self.positive else "negative",
            "weight": self.weight,
            "example": self.example,
        }
        return found


def check_terms(terms: Sequence[Term]) -> None:
    """UsageError for a bad term, a query with no positive term, or one example both more
    and less wanted under one condition."""
    for term in terms:
        term.check()
    if terms and not any(t.positive for t in terms):
        raise UsageError(
            "a query needs at least one positive example: negatives alone say only what is not "
            "wanted"
        )
    polarity: dict[tuple[object, ...], bool] = {}
    for term in terms:
        key = term.key()
        if polarity.setdefault(key, term.positive) != term.positive:
            raise UsageError(
                f"conflicting terms: {term.example} is both a positive and a negative example "
                f"under '{term.condition}'"
            )


def term_conditions(terms: Sequence[Term]) -> tuple[str, ...]:
    """The terms' conditions in the order they first appear."""
    return tuple(dict.fromkeys(t.condition for t in terms))


def condition_query(
    examples: Sequence[tuple[np.ndarray, Term]], negative_scale: float = NEGATIVE_SCALE
) -> np.ndarray:
    """q_c: the weighted mean of the positive examples' vectors minus `negative_scale` times
    the weighted mean of the negative ones' (float64). An example's vector is a unit vector
    (an image's) or a mean of unit vectors (a word's), so x . q_c is the rule's score."""
    query = np.zeros(len(examples[0][0]), dtype=np.float64)
    for positive, scale in ((True, 1.0), (False, -negative_scale)):
        side = [(v, t.weight) for v, t in examples if t.positive == positive]
        if side:
            vectors = np.stack([v for v, _ in side]).astype(np.float64)
            weights = np.asarray([w for _, w in side], dtype=np.float64)
            query += scale * (weights @ vectors) / weights.sum()
    return query


@dataclass(frozen=True)
class ComposedQuery:
    """Per searched condition: the direction searched (unit), its weight in the ranking
    (w_c |q_c|), and |q_c| (a hit's cosine to the direction times it is s_c)."""

    directions: list[np.ndarray]
    weights: tuple[float, ...]
    norms: tuple[float, ...]
    condition_weights: tuple[float, ...]

    def rescaled(self, ranked: Sequence[Ranked]) -> list[Ranked]:
        """Rankings as the rule scores them: s_c per condition, sum_c w_c s_c overall."""
        found = []
        for r in ranked:
            if len(r.scores) != len(self.norms):  # ranked by words alone: nothing to rescale
                found.append(r)
                continue
            scores = tuple(s * n for s, n in zip(r.scores, self.norms, strict=True))
            score = float(sum(w * s for w, s in zip(self.condition_weights, scores, strict=True)))
            found.append(Ranked(r.id, score, scores))
        return found


def compose(
    names: Sequence[str],
    condition_weights: Sequence[float],
    terms: Sequence[Term],
    example_vector: Callable[[Term], np.ndarray],
    negative_scale: float | None = None,
) -> ComposedQuery:
    """The query vectors of conditions `names` (those searched by example, in order) from
    their terms; `example_vector` gives a term's example under its condition; the negative
    scale is NEGATIVE_SCALE unless given."""
    scale = NEGATIVE_SCALE if negative_scale is None else negative_scale
    directions, weights, norms = [], [], []
    for name, weight in zip(names, condition_weights, strict=True):
        mine = [(example_vector(t), t) for t in terms if t.condition == name]
        if not mine:
            raise UsageError(f"condition '{name}' has no example: give it a term or a word")
        query = condition_query(mine, scale)
        norm = float(np.linalg.norm(query))
        if norm < MIN_QUERY_NORM:
            raise UsageError(
                f"conflicting terms: under '{name}' the negative examples cancel the positive ones"
            )
        directions.append((query / norm).astype(np.float32))
        weights.append(weight * norm)
        norms.append(norm)
    return ComposedQuery(directions, tuple(weights), tuple(norms), tuple(condition_weights))
