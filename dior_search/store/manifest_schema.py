"""Every field a manifest may hold, with its type and range: checked on every read.

The schema is data: one line per field (a new field is one more line). `check_fields` walks a
parsed manifest against it and names the first field that is missing, unknown, of the wrong
type or out of range, so a damaged manifest is refused with one line instead of failing later
with a traceback or, worse, answering queries with the wrong prompt or vectors.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dior_search import defaults
from dior_search.models.embedder import ANSWER_STATES
from dior_search.models.methods import METHODS
from dior_search.models.prompts import PROMPT_TEMPLATES
from dior_search.models.settings import DTYPE_NAMES, POSITION_SCHEMES, SOURCES

MAX_ID = defaults.MAX_STORED_INT
SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Field:
    """One field: its JSON type, and what else a valid value satisfies."""

    kind: type | tuple[type, ...]
    low: int | None = None
    high: int | None = None
    choices: tuple[Any, ...] | None = None
    pattern: re.Pattern[str] | None = None
    # A nested object's fields, or the fields of each object in a list.
    fields: Mapping[str, Field] | None = None
    # May be absent: added after the first release, or written only by some methods.
    optional: bool = False
    nullable: bool = False
    # Strings only: the empty string is valid.
    empty: bool = False

    def describe(self) -> str:
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        names = {str: "a string", int: "an integer", bool: "true or false", dict: "an object"}
        text = " or ".join(names.get(k, "a list") for k in kinds)
        if self.choices is not None:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.pattern is not None:
            text += (
                " of 64 hex digits" if self.pattern is SHA256 else f" like {self.pattern.pattern}"
            )
        high = None if self.high == MAX_ID else self.high  # the int64 bound goes unsaid
        if self.low is not None and high is not None:
            text += f" from {self.low} to {high}"
        elif self.low is not None:
            text += f" >= {self.low}"
        elif high is not None:
            text += f" <= {high}"
        return text + (" or null" if self.nullable else "")


def text(**more: Any) -> Field:
    return Field(str, **more)


def integer(low: int | None = None, high: int | None = MAX_ID, **more: Any) -> Field:
    return Field(int, low=low, high=high, **more)


def sha256(**more: Any) -> Field:
    return Field(str, pattern=SHA256, **more)


def one_of(*choices: Any, **more: Any) -> Field:
    kinds = tuple({type(c) for c in choices})
    return Field(kinds[0] if len(kinds) == 1 else kinds, choices=choices, **more)


def flag(**more: Any) -> Field:
    return Field(bool, **more)


def obj(fields: Mapping[str, Field], **more: Any) -> Field:
    return Field(dict, fields=fields, **more)


def list_of(fields: Mapping[str, Field], **more: Any) -> Field:
    return Field(list, fields=fields, **more)


# The embedder description: `method`, the settings of every method (each method writes its
# own), and what the loaded model turned out to be.
EMBEDDER_FIELDS: dict[str, Field] = {
    "method": one_of(*METHODS),
    "model": text(),
    "revision": text(nullable=True),
    "dtype": one_of(*DTYPE_NAMES),
    "device": text(),
    "max_side": integer(1, nullable=True),
    "batch_size": integer(1),
    "trust_remote_code": flag(),
    "template": one_of(*PROMPT_TEMPLATES, optional=True),
    "layer": integer(-(1 << 20), 1 << 20, optional=True),
    "position_scheme": one_of(*POSITION_SCHEMES, optional=True),
    # DIOR's source (absent: written before sources existed, the last input token).
    "source": one_of(*SOURCES, optional=True),
    # DIOR's prompt token, from the end (absent: written before it existed, the last one).
    "num_token": integer(-(1 << 20), -1, optional=True),
    "max_pixels": integer(1, optional=True, nullable=True),
    "prefix_reuse": flag(optional=True),
    "text_encoder": text(optional=True),
    "text_encoder_revision": text(optional=True, nullable=True),
    "max_new_tokens": integer(1, optional=True),
    "encode_prompt": flag(optional=True),
    "components": integer(1, optional=True),
    "model_type": text(),
    "commit": text(nullable=True),
    "weights_fingerprint": text(),
    "dim": integer(1, 1 << 24),
    "image_size_policy": Field(dict, optional=True),
    "text_encoder_commit": text(optional=True, nullable=True),
    "text_encoder_fingerprint": text(optional=True, nullable=True),
}

SHARD_FIELDS: dict[str, Field] = {
    "name": text(pattern=re.compile(r"shard-[0-9]{5,}")),
    "rows": integer(0),
    "first_id": integer(0),
    "last_id": integer(-1, optional=True),
    "faiss_sha256": sha256(),
    "parquet_sha256": sha256(),
    "index_type": text(optional=True),
    # Format 2: rows deleted since the shard was written, and the file of their ids.
    "deleted": integer(0, optional=True),
    "tombstones": text(
        pattern=re.compile(r"(shard-[0-9]{5,}\.deleted-[0-9]+\.parquet)?"),
        optional=True,
        empty=True,
    ),
    "tombstones_sha256": text(pattern=re.compile(r"([0-9a-f]{64})?"), optional=True, empty=True),
}

TRAINED_FIELDS: dict[str, Field] = {
    "name": text(pattern=re.compile(r"trained\.faiss")),
    "sha256": sha256(),
    "train_size": integer(0),
    "seed": integer(-MAX_ID - 1),
    "bytes_per_vector": integer(0),
}

DATABASE_FIELDS: dict[str, Field] = {
    "kind": one_of("milvus"),
    "rows": integer(0),
}

MANIFEST_FIELDS: dict[str, Field] = {
    "format_version": integer(1, 2),
    "tool_version": text(),
    "created": text(empty=True),
    "updated": text(empty=True),
    "collection": obj({"name": text(), "root": text()}),
    "condition": obj({"name": text(), "text": text(nullable=True)}),
    "prompt": text(nullable=True),
    "embedder": obj(EMBEDDER_FIELDS),
    "dim": integer(1, 1 << 24),
    "index_type": text(),
    "metric": one_of("inner_product"),
    "normalized": one_of(True),
    "shard_size": integer(1),
    "shards": list_of(SHARD_FIELDS),
    "index_spec": text(optional=True, empty=True),
    "memory_budget": integer(1, optional=True),
    "search_params": text(optional=True, empty=True),
    "packed_shard_size": integer(0, optional=True),
    "trained": obj(TRAINED_FIELDS, optional=True, nullable=True),
    # Format 2: commits so far, and the next shard number and row id never used yet.
    "generation": integer(0, optional=True),
    "next_shard": integer(0, optional=True),
    "next_row_id": integer(0, optional=True),
    # An index kept in a database (store.milvus): its kind and live rows as of the last commit.
    "database": obj(DATABASE_FIELDS, optional=True),
    # Whether the rows carry the model's answers (absent: written before answers existed).
    "answers": one_of(*ANSWER_STATES, optional=True),
    # sha256 of the other fields (see manifest.content_checksum); absent before it was added.
    "checksum": sha256(optional=True),
}


class SchemaError(ValueError):
    """A field that is missing, unknown, of the wrong type or out of range."""


def check_fields(data: Any, fields: Mapping[str, Field], where: str = "") -> None:
    """Check an object against `fields`; SchemaError naming the first bad field."""
    if not isinstance(data, dict):
        raise SchemaError(f"{where or 'the manifest'} must be an object")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise SchemaError(f"unknown field {where}{unknown[0]!r}")
    for name, field in fields.items():
        if name not in data:
            if not field.optional:
                raise SchemaError(f"missing field {where}{name!r}")
            continue
        check_value(data[name], field, f"{where}{name}")


def check_value(value: Any, field: Field, where: str) -> None:
    if value is None and field.nullable:
        return
    kinds = field.kind if isinstance(field.kind, tuple) else (field.kind,)
    # JSON true/false are Python bools, which are ints too: never let one pass for the other.
    wrong_type = isinstance(value, bool) != (bool in kinds) or not isinstance(value, kinds)
    bad = (
        wrong_type
        or (field.choices is not None and value not in field.choices)
        or (isinstance(value, str) and not value and not field.empty)
        or (field.pattern is not None and not field.pattern.fullmatch(str(value)))
        or (field.low is not None and value < field.low)
        or (field.high is not None and value > field.high)
    )
    if bad:
        raise SchemaError(f"field {where!r} must be {field.describe()}, got {shorten(value)}")
    if field.fields is not None and isinstance(value, dict):
        check_fields(value, field.fields, f"{where}.")
    elif field.fields is not None and isinstance(value, list):
        for number, item in enumerate(value):
            check_fields(item, field.fields, f"{where}[{number}].")


def shorten(value: Any, limit: int = 60) -> str:
    shown = repr(value)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."
