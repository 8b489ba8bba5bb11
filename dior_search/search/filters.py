"""Filters (`--where`): which images a query may return, by the model's answers or by labels.

One syntax, two kinds:

- `CONDITION=WORD`: the image's stored answer under CONDITION (that condition's index, joined
  on content hash) is WORD, compared as answers are stored (lower case, quotes and punctuation
  stripped);
- `label:NAME=VALUE`: the collection's label NAME of the image is VALUE, exactly.

Several filters must all hold. Labels are the collection's as its label table says now
(`current_row_labels`: what query results show too), or, for a collection without a table,
those stored beside the vectors.

Where one index decides every filter (one condition searched by image, its own answers, and
labels stored beside its vectors: no label table), the filters go to its store as column
equalities (`store_filter`, `Reader.search_where`; a Milvus store makes them a filter
expression). Otherwise the search layer turns them into a mask over the first condition's
rows (`passing_rows`), which the stores receive as allowed ids per searched index.

A request holds at most MAX_FILTERS filters; the labels they compare are read once per
request (`RowLabels`), and the request's deadline is checked between filters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from dior_search.data.collections import LabelSource
from dior_search.errors import UsageError
from dior_search.models.answers import normalize_word
from dior_search.search.deadline import check_deadline
from dior_search.search.joined import JoinedIndexes
from dior_search.store.backend import Reader
from dior_search.store.schema import ANSWER, Row
from dior_search.store.schema import LABEL_PREFIX as LABEL_COLUMN

LABEL_PREFIX = "label:"
# Filters one request may give: each is a pass over every row, and a handful is all a search
# needs (the server's JSON body would hold tens of thousands).
MAX_FILTERS = 64

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
    if kind == "answer" and len(value.split()) > 1:  # an answer is one word: never matched
        raise UsageError(
            f"--where {text!r}: the answer after '=' is one word (the model answers in one), "
            f"not {len(value.split())}"
        )
    return Filter(kind, name, value)


def parse_filters(texts: Sequence[str]) -> tuple[Filter, ...]:
    """The filters of a request, repeats dropped; UsageError over MAX_FILTERS of them."""
    if len(texts) > MAX_FILTERS:
        raise UsageError(f"{len(texts)} filters (--where) is over the limit of {MAX_FILTERS}")
    return tuple(dict.fromkeys(parse_filter(text) for text in texts))


def current_row_labels(
    source: LabelSource | None, rows: Sequence[Row]
) -> tuple[list[dict[str, str]], list[str]]:
    """Each row's labels as the collection's label table says now (`source`, from
    `current_labels`; not as stored when it was indexed), and the paths the table no longer
    lists (their labels: none). A collection without a label table (an image folder, `source`
    None) keeps the stored labels."""
    if source is None:
        return [row.labels for row in rows], []
    found = [source.labels(row.path) for row in rows]
    unlisted = [row.path for row, labels in zip(rows, found, strict=True) if labels is None]
    return [labels or {} for labels in found], unlisted


@dataclass
class RowLabels:
    """The labels of every row of one index (in id order), read once for one request, from
    the same source as `current_row_labels` (the label table now, else those stored): what
    label filters compare, so they agree with the labels results show."""

    reader: Reader
    source: LabelSource | None
    _table_rows: list[dict[str, str]] | None = None
    _names: list[str] | None = None
    _values: dict[str, np.ndarray] = field(default_factory=dict)

    def table_rows(self) -> list[dict[str, str]]:
        if self._table_rows is None:
            source = self.source
            listed = [source.labels(p) if source else None for p in self.reader.paths()]
            self._table_rows = [labels or {} for labels in listed]
        return self._table_rows

    def names(self) -> list[str]:
        """The labels a filter may name: the label table's, else those stored."""
        if self._names is None:
            if self.source is None:
                self._names = self.reader.label_names()
            else:
                self._names = sorted({name for row in self.table_rows() for name in row})
        return self._names

    def values(self, where: Filter) -> np.ndarray:
        """Label `where.name` of every row; UsageError, listing the labels there are, unless
        the index has that label."""
        names = self.names()
        if where.name not in names:
            valid = ", ".join(names) or "none: an image folder has no labels"
            raise UsageError(f"--where {where}: no label {where.name!r}; labels: {valid}")
        found = self._values.get(where.name)
        if found is None:
            if self.source is None:
                listed: list[str | None] = self.reader.labels(where.name)
            else:
                listed = [row.get(where.name) for row in self.table_rows()]
            found = self._values[where.name] = np.asarray(listed, dtype=object)
        return found


def store_filter(
    joined: JoinedIndexes, filters: Sequence[Filter], source: LabelSource | None
) -> list[tuple[str, str]] | None:
    """The filters as equalities of the first index's columns (its answers, its stored
    labels) for its store to decide (`Reader.search_where`), when that index alone decides
    them all; None where one needs another index's answers or the label table (the labels
    stored beside the vectors are then not the current ones): `passing_rows` then."""
    if len(joined.readers) != 1:
        return None
    first = joined.readers[0]
    condition = str(first.manifest.condition["name"])
    labels = RowLabels(first, source)
    equals = []
    for where in filters:
        if where.kind == "answer":
            if where.name != condition:
                return None
            equals.append((ANSWER, where.value))
        else:
            if source is not None:
                return None
            if where.name not in labels.names():
                labels.values(where)  # the UsageError listing the labels there are
            equals.append((LABEL_COLUMN + where.name, where.value))
    return equals


def passing_rows(
    joined: JoinedIndexes,
    filters: Sequence[Filter],
    answer_readers: dict[str, int],
    source: LabelSource | None,
    deadline: float | None = None,
) -> np.ndarray:
    """Which first-condition positions pass every filter (and are in every joined index).

    `answer_readers`: the joined index (its position) holding each answer filter's condition;
    `source`: the collection's labels now (`current_labels`), which label filters read;
    `deadline`: checked before each filter (DeadlineExceeded once it has passed).
    """
    passing: np.ndarray = joined.complete.copy()
    labels = RowLabels(joined.readers[0], source)
    # Each index's answers, read once for all the filters on them.
    answers: dict[int, np.ndarray] = {}
    for where in filters:
        check_deadline(deadline, "filtering")
        if where.kind == "label":
            values = labels.values(where)
        else:
            j = answer_readers[where.name]
            if j not in answers:
                answers[j] = joined.column(j, ANSWER)
            values = answers[j]
        passing &= values == where.value
    return passing
