"""One request's plan: what the searcher decided before ranking (the joined indexes, the
conditions searched by image and by words, the filters' rows, the query's vectors and
weights), and the two steps that follow from it: rank the rows, then turn the ranked rows
into hits (each hit's row, scores, stored answers and current labels).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from dior_search.data.collections import LabelSource
from dior_search.search.catalogue import CollectionIndexes, ConditionIndex
from dior_search.search.filters import Filter, current_row_labels
from dior_search.search.joined import JoinedIndexes, Ranked
from dior_search.search.request import Hit, QueryImage, SearchResult
from dior_search.search.terms import ComposedQuery, Term
from dior_search.search.words import WordCondition, WordRanking, WordScores
from dior_search.store.schema import ANSWER


@dataclass(frozen=True)
class RequestPlan:
    """A request's indexes, query and filters, resolved and checked: what ranking needs."""

    collection: CollectionIndexes
    conditions: tuple[ConditionIndex, ...]
    # The searched conditions' indexes, then those whose answers the filters read.
    joined: JoinedIndexes
    # Positions (in `conditions`) of the conditions searched by image, in order.
    by_image: tuple[int, ...]
    # The conditions asked about in words, with their words' output-head rows.
    word_conditions: tuple[WordCondition, ...]
    # The word asked about under each condition that has one.
    words: dict[str, str]
    filters: tuple[Filter, ...]
    # The label table as read once for this request (filters and hits see the same labels).
    labels_now: LabelSource | None
    # Filters the store decides (one index searched alone), or None.
    pushed: list[tuple[str, str]] | None
    # The first condition's positions the other filters pass, or None (no filter).
    passing: np.ndarray | None
    # Per condition searched by image: the query's vector and its weight.
    vectors: list[np.ndarray] = field(default_factory=list)
    weights: tuple[float, ...] = ()
    query: QueryImage = field(default_factory=QueryImage)
    composed: ComposedQuery | None = None

    def rank(self, k: int) -> tuple[list[Ranked], list[WordScores]]:
        """The top k as image rankings (score and per-image-condition cosines, none where
        nothing is searched by image) and, per hit, its word scores."""
        joined = self.joined
        if self.pushed is not None:
            return joined.search_where(self.vectors[0], k, self.pushed), []
        if not self.word_conditions:
            return joined.search(self.vectors, self.weights, k, self.by_image, self.passing), []
        ranking = WordRanking(joined, self.word_conditions)
        rows = joined.complete if self.passing is None else joined.complete & self.passing
        by_position: dict[int, Ranked] = {}

        def by_similarity(members: np.ndarray, wanted: int) -> list[int]:
            found = joined.search(self.vectors, self.weights, wanted, self.by_image, members)
            positions: list[int] = joined.readers[0].positions([r.id for r in found]).tolist()
            by_position.update(zip(positions, found, strict=True))
            return positions

        order = ranking.rank(rows, k, by_similarity if self.by_image else None)
        scored = ranking.explain(np.asarray(order, dtype=np.int64))
        first_ids = joined.readers[0].ids
        ranked = [
            by_position.get(p, Ranked(int(first_ids[p]), float(sum(s.logprobs)), ()))
            for p, s in zip(order, scored, strict=True)
        ]
        return ranked, scored

    def hits(
        self, ranked: Sequence[Ranked], scored: Sequence[WordScores]
    ) -> tuple[list[Hit], list[str]]:
        """The ranked images as hits: rows from the first condition's index, each condition's
        score (cosine, or log-probability of the word) and stored answer, the labels the label
        table gives now; and the paths it no longer lists."""
        first = self.joined.readers[0]
        rows = first.rows([r.id for r in ranked])
        labels, unlisted = current_row_labels(self.labels_now, rows)
        answers = self.stored_answers(first.positions([r.id for r in ranked]))
        hits = []
        for rank, (r, row, row_labels) in enumerate(zip(ranked, rows, labels, strict=True), 1):
            scores = {
                self.conditions[j].name: s for j, s in zip(self.by_image, r.scores, strict=True)
            }
            scored_by = {}
            if scored:
                explained = scored[rank - 1]
                for word, logprob, how in zip(
                    self.word_conditions, explained.logprobs, explained.scored_by, strict=True
                ):
                    scores[word.name] = logprob
                    scored_by[word.name] = how
            hits.append(
                Hit(
                    rank=rank,
                    id=r.id,
                    score=r.score,
                    scores={c.name: scores[c.name] for c in self.conditions},
                    path=row.path,
                    labels=row_labels,
                    answers={
                        name: str(values[rank - 1])
                        for name, values in answers.items()
                        if values[rank - 1] is not None
                    },
                    scored_by=scored_by,
                )
            )
        return hits, unlisted

    def stored_answers(self, positions: np.ndarray) -> dict[str, np.ndarray]:
        """Per searched condition whose index stores answers, the answers at `positions`."""
        joined = self.joined
        return {
            c.name: joined.column(j, ANSWER)[positions]
            for j, c in enumerate(self.conditions)
            if ANSWER in joined.readers[j].column_names()
        }

    def result(
        self,
        ranked: Sequence[Ranked],
        scored: Sequence[WordScores],
        terms: tuple[Term, ...],
        hidden: int,
    ) -> SearchResult:
        """The request's answer: the ranked rows as hits (a composed query's rankings and
        weights as its rule scores them)."""
        weights = self.weights
        if self.composed is not None:
            ranked, weights = self.composed.rescaled(ranked), self.composed.condition_weights
        hits, unlisted = self.hits(ranked, scored)
        return SearchResult(
            self.collection,
            self.conditions,
            weights,
            self.query,
            hits,
            self.words,
            self.filters,
            tuple(unlisted),
            terms,
            hidden,
        )
