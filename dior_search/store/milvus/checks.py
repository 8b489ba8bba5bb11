"""What a Milvus store checks of an index when it opens it, since Milvus keeps no checksum a
client can read (Milvus Lite's segments are Snappy-compressed Parquet, which detects no
flipped byte, beside a copy of the vectors that searches read).

- Every row carries `dior_check`, a hash of its id, unit vector, norm and other columns as
  written; a reader recomputes it for every row it reads, and checks that each vector is
  finite and of unit length (rows written before the check existed get only the latter).
- The live row count is the manifest's (store.milvus.writer).
- An exact (FLAT) index is searched with a few probe vectors for every row's score, which
  must be what the rows' checked vectors give: a vector damaged in the copy that searches
  read is found too.

A damaged index is refused with one line (IndexStoreError), as a folder whose checksums do
not match.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dior_search.errors import IndexStoreError

CHECK_FIELD = "dior_check"
# Fields a row's check does not cover as columns: the id, vector and norm enter it as bytes.
NOT_COLUMNS = frozenset({"id", "vector", "norm", CHECK_FIELD})
# How far a stored unit vector's length may be from 1 (float32 rounding is about 1e-7).
UNIT_TOLERANCE = 1e-3
# Probe searches of an exact index: how many probe vectors, and how far a score the
# database gives may be from the one the row's checked vector gives.
PROBES = 2
SCORE_TOLERANCE = 1e-4


def row_check(row_id: int, unit: np.ndarray, norm: float, columns: dict[str, Any]) -> str:
    """The check of one row as written: its id, float32 unit vector and norm, and its other
    columns (canonical JSON)."""
    digest = hashlib.sha256()
    digest.update(int(row_id).to_bytes(8, "little", signed=True))
    digest.update(np.ascontiguousarray(unit, dtype=np.float32).tobytes())
    digest.update(np.float32(norm).tobytes())
    kept = {k: v for k, v in columns.items() if k not in NOT_COLUMNS}
    digest.update(json.dumps(kept, sort_keys=True, ensure_ascii=False).encode("utf-8"))
    return digest.hexdigest()[:32]


def damaged(location: object, what: str) -> IndexStoreError:
    return IndexStoreError(
        f"index {location} is damaged: {what} (rebuild it: delete it and run index again)"
    )


def verify_rows(location: object, rows: Sequence[dict[str, Any]], dim: int) -> None:
    """Each row's vector finite, of unit length and `dim` long, its norm finite, and its
    check (where it has one) what its fields give; IndexStoreError naming the first row
    that is not."""
    for row in rows:
        row_id = int(row["id"])
        vector = np.asarray(row.get("vector"), dtype=np.float32)
        if vector.shape != (dim,) or not np.isfinite(vector).all():
            raise damaged(location, f"row {row_id} holds no finite vector of {dim} numbers")
        length = float(np.linalg.norm(vector))
        if abs(length - 1.0) > UNIT_TOLERANCE:
            raise damaged(location, f"row {row_id}'s vector has length {length:.6g}, not 1")
        norm = row.get("norm")
        if norm is None or not np.isfinite(norm) or norm < 0:
            raise damaged(location, f"row {row_id} has no valid norm")
        stored = row.get(CHECK_FIELD)
        if stored is not None and stored != row_check(row_id, vector, norm, row):
            raise damaged(location, f"row {row_id} is not as it was written (its check differs)")


Search = Callable[[np.ndarray, int, str], tuple[np.ndarray, np.ndarray]]


def verify_scores(
    location: object,
    ids: np.ndarray,
    vectors: np.ndarray,
    search: Search,
    max_limit: int,
    seed: int,
) -> None:
    """Search an exact index with probe vectors for every row (`search(queries, limit,
    expression)` gives scores and ids), block by block of ids: each row must come back with
    the score its checked vector gives (ids ascending, `vectors` in their order)."""
    probes = np.random.default_rng(seed).standard_normal((PROBES, vectors.shape[1]))
    probes = (probes / np.linalg.norm(probes, axis=1, keepdims=True)).astype(np.float32)
    wanted = probes @ vectors.T
    for low in range(0, len(ids), max_limit):
        block = ids[low : low + max_limit]
        expression = f"id >= {int(block[0])} and id <= {int(block[-1])}"
        scores, found = search(probes, len(block), expression)
        for probe in range(PROBES):
            got = dict(zip(found[probe].tolist(), scores[probe].tolist(), strict=True))
            for position, row_id in enumerate(block.tolist(), start=low):
                score = got.get(row_id)
                if score is None or abs(score - wanted[probe, position]) > SCORE_TOLERANCE:
                    raise damaged(location, f"the database's copy of row {row_id}'s vector differs")
