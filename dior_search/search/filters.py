"""Filters (`--where`): which images a query may return, by the model's answers or by labels.

One syntax, two kinds:

- `CONDITION=WORD`: the image's stored answer under CONDITION (that condition's index, joined
  on content hash) is WORD, compared as answers are stored (lower case, quotes and punctuation
  stripped);
- `label:NAME=VALUE`: the collection's label NAME of the image is VALUE, exactly.

Several filters must all hold. The search layer turns them into a mask over the first
condition's rows (`passing`), which the stores receive as allowed ids per searched index.
Labels are read through `label_values` alone, the one place that knows where labels come from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from dior_search.errors import UsageError
from dior_search.models.answers import normalize_word
from dior_search.search.joined import JoinedIndexes
from dior_search.store.reader import IndexReader
from dior_search.store.shards import ANSWER

LABEL_PREFIX = "label:"

FilterKind = Literal["answer", "label"]


@dataclass(frozen=True)
class Filter:
    """One `--where`: an answer under a condition, or a label, equal to a value."""

    kind: FilterKind
    name: str
    value: str

    def __str__(self) -> str:
        prefix = LABEL_PREFIX if self.kind == "label" else ""
        return f"{prefix}{self.name}={self.value}"


def parse_filter(text: str) -> Filter:
    """`CONDITION=WORD` or `label:NAME=VALUE`; UsageError saying the syntax otherwise."""
    kind: FilterKind = "label" if text.startswith(LABEL_PREFIX) else "answer"
    body = text.removeprefix(LABEL_PREFIX) if kind == "label" else text
    name, equals, value = body.rpartition("=")
    if kind == "answer":
        value = normalize_word(value)
    if not equals or not name.strip() or not value.strip():
        raise UsageError(
            f"--where {text!r}: write CONDITION=WORD (the model's answer under a condition) "
            "or label:NAME=VALUE (a label of the collection)"
        )
    return Filter(kind, name, value)


def parse_filters(texts: Sequence[str]) -> tuple[Filter, ...]:
    return tuple(dict.fromkeys(parse_filter(text) for text in texts))


def label_values(reader: IndexReader, name: str) -> list[str | None]:
    """Label `name` of every row of `reader` (in id order): what label filters compare.

    The one place label filters read labels from, so that they always agree with the labels
    that results show.
    """
    return reader.labels(name)


def label_names(reader: IndexReader) -> list[str]:
    return reader.label_names()


def passing_rows(
    joined: JoinedIndexes, filters: Sequence[Filter], answer_readers: dict[str, int]
) -> np.ndarray:
    """Which first-condition positions pass every filter (and are in every joined index).

    `answer_readers`: the joined index (its position) holding each answer filter's condition.
    """
    passing: np.ndarray = joined.complete.copy()
    first = joined.readers[0]
    for where in filters:
        if where.kind == "label":
            names = label_names(first)
            if where.name not in names:
                valid = ", ".join(names) or "none: an image folder has no labels"
                raise UsageError(f"--where {where}: no label {where.name!r}; labels: {valid}")
            values = np.asarray(label_values(first, where.name), dtype=object)
        else:
            values = joined.column(answer_readers[where.name], ANSWER)
        passing &= values == where.value
    return passing
