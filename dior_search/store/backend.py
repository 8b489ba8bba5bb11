"""The store's API: what the layers above use of an index, whatever holds it.

Two stores implement it: the folder store (`store.folder`: FAISS shards and Parquet tables
under `--indexes`, the default) and the Milvus store (`store.milvus`: one collection of a
Milvus server or of a Milvus Lite database per index). Indexing, search, serving, bench and
export see only these protocols:

- `IndexStore` finds, opens and creates indexes by (collection, embedder, condition);
- `Reader` is one index as of one commit (generation): search, look-ups by id, columns;
- `Writer` adds and deletes rows a commit at a time;
- `SharedParts` splits a run over processes: each writes its part of the new rows (staged,
  invisible), and the process that completes the run publishes every part in one commit
  (see indexing.parts; the folder store's parts are folders merged in, store.parts; the
  Milvus store's are rows of the collection, store.milvus.parts).

An index's place is an `IndexLocation`: a directory for the folder store, a `DatabaseIndex`
(the database and the collection's name there) for a database.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from dior_search.errors import IndexStoreError
from dior_search.models.embedder import EmbedderDescription
from dior_search.store.index_types import canonical_spec as canonical_spec
from dior_search.store.index_types import parse_size as parse_size
from dior_search.store.manifest import Manifest as Manifest
from dior_search.store.manifest import check_same_embedder as check_same_embedder

if TYPE_CHECKING:
    from dior_search.models.answers import Answer
    from dior_search.models.embedder import AnswerState
    from dior_search.store.schema import Row

# (path, content hash) of a row.
Key = tuple[str, str]
# Allowed rows up to this many are scored exactly from their stored vectors; more are found
# by over-fetching an unfiltered search.
EXACT_FILTER_MAX = 4096
# Over-fetching asks for this many times the allowed hits expected among the nearest rows.
OVER_FETCH_MARGIN = 1.2
# Rows whose vectors are scored at once by an exact filtered search.
SCORE_CHUNK = 4096


@dataclass
class Compaction:
    """What one compaction did."""

    shards_rewritten: int = 0
    shards_dropped: int = 0
    rows_dropped: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class DatabaseIndex:
    """An index kept in a database: the database's URI (no secret in it) and the collection's
    name there, with the (collection, embedder folder, condition) it was named after."""

    uri: str
    name: str
    collection: str
    embedder: str
    condition: str
    # The open store it belongs to (not part of its identity).
    store: IndexStore = field(compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.uri}#{self.name}"


IndexLocation = Path | DatabaseIndex


@dataclass(frozen=True)
class IndexEntry:
    """One index a store holds, with its (verified) manifest."""

    location: IndexLocation
    manifest: Manifest

    @property
    def collection(self) -> str:
        return self.manifest.collection["name"]

    @property
    def condition(self) -> str:
        return str(self.manifest.condition["name"])

    @property
    def embedder_folder(self) -> str:
        """The embedder's name in the store (its folder, or its part of a collection name)."""
        if isinstance(self.location, DatabaseIndex):
            return self.location.embedder
        return self.location.parent.name

    def matches(self, method: str | None, model: str | None) -> bool:
        """Whether the index is of `method` and `model` (None: any); `model` is the model as
        given when indexing, or the embedder's folder name."""
        embedder = self.manifest.embedder
        return (method is None or embedder.method == method) and (
            model is None or model in (embedder.model, self.embedder_folder)
        )


