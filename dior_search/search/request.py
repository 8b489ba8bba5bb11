"""What a search is asked and what it answers: `SearchRequest` (with the checks that need no
index, the one home of the rules the CLI and the server apply before a search), the options a
searcher runs with, and `SearchResult` with its `Hit`s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dior_search import defaults
from dior_search.errors import UsageError
from dior_search.search.catalogue import CollectionIndexes, ConditionIndex
from dior_search.search.distinct import check_distinct
from dior_search.search.filters import Filter
from dior_search.search.terms import Term, term_conditions
from dior_search.store.stores import SearchParams

# Bounds on numbers a request gives: ids are int64, and k beyond a million is no search.
MAX_ID = (1 << 63) - 1
MAX_RESULTS = 1_000_000


def check_k(k: int, max_k: int = MAX_RESULTS) -> None:
    """UsageError unless 1 <= k <= max_k."""
    if not 1 <= k <= max_k:
        raise UsageError(f"k must be between 1 and {max_k}")


@dataclass(frozen=True)
class Wording:
    """How a front end names a request's query in the errors the checks raise (the CLI says
    IMAGE and --id, the server upload and id); the rules are the same."""

    # Not exactly one query (image, vectors or id) where a condition is searched by image.
    one_query: str = "give a query image or an id (one of them)"
    # A query given where every condition is asked about in words.
    words_only: str = (
        "every condition has a word to ask about: give no image or id (or a condition "
        "without a word to search by the image)"
    )
    # A query given beside a composed query's terms.
    terms_alone: str = "conflicting terms: give the examples as terms, with no separate image or id"


@dataclass(frozen=True)
class SearchOptions:
    """How the model runs and how indexes are searched; none of it changes the vectors."""

    device: str = "auto"
    # None: the dtype the indexes were built with.
    dtype: str | None = None
    trust_remote_code: bool = False
    # Over each index's own (parsed and range-checked when made: see store.stores).
    search_params: SearchParams = field(default_factory=SearchParams)
    mmap: bool | None = None
    # The most results one request may ask for (None: MAX_RESULTS).
    max_k: int | None = None


@dataclass(frozen=True)
class SearchRequest:
    """What to search for: under each condition, a word to ask the model about, or (for the
    conditions without one) exactly one of an image, its vectors, or an indexed image's id."""

    conditions: tuple[str, ...] = ()
    # None: the searcher's only collection.
    collection: str | None = None
    # One per condition searched by image (those without a word).
    weights: tuple[float, ...] | None = None
    k: int = defaults.DEFAULT_K
    image: Image.Image | None = None
    # The query already embedded under each condition without a word (e.g. a cached upload).
    vectors: tuple[np.ndarray, ...] | None = None
    id: int | None = None
    # The condition whose index `id` is from (None: the first condition).
    id_condition: str | None = None
    # Per condition, a word to rank by the model's answers (None: ranked by the image).
    words: tuple[str | None, ...] | None = None
    # Filters: `CONDITION=WORD` (an answer) or `label:NAME=VALUE` (see search.filters).
    where: tuple[str, ...] = ()
    # A composed query (search.terms): examples, positive or negative, per condition; then
    # no image, vectors or id. The single-image query is one positive term per condition.
    terms: tuple[Term, ...] = ()
    # Hide a hit whose similarity to a better-ranked one is at least this (near-copies).
    distinct: float | None = None

    def word_of(self, position: int) -> str | None:
        return None if self.words is None else self.words[position]

    @property
    def searched_conditions(self) -> tuple[str, ...]:
        """The conditions named, or (none named) those of the terms in order."""
        return self.conditions or term_conditions(self.terms)

    @property
    def by_image(self) -> int:
        """How many of the searched conditions are searched by image (have no word)."""
        return sum(self.word_of(i) is None for i in range(len(self.searched_conditions)))

    def check(self, max_k: int = MAX_RESULTS, wording: Wording = Wording()) -> None:
        """UsageError for a request no index could answer: no condition or a repeated one,
        words that do not pair with the conditions, k or an id out of range, a bad distinct
        threshold, and not exactly one query where a condition is searched by image. What
        needs the indexes (names, the terms' examples) the searcher checks."""
        names = self.searched_conditions
        if not names:
            raise UsageError("give at least one condition")
        if len(set(names)) != len(names):
            raise UsageError(f"a condition is repeated in {list(names)}")
        if self.words is not None and len(self.words) != len(names):
            raise UsageError("give one word (or none) per condition")
        check_k(self.k, max_k)
        if self.id is not None and not 0 <= self.id <= MAX_ID:
            raise UsageError(f"an id must be between 0 and {MAX_ID}")
        check_distinct(self.distinct)
        given = [self.image is not None, self.vectors is not None, self.id is not None]
        check_query_given(self.by_image > 0, sum(given), bool(self.terms), wording)
        if not self.terms and self.vectors is not None and len(self.vectors) != self.by_image:
            raise UsageError("give one query vector per condition searched by image")


