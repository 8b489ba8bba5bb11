"""A row as a Milvus collection keeps it, and filter expressions over rows (mirrors
store.shards of the folder store: what a row's stored columns are)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dior_search.data.paths import from_bytes, is_text, name_bytes, readable
from dior_search.models.answers import Answer
from dior_search.store.milvus.types import (
    NAME,
)
from dior_search.store.schema import (
    ANSWER,
    ANSWER_LOGPROB,
    LOG_PARTITION,
    PATH_BYTES,
    Row,
)

FIXED_FIELDS = ("id", "path", "content_hash", "norm")
MAX_PATH = 65_535
# What a string literal of an expression escapes (Milvus reads no other escape).
STRING_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def database_columns(row: Row) -> dict[str, Any]:
    """A row's columns as the database keeps them: a path that is not UTF-8 (Milvus takes only
    text) readable in `path`, its exact bytes in hex in `path_bytes`."""
    columns = row.scalar_columns()
    if not is_text(row.path):
        columns["path"] = readable(row.path)
        columns[PATH_BYTES] = name_bytes(row.path).hex()
    return columns


def answer_columns(answer: Answer | None) -> dict[str, Any]:
    """A row's answer as the columns a folder's table has (none without an answer)."""
    if answer is None:
        return {}
    return {
        ANSWER: answer.word,
        ANSWER_LOGPROB: answer.logprob,
        LOG_PARTITION: answer.log_partition,
    }


def stored_answer(row: dict[str, Any]) -> Answer | None:
    """The answer a stored row carries (None: it has none)."""
    if row.get(ANSWER) is None:
        return None
    return Answer(str(row[ANSWER]), float(row[ANSWER_LOGPROB]), float(row[LOG_PARTITION]))


def exact_path(row: dict[str, Any]) -> str:
    """A stored row's path as this package holds it (see database_columns)."""
    raw = row.get(PATH_BYTES)
    return str(row["path"]) if raw is None else from_bytes(bytes.fromhex(raw))


def string_literal(value: str) -> str:
    r"""`value` as a string literal of a Milvus expression: quotes, backslashes and line
    breaks escaped (the only escapes Milvus reads), so whatever a user wrote stays one value
    and never changes the expression.

    >>> print(string_literal('red" or id >= 0 or answer == "x'))
    "red\" or id >= 0 or answer == \"x"
    >>> print(string_literal("a\\b\nc"))
    "a\\b\nc"
    """
    return '"' + "".join(STRING_ESCAPES.get(char, char) for char in value) + '"'


def fields_expression(equals: Sequence[tuple[str, str]]) -> str | None:
    """A Milvus expression: every field equal to its value; None where a field's name is not
    one an expression can name as it is (label names may hold any character).

    >>> fields_expression([("answer", "red"), ("label_shape", "circle")])
    'answer == "red" and label_shape == "circle"'
    """
    if not all(NAME.fullmatch(name) for name, _ in equals):
        return None
    return " and ".join(f"{name} == {string_literal(value)}" for name, value in equals)