class Reader(Protocol):
    """One index as of one commit: live rows only, ids ascending."""

    manifest: Manifest
    # Every live row's id, ascending.
    ids: np.ndarray

    @property
    def location(self) -> IndexLocation: ...

    @property
    def generation(self) -> int: ...

    @property
    def deleted(self) -> int: ...

    @property
    def exact(self) -> bool:
        """Whether `vectors` gives back exactly the vectors written."""
        ...

    def is_current(self) -> bool: ...

    def reopen(self) -> Reader: ...

    def __len__(self) -> int: ...

    def search(
        self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query (cosine), ties by lower id; id -1 where fewer than k
        rows (of `allowed_ids`, when given) exist."""
        ...

    def search_where(
        self, queries: np.ndarray, k: int, equals: Sequence[tuple[str, str]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """`search` among the rows whose column `name` holds `value` for every (name, value)
        of `equals` (columns such as `answer` or `label_<name>`): exactly k hits whenever k
        rows pass. The store decides the filter as it can: the folder store by a mask over
        its columns (`ids_where`), a database by its own filter expression."""
        ...

    def contains(self, row_id: int) -> bool: ...

    def positions(self, ids: Sequence[int] | np.ndarray) -> np.ndarray: ...

    def vectors(self, ids: Sequence[int] | np.ndarray) -> np.ndarray: ...

    def vector(self, row_id: int) -> np.ndarray: ...

    def all_vectors(self, raw: bool = False) -> tuple[np.ndarray, np.ndarray]: ...

    def column(self, name: str) -> list[Any]: ...

    def column_names(self) -> list[str]: ...

    def column_types(self) -> dict[str, Any]: ...

    def label_names(self) -> list[str]: ...

    def labels(self, name: str) -> list[str | None]: ...

    def content_hashes(self) -> list[str]: ...

    def paths(self) -> list[str]: ...

    def rows(self, ids: Sequence[int] | np.ndarray) -> list[Row]: ...

    def row(self, row_id: int) -> Row: ...


class Writer(Protocol):
    """Adds and deletes rows of one index, a commit at a time; resumes where it stopped."""

    manifest: Manifest
    # What the writer changed that the run's report tells (a repack, a rebuilt index).
    notes: list[str]

    @property
    def location(self) -> IndexLocation: ...

    def __enter__(self) -> Writer: ...

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None: ...

    def live_rows(self) -> dict[int, Key]: ...

    def holds(self, path: str, content_hash: str) -> bool: ...

    def can_copy(self, content_hash: str) -> bool: ...

    @property
    def stores_answers(self) -> bool:
        """Whether every row carries the model's answer (the manifest's `answers`)."""
        ...

    def store_answers(self) -> None: ...

    def set_index_type(self, spec: str | None, memory_budget: int | None) -> None: ...

    def add(
        self,
        vector: np.ndarray,
        row: Row,
        row_id: int | None = None,
        answer: Answer | None = None,
    ) -> None: ...

    def add_copy(self, row: Row, row_id: int | None = None) -> None: ...

    def delete(self, ids: list[int]) -> None: ...

    def commit(self) -> None:
        """Commit: publish the rows added and deleted since the last commit, at once."""
        ...

    def pack(self) -> None: ...

    def compact(self, threshold: float = ...) -> Compaction: ...

    def close(self, threshold: float = ...) -> Compaction: ...

    def abort(self) -> None: ...


@dataclass(frozen=True)
class IndexState:
    """What an index holds as committed, read before a distributed run writes anything."""

    paths: frozenset[str]
    hashes: frozenset[str]
    next_id: int
    # Whether the index stores answers (None: no index yet, the new one's state applies).
    answers: AnswerState | None = None


@dataclass(frozen=True)
class PartPlan:
    """One process's part of a distributed run on one index: its contiguous slice
    [start, stop) of the run's work list (`work_items` items, the same list in every
    process: `digest` names it), the item at position i getting the id next_id + i."""

    part: int
    parts: int
    start: int
    stop: int
    next_id: int
    digest: str
    work_items: int
    # The paths of the slice, in order.
    paths: tuple[str, ...]

    @property
    def name(self) -> str:
        return part_name(self.part, self.parts)

    @property
    def names(self) -> list[str]:
        """Every part's name of this run."""
        return [part_name(p, self.parts) for p in range(self.parts)]

    @property
    def end_id(self) -> int:
        """One past the ids of the whole run's work."""
        return self.next_id + self.work_items


def part_name(part: int, parts: int) -> str:
    return f"part-{part:05d}-of-{parts:05d}"