def check_query_given(
    by_image: bool, given: int, composed: bool, wording: Wording = Wording()
) -> None:
    """UsageError unless a request gives what its shape needs: a composed one (terms) no
    other query; else exactly one query (image, vectors or id) where a condition is searched
    by image, none where every condition has a word. `given`: how many queries it gives. The
    CLI and the server call it on their own options, before a request is built."""
    if composed:
        if given:
            raise UsageError(wording.terms_alone)
        return
    if by_image and given != 1:
        raise UsageError(wording.one_query)
    if not by_image and given:
        raise UsageError(wording.words_only)


@dataclass(frozen=True)
class Hit:
    """One result; `id` is in the first condition's index."""

    rank: int
    id: int
    score: float
    scores: dict[str, float]
    path: str
    labels: dict[str, str]
    # The model's stored answer under each searched condition that has answers.
    answers: dict[str, str] = field(default_factory=dict)
    # Per condition asked about in words: "answer" (its stored answer is the word) or
    # "first-token" (scored by the word's first token).
    scored_by: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        found = {
            "rank": self.rank,
            "id": self.id,
            "score": self.score,
            "scores": self.scores,
            "path": self.path,
            "labels": self.labels,
            "answers": self.answers,
        }
        if self.scored_by:
            found["scored_by"] = self.scored_by
        return found


@dataclass(frozen=True)
class QueryImage:
    """The indexed image an id query searched with (all None for an image query)."""

    id: int | None = None
    condition: str | None = None
    path: str | None = None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchResult:
    collection: CollectionIndexes
    conditions: tuple[ConditionIndex, ...]
    # One per condition searched by image (those without a word), in order.
    weights: tuple[float, ...]
    query: QueryImage
    hits: list[Hit]
    # The word asked about under each condition that has one.
    words: dict[str, str] = field(default_factory=dict)
    filters: tuple[Filter, ...] = ()
    # Paths of hits that the collection's label table no longer lists (their labels: none).
    unlisted: tuple[str, ...] = ()
    terms: tuple[Term, ...] = ()
    # Near-copies of better-ranked hits left out (`distinct`).
    hidden: int = 0

    @property
    def root(self) -> Path:
        """The folder the hits' paths are relative to."""
        return self.conditions[0].root

    @property
    def title(self) -> str:
        names = [c.name for c in self.conditions if c.name not in self.words]
        parts = [
            f"'{name}'" if len(names) == 1 else f"'{name}' ({w:.2f})"
            for name, w in zip(names, self.weights, strict=True)
        ]
        parts += [f"'{name}' = {word!r}" for name, word in self.words.items()]
        if self.terms:
            parts = [
                f"{'+' if t.positive else '-'}'{t.condition}' {t.example}"
                + (f" ({t.weight:g})" if t.weight != 1 else "")
                for t in self.terms
            ] + [f"'{name}' = {word!r}" for name, word in self.words.items()]
        where = f" where {', '.join(map(str, self.filters))}" if self.filters else ""
        return f"{self.collection.name} under " + " + ".join(parts) + where
