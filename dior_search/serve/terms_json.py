"""A composed query's terms in the JSON API (`POST /api/query` with `"terms"`).

Each term is an object:

    {"condition": "pattern", "upload": "<64 hex>" | "id": 12 | "word": "red",
     "id_condition": "color",        (optional: the index `id` is from; default its condition)
     "polarity": "positive" | "negative",     (default positive)
     "weight": 1.0}                           (default 1)

An upload is one `/api/uploads` returned (its embedding under each condition is computed once
and kept with it); a word is one of the condition's stored answers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from dior_search.errors import UsageError
from dior_search.search.terms import Term
from dior_search.serve.service import SearchService

TERM_FIELDS = ("condition", "upload", "id", "id_condition", "word", "polarity", "weight")
# A page sends a handful; feedback marks add one per marked card and condition.
MAX_TERMS = 256


@dataclass(frozen=True)
class TermField:
    """A term as sent: its upload not yet looked up."""

    term: Term
    upload: str | None = None


def is_hex_digest(value: Any) -> bool:
    return (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )


def parse_term(fields: Any) -> TermField:
    """One term from its JSON object; UsageError naming what is wrong."""
    if not isinstance(fields, dict):
        raise UsageError("each term must be an object with a condition and an example")
    unknown = sorted(set(fields) - set(TERM_FIELDS))
    if unknown:
        raise UsageError(f"unknown term field '{unknown[0]}'; valid: {', '.join(TERM_FIELDS)}")
    condition = fields.get("condition")
    if not isinstance(condition, str) or not condition:
        raise UsageError("a term's condition must be a condition name")
    examples = [name for name in ("upload", "id", "word") if fields.get(name) is not None]
    if len(examples) != 1:
        raise UsageError(
            f"a term under '{condition}' needs exactly one example: upload, id or word"
        )
    polarity = fields.get("polarity", "positive")
    if polarity not in ("positive", "negative"):
        raise UsageError("a term's polarity must be 'positive' or 'negative'")
    weight = fields.get("weight", 1.0)
    if not (
        isinstance(weight, int | float)
        and not isinstance(weight, bool)
        and abs(weight) <= 1e300
        and math.isfinite(weight)
        and weight > 0
    ):
        raise UsageError("a term's weight must be a positive finite number")
    upload, row_id, word = fields.get("upload"), fields.get("id"), fields.get("word")
    if upload is not None and not is_hex_digest(upload):
        raise UsageError("a term's upload must be the 64-hex-digit id that /api/uploads returned")
    if row_id is not None and not (
        isinstance(row_id, int) and not isinstance(row_id, bool) and row_id >= 0
    ):
        raise UsageError("a term's id must be a non-negative integer")
    if word is not None and not isinstance(word, str):
        raise UsageError("a term's word must be a string")
    id_condition = fields.get("id_condition")
    if id_condition is not None and not isinstance(id_condition, str):
        raise UsageError("a term's id_condition must be a condition name")
    term = Term(
        condition,
        id=row_id,
        id_condition=id_condition,
        word=word,
        positive=polarity == "positive",
        weight=float(weight),
        # Stands in for the upload's vector until it is looked up (see resolve_terms).
        label=f"upload {upload[:12]}" if upload else None,
    )
    return TermField(term, upload)


def parse_terms(value: Any) -> list[TermField]:
    """The `terms` field: a non-empty list of term objects."""
    if not isinstance(value, list) or not value:
        raise UsageError("terms must be a non-empty list of term objects")
    if len(value) > MAX_TERMS:
        raise UsageError(f"a query takes at most {MAX_TERMS} terms")
    return [parse_term(t) for t in value]


def resolve_terms(
    service: SearchService,
    collection_name: str | None,
    fields: Sequence[TermField],
    deadline: float,
) -> tuple[Term, ...]:
    """The terms with each upload's embedding under its condition (computed once per upload
    and condition, kept with the upload); NotFound for an upload that expired."""
    searcher = service.searcher
    collection = searcher.collection(collection_name)
    texts: dict[str, list[str | None]] = {}
    for field in fields:
        if field.upload is not None:
            text = searcher.condition(collection, field.term.condition).text
            texts.setdefault(field.upload, []).append(text)
    vectors = {}
    for upload, wanted in texts.items():
        # One model call per upload, for all the conditions it is an example under.
        found = service.upload_vectors(service.held_upload(upload), wanted, deadline)
        vectors.update({(upload, t): v for t, v in zip(wanted, found, strict=True)})
    terms = []
    for field in fields:
        term = field.term
        if field.upload is not None:
            text = searcher.condition(collection, term.condition).text
            term = replace(term, vector=vectors[field.upload, text])
        terms.append(term)
    return tuple(terms)


def parse_distinct(value: Any) -> float | None:
    """The `distinct` field: a similarity, or null."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or abs(value) > 1e300:
        raise UsageError("distinct must be a similarity between -1 and 1")
    return float(value)