class SharedParts(Protocol):
    """A store's side of a distributed run: each process writes its part's rows (staged:
    invisible until published), marks its part done, and the process that finds every part
    done publishes them all in one commit."""

    @property
    def single_process(self) -> bool:
        """Whether the store opens in one process only (Milvus Lite): parts then run one
        after another, never launched together."""
        ...

    def state(self, location: IndexLocation) -> IndexState:
        """The paths and contents of the index's published rows, and its next id."""
        ...

    def unfinished(self, location: IndexLocation) -> str | None:
        """Why a run in one process must not write the index now (a distributed run's parts
        there, unfinished), or None."""
        ...

    def resume(
        self,
        location: IndexLocation,
        manifest: Manifest,
        index_type: str | None,
        memory_budget: int | None,
    ) -> int | None:
        """Finish a publishing that a crash interrupted: the rows published (None: none
        was interrupted)."""
        ...

    def staged_writer(self, location: IndexLocation, manifest: Manifest, plan: PartPlan) -> Writer:
        """A writer of the part's rows: staged, published only by `publish`."""
        ...

    def is_done(self, location: IndexLocation, plan: PartPlan) -> bool: ...

    def mark_done(self, location: IndexLocation, plan: PartPlan, rows: int) -> None: ...

    def missing(self, location: IndexLocation, plan: PartPlan) -> list[int]:
        """The parts of the plan's run that have not completed."""
        ...

    def publish(
        self,
        location: IndexLocation,
        plan: PartPlan,
        manifest: Manifest,
        index_type: str | None,
        memory_budget: int | None,
    ) -> int | None:
        """Publish every part's rows (ids below plan.end_id) in one commit: the rows
        published (None: another process publishes them)."""
        ...


class IndexStore(Protocol):
    """Where indexes live: one index per (collection, embedder, condition)."""

    @property
    def name(self) -> str:
        """The store as messages name it: a folder or a URI."""
        ...

    def location(
        self, collection: str, description: EmbedderDescription, condition: str
    ) -> IndexLocation: ...

    def manifest_at(self, location: IndexLocation) -> Manifest | None:
        """The verified manifest of the index there; None where there is no index yet."""
        ...

    def writer(
        self, location: IndexLocation, manifest: Manifest, wait_for_lock: bool = False
    ) -> Writer:
        """A writer of the index there, created with `manifest` if new."""
        ...

    def reader(
        self,
        location: IndexLocation,
        mmap: bool | None = None,
        search_params: str = "",
        verify: bool = True,
    ) -> Reader: ...

    def find(
        self,
        collection: str | None = None,
        method: str | None = None,
        model: str | None = None,
        damaged: dict[IndexLocation, IndexStoreError] | None = None,
    ) -> list[IndexEntry]:
        """Every index (of one collection, method or model if given); a damaged one raises
        IndexStoreError, or is recorded in `damaged` when given."""
        ...

    def compact(
        self, location: IndexLocation, threshold: float, wait_for_lock: bool = False
    ) -> Compaction: ...

    def check_index_spec(
        self, spec: str, dim: int, n_vectors: int, memory_budget: int, existing: Manifest
    ) -> None:
        """UsageError, before any embedding, on an index type the store cannot build for
        `n_vectors` (or, for `auto`, fit in the budget); `existing`: the index's manifest as
        it is (or as it starts)."""
        ...

    def shared_parts(self) -> SharedParts:
        """How the store splits a run over processes."""
        ...

    def new_manifest(self, **fields: Any) -> Manifest:
        """The manifest a new index starts with: `fields` and the store's own starting index
        type (`auto`, exact until it is packed)."""
        ...

    def skipped_listing(self, collection: str, description: EmbedderDescription) -> Path:
        """Where a run lists the images of `collection` it skipped (`skipped.tsv`)."""
        ...

    def close(self) -> None: ...


def matching_entries(
    entries: Sequence[IndexEntry], method: str | None, model: str | None
) -> list[IndexEntry]:
    """The entries of `method` and `model` (see `IndexEntry.matches`); where `model` is some
    embedder's exact folder name (`tiny`, beside `tiny+layer-2`), that embedder's alone."""
    found = [e for e in entries if e.matches(method, model)]
    exact = [e for e in found if e.embedder_folder == model]
    return exact or found


