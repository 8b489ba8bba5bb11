"""Facets: the model's answers under a condition, with how many images gave each.

For a labelled collection they sit beside its labels; for an unlabelled folder they are its
automatic tags (what the model says each image's colour, season, ... is). Counted over the
images that pass the query's filters, so a page can show counts that follow its filters.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from dior_search.search.joined import JoinedIndexes
from dior_search.store.schema import ANSWER


@dataclass(frozen=True)
class Facets:
    """Answers under one condition and their counts, most frequent first (ties by answer)."""

    collection: str
    condition: str
    # Images counted (those passing the filters), and those whose answer was empty.
    images: int
    unanswered: int
    counts: list[tuple[str, int]]
    # Distinct answers in all (`counts` may hold only the top ones).
    distinct: int

    def to_json(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "condition": self.condition,
            "images": self.images,
            "unanswered": self.unanswered,
            "distinct": self.distinct,
            "answers": [{"answer": answer, "count": count} for answer, count in self.counts],
        }


def count_answers(
    joined: JoinedIndexes, position: int, passing: np.ndarray, top: int | None
) -> tuple[int, int, list[tuple[str, int]], int]:
    """(images counted, unanswered, the `top` answers with counts, distinct answers) of joined
    index `position` over the first-condition rows `passing`."""
    answers = joined.column(position, ANSWER)[passing]
    counted = Counter(a for a in answers.tolist() if a)
    ranked = sorted(counted.items(), key=lambda item: (-item[1], item[0]))
    shown = ranked if top is None else ranked[:top]
    return len(answers), len(answers) - sum(counted.values()), shown, len(counted)
