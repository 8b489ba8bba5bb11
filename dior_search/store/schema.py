"""The row schema every store writes and every layer above reads: the metadata beside a vector
(`Row`), the names of its columns, and the one rule for the vectors themselves (unit length).

Neutral ground: the folder store and the Milvus store both import it, and so do indexing,
search and evaluation, which must not depend on either store's own files.

    id, path, content_hash     every row
    path_bytes                 a name that is not UTF-8, exactly (see data.paths); null elsewhere
    label_<name>               one column per label the collection gives
    answer, answer_logprob,    the model's own answer (see models.answers), where the index
    log_partition              stores answers
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dior_search.data.paths import from_bytes

LABEL_PREFIX = "label_"
PATH_BYTES = "path_bytes"

# The model's own answer for a row (see models.answers), where the index stores answers: the
# normalised word, its log-probability, and logsumexp(W_U h) of the row's raw vector.
ANSWER = "answer"
ANSWER_LOGPROB = "answer_logprob"
LOG_PARTITION = "log_partition"
ANSWER_COLUMNS = (ANSWER, ANSWER_LOGPROB, LOG_PARTITION)


@dataclass(frozen=True)
class Row:
    """Metadata stored beside one vector."""

    path: str
    content_hash: str
    labels: dict[str, str] = field(default_factory=dict)

    def scalar_columns(self) -> dict[str, Any]:
        """The row's columns beside its id, vector and norm, as every store writes them:
        `path`, `content_hash` and `label_<name>` (only the labels it has)."""
        columns: dict[str, Any] = {"path": self.path, "content_hash": self.content_hash}
        for name, value in sorted(self.labels.items()):
            columns[f"{LABEL_PREFIX}{name}"] = value
        return columns


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, so inner product is cosine similarity."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit: np.ndarray = vectors / np.maximum(norms, 1e-12)
    return unit


def stored_paths(paths: Sequence[str | None], exact: Sequence[bytes | None] | None) -> list[str]:
    """Image paths from a `path` column and its `path_bytes` column (None: absent)."""
    if exact is None:
        return [str(p) for p in paths]
    return [str(p) if raw is None else from_bytes(raw) for p, raw in zip(paths, exact, strict=True)]