def merge_top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the k highest scores per row (inner product: higher is closer); ties by lower id."""
    order = np.lexsort((np.where(ids < 0, np.iinfo(np.int64).max, ids), -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def padded(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Results widened to k columns: score -inf and id -1 where there are fewer."""
    missing = k - scores.shape[1]
    if missing <= 0:
        return scores[:, :k], ids[:, :k]
    rows = scores.shape[0]
    return (
        np.hstack([scores, np.full((rows, missing), -np.inf, dtype=np.float32)]),
        np.hstack([ids, np.full((rows, missing), -1, dtype=np.int64)]),
    )


def allowed_rows(reader: Reader, allowed_ids: np.ndarray | Sequence[int]) -> np.ndarray:
    """The allowed ids that are live rows of the reader, ascending, without repeats."""
    wanted = np.asarray(allowed_ids, dtype=np.int64)
    if len(wanted) > 1 and (np.diff(wanted) <= 0).any():  # the search layer's are sorted
        wanted = np.unique(wanted)
    positions = np.searchsorted(reader.ids, wanted)
    live = positions < len(reader.ids)
    live[live] = reader.ids[positions[live]] == wanted[live]
    found: np.ndarray = wanted[live]
    return found


def ids_where(reader: Reader, equals: Sequence[tuple[str, str]]) -> np.ndarray:
    """The ids of the reader's rows whose column `name` holds `value` for every (name, value)
    of `equals`, ascending (a column the index lacks holds no value)."""
    passing = np.ones(len(reader), dtype=bool)
    for name, value in equals:
        passing &= np.asarray(reader.column(name), dtype=object) == value
    found: np.ndarray = reader.ids[passing]
    return found


def exact_scores(
    reader: Reader, queries: np.ndarray, ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The exact top k of `ids` (live rows) per unit query, from their stored vectors."""
    scores = np.empty((len(queries), len(ids)), dtype=np.float32)
    for low in range(0, len(ids), SCORE_CHUNK):
        chunk = ids[low : low + SCORE_CHUNK]
        scores[:, low : low + len(chunk)] = queries @ reader.vectors(chunk).T
    tiled = np.broadcast_to(ids, scores.shape)
    return padded(*merge_top_k(scores, np.ascontiguousarray(tiled), k), k)


def search_allowed(
    reader: Reader, queries: np.ndarray, k: int, allowed: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of the `allowed` live rows (ascending) per unit query.

    Few allowed rows are scored exactly. Otherwise the unfiltered search is over-fetched
    (k x rows / allowed x 1.2 + 2 results), filtered, and asked again with four times as many
    while too few allowed hits come back; a query whose search saw every row it could without
    finding k is scored exactly.
    """
    k = max(1, k)
    if len(allowed) == 0:
        none = np.empty((len(queries), 0))
        return padded(none.astype(np.float32), none.astype(np.int64), k)
    if len(allowed) <= EXACT_FILTER_MAX:
        return exact_scores(reader, queries, allowed, k)
    total = len(reader)
    want = min(k, len(allowed))
    fetch = min(total, math.ceil(OVER_FETCH_MARGIN * want * total / len(allowed)) + 2)
    out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    out_ids = np.full((len(queries), k), -1, dtype=np.int64)
    pending = np.arange(len(queries))
    short: list[int] = []
    while len(pending):
        found_scores, found_ids = reader.search(queries[pending], fetch)
        keep = (found_ids >= 0) & np.isin(found_ids, allowed)
        enough = keep.sum(axis=1) >= want
        exhausted = fetch >= total
        for row in np.flatnonzero(enough | exhausted).tolist():
            if not enough[row]:
                short.append(int(pending[row]))
                continue
            taken = np.flatnonzero(keep[row])[:want]
            out_scores[pending[row], :want] = found_scores[row, taken]
            out_ids[pending[row], :want] = found_ids[row, taken]
        pending = pending[~(enough | exhausted)]
        fetch = min(total, fetch * 4)
    if short:  # one exact pass for all of them: the allowed vectors are read once
        out_scores[short], out_ids[short] = exact_scores(reader, queries[short], allowed, k)
    return out_scores, out_ids
