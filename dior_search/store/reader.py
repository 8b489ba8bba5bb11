"""Reading one index directory: search every shard, merge, and look rows and vectors up by id.

The reader is the only way into an index's files for the layers above: they ask for rows,
vectors, columns and searches by id, never for shards or tables.

A reader is one generation of the index: the manifest it read when it was opened and the
files that manifest lists. It opens all of them at once (FAISS shards read or mapped, Parquet
tables held open, tombstones read), so a writer that commits a newer generation and deletes
files this one uses does not disturb it: an open or mapped file lives on until its last
holder closes it. `is_current()` says, from a stat of the manifest, whether a newer generation
was committed; `reopen()` opens it, sharing the shards that did not change.

Deleted rows (tombstones) are never answered: `ids`, `len`, rows, columns and vectors cover
live rows only, and `search` leaves deleted ids out with exactly k results whenever the index
holds k live vectors. A search may also be limited to allowed ids (a filter): it returns
exactly k of them whenever k live rows are allowed.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dior_search.data.parquet import ParquetTable
from dior_search.errors import IndexStoreError, UsageError
from dior_search.store.backend import OVER_FETCH_MARGIN, allowed_rows, ids_where, merge_top_k
from dior_search.store.files import io_errors, verify_file
from dior_search.store.index_types import (
    FLAT,
    apply_search_params,
    merge_search_params,
    parse_search_params,
    widened_search_params,
)
from dior_search.store.lookups import RowLookups
from dior_search.store.manifest import Manifest, Shard, Stamp, manifest_stamp
from dior_search.store.schema import normalize
from dior_search.store.shards import (
    faiss_path,
    open_table,
    parquet_path,
    read_shard_index,
    read_tombstones,
    reconstruct_ids,
    reconstruct_rows,
)

log = logging.getLogger(__name__)

# A reader that finds a file gone while it opens retries on the newer manifest this often.
OPEN_ATTEMPTS = 5
# Rows reconstructed at once by an exhaustive search of a shard.
SCAN_CHUNK = 16_384
# A search of a shard that few rows pass (a filter; deletions) scores them exactly (from their
# stored vectors) rather than searching the shard: where at most this many pass, or this share.
EXACT_FILTER_ROWS = 2048
EXACT_FILTER_SHARE = 0.02


class OpenShard:
    """One shard's index and table as readers hold them open. Its files never change (a
    shard's name always means the same content; only its tombstones do, which each reader
    reads itself), so the readers of several generations share it."""

    def __init__(
        self, directory: Path, entry: Shard, dim: int, mmap: bool | None, verify: bool
    ) -> None:
        self.key = shard_key(entry)
        self.index_type = entry.index_type
        table_path = parquet_path(directory, entry)
        index_path = faiss_path(directory, entry)
        try:
            # The table is opened first and checksummed through the open handle, so the
            # bytes checked are the bytes read.
            self.table = open_table(table_path)
            if verify:
                check_handle(self.table, table_path, entry.parquet_sha256)
                verify_file(index_path, entry.faiss_sha256)
            self.index = read_shard_index(index_path, mmap)
        except FileNotFoundError:
            raise IndexStoreError(f"index file missing: {table_path}") from None
        except RuntimeError as exc:  # FAISS reports a missing or unreadable file this way
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
            raise IndexStoreError(f"cannot read {index_path}: {reason}") from None
        self.lock = threading.Lock()
        self.parquet = ParquetTable(self.table)
        ids = self.parquet.read(["id"]).column("id").to_numpy()
        self.ids = np.asarray(ids, dtype=np.int64)
        check_shard(directory, entry, dim, self.index, self.ids)

    def column(self, name: str) -> list[Any]:
        """A column of every stored row (None where the table lacks it), read once per call."""
        with self.lock:
            if name not in self.parquet.names:
                return [None] * len(self.ids)
            values: list[Any] = self.parquet.read([name]).column(name).to_pylist()
            return values

    def column_names(self) -> list[str]:
        return self.parquet.names


def search_with_params(index: Any, queries: np.ndarray, k: int, params: Any) -> Any:
    """`index.search(queries, k, params=params)`, also where faiss.contrib.torch_utils (which
    pytorch-metric-learning imports) has replaced `search` by a wrapper without `params`: the
    original method is then kept as `search_numpy`."""
    search = getattr(index, "search_numpy", index.search)
    return search(queries, k, params=params)


def check_shard(directory: Path, shard: Shard, dim: int, index: Any, ids: np.ndarray) -> None:
    """The shard's files hold what its manifest entry says: rows, dimension, ids."""
    if index.ntotal != shard.rows or index.d != dim or len(ids) != shard.rows:
        raise IndexStoreError(
            f"index {directory} is damaged: {shard.name} holds {index.ntotal} vectors "
            f"of dimension {index.d} and {len(ids)} rows; its manifest says {shard.rows} of "
            f"dimension {dim}"
        )
    if len(ids) and (
        ids[0] != shard.first_id or ids[-1] != shard.last or (np.diff(ids) <= 0).any()
    ):
        raise IndexStoreError(
            f"index {directory} is damaged: the ids of {shard.name} are not its "
            f"manifest's {shard.first_id}..{shard.last} in increasing order"
        )


def check_handle(handle: Any, path: Path, expected_sha256: str) -> None:
    """The open file has the checksum the manifest recorded (read from the handle)."""
    import hashlib

    digest = hashlib.sha256()
    for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
    handle.seek(0)
    if digest.hexdigest() != expected_sha256:
        raise IndexStoreError(f"index file damaged (checksum mismatch): {path}; rebuild the index")


class IndexReader(RowLookups):
    """A loaded index directory, as of one generation.

    `mmap`: map shard files instead of reading them (None: shards of 16 MiB or more).
    `search_params`: `name=value,...` over the manifest's defaults (`nprobe`, `efSearch`,
    `k_factor_rf`, ...), applied to every shard of a non-Flat type. `verify`: check every
    file's sha256 first (streamed: it fills the page cache, not the process's memory).
    `previous`: an older reader of the same directory whose unchanged shards are reused.
    """

    def __init__(
        self,
        directory: Path,
        mmap: bool | None = None,
        search_params: str = "",
        verify: bool = True,
        previous: IndexReader | None = None,
    ) -> None:
        self.directory = directory
        self.mmap, self.verify, self.asked_params = mmap, verify, search_params
        reusable = {} if previous is None else {s.key: s for s in previous.open_shards}
        with io_errors(f"cannot read index {directory}"):
            for attempt in range(OPEN_ATTEMPTS):
                stamp = manifest_stamp(directory)
                manifest = Manifest.read(directory)
                try:
                    opened = self._open(manifest, reusable)
                    break
                except (IndexStoreError, OSError):
                    # Files gone or changed while opening: a newer generation was committed
                    # and the old files deleted. Open that one; if the manifest did not
                    # change, the index is damaged.
                    if attempt + 1 == OPEN_ATTEMPTS or manifest_stamp(directory) == stamp:
                        raise
                    log.info(
                        "%s changed while it was opened; opening its newer generation", directory
                    )
        self.manifest = manifest
        self._stamp: Stamp | None = stamp
        self.open_shards: list[OpenShard]
        self.open_shards, self._dead, new = opened
        self._live_masks = [
            None if len(dead) == 0 else ~np.isin(shard.ids, dead)
            for shard, dead in zip(self.open_shards, self._dead, strict=True)
        ]
        self._selectors = [
            deletion_filter(dead) if len(dead) and entry.index_type == FLAT else None
            for entry, dead in zip(manifest.shards, self._dead, strict=True)
        ]
        # For over-fetched shards: deleted or not, by id - first_id (a lookup, not a search).
        self._is_dead = [
            dead_lookup(entry, dead) if len(dead) and entry.index_type != FLAT else None
            for entry, dead in zip(manifest.shards, self._dead, strict=True)
        ]
        self._first_ids = np.array([s.first_id for s in manifest.shards], dtype=np.int64)
        live_ids = [
            shard.ids if mask is None else shard.ids[mask]
            for shard, mask in zip(self.open_shards, self._live_masks, strict=True)
        ]
        self.ids: np.ndarray = np.concatenate(live_ids) if live_ids else np.empty(0, dtype=np.int64)
        self._columns: dict[str, list[Any]] = {}
        self._columns_lock = threading.Lock()
        self.search_params = merge_search_params(manifest.search_params, search_params)
        self._apply_search_params(new, self.search_params, strict=bool(search_params))

    def _open(
        self, manifest: Manifest, reusable: dict[tuple[str, str, str], OpenShard]
    ) -> tuple[list[OpenShard], list[np.ndarray], list[OpenShard]]:
        """Every shard of `manifest` opened (or reused) and its deleted ids; and the new ones."""
        shards, dead, new = [], [], []
        for entry in manifest.shards:
            shard = reusable.get(shard_key(entry))
            if shard is None:
                shard = OpenShard(self.directory, entry, manifest.dim, self.mmap, self.verify)
                new.append(shard)
            shards.append(shard)
            dead.append(read_tombstones(self.directory, entry, self.verify))
        return shards, dead, new

    # -- generations ----------------------------------------------------------------------

    @property
    def location(self) -> Path:
        """Where the index is: its directory."""
        return self.directory

    @property
    def generation(self) -> int:
        """The manifest generation this reader holds (0: a version-1 index never rewritten)."""
        return self.manifest.generation

    @property
    def deleted(self) -> int:
        """Deleted rows still in the shard files (compaction drops them)."""
        return self.manifest.deleted

    def is_current(self) -> bool:
        """Whether no newer generation has been committed since this reader opened (a stat)."""
        stamp = manifest_stamp(self.directory)
        return stamp is None or stamp == self._stamp

    def reopen(self) -> IndexReader:
        """The index as it is now, with the same settings; unchanged shards are shared."""
        return IndexReader(self.directory, self.mmap, self.asked_params, self.verify, previous=self)

    # -- search parameters ----------------------------------------------------------------

    def _apply_search_params(self, shards: Sequence[OpenShard], text: str, strict: bool) -> None:
        if strict and parse_search_params(text) and self.exact:
            names = ", ".join(parse_search_params(text))
            raise UsageError(
                f"index {self.directory} is exact (Flat): search parameters ({names}) do not "
                "apply to it"
            )
        for shard in shards:
            if shard.index_type != FLAT:
                apply_search_params(shard.index, text, shard.index_type)

    @property
    def exact(self) -> bool:
        """Whether every shard stores its vectors exactly (Flat), so vectors are exact."""
        return all(s.index_type == FLAT for s in self.manifest.shards)

    # -- search ---------------------------------------------------------------------------

    def search(
        self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) of live rows per query over all shards; ids are -1 where fewer
        than k live rows exist. `allowed_ids` (sorted int64): only these ids may be returned
        (a filter), and k of them are whenever k live ones exist.

        A shard without deleted rows is searched as it is. In a Flat shard, a FAISS ID
        selector leaves its deleted (or not allowed) ids out of the exact search. Other types
        (IVF, HNSW, PCA, Refine) take no selector through their IDMap2 wrapper, so they are
        over-fetched (1.2 k x rows / passing rows, + 2), filtered, and re-searched with 4 times
        more while too few hits passed; where the approximate search runs out of candidates
        (every probed list read), the shard's passing vectors are scanned exactly. A filter
        that few rows of a shard pass (at most EXACT_FILTER_ROWS, or EXACT_FILTER_SHARE of
        it) scores those rows exactly from their stored vectors, whatever the type.
        """
        queries = normalize(np.atleast_2d(queries))
        if allowed_ids is not None:
            return self._search_allowed(queries, k, np.asarray(allowed_ids, dtype=np.int64))
        k = max(1, min(k, len(self)))
        scores = [np.full((len(queries), k), -np.inf, dtype=np.float32)]
        ids = [np.full((len(queries), k), -1, dtype=np.int64)]
        for number, entry in enumerate(self.manifest.shards):
            live = entry.live
            if live == 0:
                continue
            shard_scores, shard_ids = self._search_shard(number, queries, min(k, live))
            scores.append(shard_scores)
            ids.append(shard_ids)
        return merge_top_k(np.hstack(scores), np.hstack(ids), k)

    def search_where(
        self, queries: np.ndarray, k: int, equals: Sequence[tuple[str, str]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """`search` among the rows whose columns hold the values `equals` names: a mask over
        the columns, searched as allowed ids."""
        return self.search(queries, k, ids_where(self, equals))

    def _search_shard(
        self, number: int, queries: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        index = self.open_shards[number].index
        selector = self._selectors[number]
        if len(self._dead[number]) == 0:
            found: tuple[np.ndarray, np.ndarray] = index.search(queries, k)
        elif selector is not None:
            found = search_with_params(index, queries, k, selector[0])
        else:
            entry = self.manifest.shards[number]
            is_dead = self._is_dead[number]
            assert is_dead is not None  # a shard with deleted rows and no selector
            if few_pass(entry.live, entry.rows):
                found = self._scan_ids(number, queries, None, k)
            else:
                found = self._search_over_fetched(number, queries, k, is_dead, entry.live, None)
        return found

    def _search_allowed(
        self, queries: np.ndarray, k: int, allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """`search` among the live ids of `allowed` only."""
        passing = allowed_rows(self, allowed)
        if len(passing) == 0:  # nothing passes: no hits at all
            return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
        k = min(k, len(passing))
        scores = [np.full((len(queries), k), -np.inf, dtype=np.float32)]
        ids = [np.full((len(queries), k), -1, dtype=np.int64)]
        for number, entry in enumerate(self.manifest.shards):
            low = np.searchsorted(passing, entry.first_id, side="left")
            high = np.searchsorted(passing, entry.last, side="right")
            mine = passing[low:high]
            if len(mine) == 0:
                continue
            shard_k = min(k, len(mine))
            if few_pass(len(mine), entry.rows):
                found = self._scan_ids(number, queries, mine, shard_k)
            elif entry.index_type == FLAT:
                params = id_filter(mine)
                found = search_with_params(
                    self.open_shards[number].index, queries, shard_k, params[0]
                )
            else:
                blocked = np.ones(entry.last - entry.first_id + 1, dtype=bool)
                blocked[mine - entry.first_id] = False
                found = self._search_over_fetched(
                    number, queries, shard_k, blocked, len(mine), mine
                )
            scores.append(found[0])
            ids.append(found[1])
        return merge_top_k(np.hstack(scores), np.hstack(ids), k)

    def _search_over_fetched(
        self,
        number: int,
        queries: np.ndarray,
        k: int,
        blocked: np.ndarray,
        passing: int,
        passing_ids: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The shard's top k among rows not `blocked` (a lookup by id - first_id), `passing`
        of them: over-fetched and filtered, and scanned exactly (`passing_ids`, default the
        live rows) where the approximate search runs out of candidates."""
        shard, entry = self.open_shards[number], self.manifest.shards[number]
        total = shard.index.ntotal
        # Blocked rows are as likely as any among the nearest: fetch enough for k passing
        # ones, with a margin; a shortfall (blocked rows near the query) is fetched again.
        fetch = min(total, math.ceil(OVER_FETCH_MARGIN * k * entry.rows / passing) + 2)
        # Those lie deeper in the ranking than the top k: the approximate search visits more
        # candidates (IVF lists, HNSW breadth) by the square root of the share blocked.
        params = widened_search_params(shard.index, entry.rows / passing)
        out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        out_ids = np.full((len(queries), k), -1, dtype=np.int64)
        pending = np.arange(len(queries))
        short: list[int] = []
        while len(pending):
            found_scores, found_ids = search_with_params(
                shard.index, queries[pending], fetch, params[0]
            )
            keep = found_ids >= 0
            keep[keep] = ~blocked[found_ids[keep] - entry.first_id]
            enough = keep.sum(axis=1) >= k
            exhausted = (found_ids < 0).any(axis=1) | (fetch >= total)
            for row in np.flatnonzero(enough | exhausted).tolist():
                if not enough[row]:
                    short.append(int(pending[row]))
                    continue
                taken = np.flatnonzero(keep[row])[:k]
                out_scores[pending[row]] = found_scores[row, taken]
                out_ids[pending[row]] = found_ids[row, taken]
            pending = pending[~(enough | exhausted)]
            fetch = min(total, fetch * 4)
        if short:
            scanned = self._scan_ids(number, queries[short], passing_ids, k)
            out_scores[short], out_ids[short] = scanned
        return out_scores, out_ids

    def _scan_ids(
        self, number: int, queries: np.ndarray, ids: np.ndarray | None, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The exact top k of a shard's rows `ids` (default: its live rows), from their
        stored vectors: where few rows pass a filter, or an approximate search cannot give k
        passing hits."""
        shard, mask = self.open_shards[number], self._live_masks[number]
        if ids is None:
            ids = shard.ids if mask is None else shard.ids[mask]
        scores = np.empty((len(queries), len(ids)), dtype=np.float32)
        for low in range(0, len(ids), SCAN_CHUNK):
            chunk = ids[low : low + SCAN_CHUNK]
            scores[:, low : low + len(chunk)] = queries @ reconstruct_ids(shard.index, chunk).T
        order = np.lexsort((np.broadcast_to(ids, scores.shape), -scores), axis=1)[:, :k]
        return np.take_along_axis(scores, order, axis=1), ids[order]

    # -- look-ups by id -------------------------------------------------------------------

    def vectors(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """The stored (normalised) vectors of `ids`: (len(ids), dim); reconstructed from codes
        unless the shards are Flat."""
        wanted = np.asarray(ids, dtype=np.int64)
        self.positions(wanted)  # raises on an unknown or deleted id
        out = np.empty((len(wanted), self.manifest.dim), dtype=np.float32)
        shards = np.searchsorted(self._first_ids, wanted, side="right") - 1
        for shard in np.unique(shards).tolist():
            rows = np.flatnonzero(shards == shard)
            out[rows] = reconstruct_ids(self.open_shards[shard].index, wanted[rows])
        return out

    def column(self, name: str) -> list[Any]:
        """A Parquet column of every live row, in id order (None in shards without it); read
        once."""
        with self._columns_lock:
            if name not in self._columns:
                values: list[Any] = []
                for shard, mask in zip(self.open_shards, self._live_masks, strict=True):
                    stored = shard.column(name)
                    if mask is not None:
                        stored = [v for v, keep in zip(stored, mask.tolist(), strict=True) if keep]
                    values += stored
                self._columns[name] = values
            return self._columns[name]

    def column_names(self) -> list[str]:
        """Every column any shard's table has."""
        return list(self.column_types())

    def column_types(self) -> dict[str, Any]:
        """Every column any shard's table has, with its Arrow type (the first shard's)."""
        types: dict[str, Any] = {}
        for shard in self.open_shards:
            for column in shard.parquet.schema:
                types.setdefault(column.name, column.type)
        return types

    def all_vectors(self, raw: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of every live row in id order: unit vectors, or raw embeddings if
        `raw`.

        Exact for Flat shards; for other types, what the codes reconstruct (see `exact`).
        """
        import faiss

        # The wrapped index holds the vectors in insertion order, which is id order here.
        parts = []
        for shard, mask in zip(self.open_shards, self._live_masks, strict=True):
            stored = reconstruct_rows(faiss.downcast_index(shard.index.index), 0, len(shard.ids))
            parts.append(stored if mask is None else stored[mask])
        vectors = np.vstack(parts) if parts else np.empty((0, self.manifest.dim), np.float32)
        if raw:
            vectors *= np.asarray(self.column("norm"), dtype=np.float32)[:, None]
        return self.ids.copy(), vectors


def few_pass(passing: int, rows: int) -> bool:
    """Whether so few of a shard's rows pass (a filter, or deletions) that scoring them exactly
    from their stored vectors beats searching the shard."""
    return passing <= max(EXACT_FILTER_ROWS, EXACT_FILTER_SHARE * rows)


def shard_key(entry: Shard) -> tuple[str, str, str]:
    return entry.name, entry.faiss_sha256, entry.parquet_sha256


def dead_lookup(entry: Shard, dead: np.ndarray) -> np.ndarray:
    """Whether each id of a shard's range (from first_id) is deleted."""
    lookup = np.zeros(entry.last - entry.first_id + 1, dtype=bool)
    lookup[dead - entry.first_id] = True
    return lookup


def id_filter(allowed: np.ndarray) -> tuple[Any, ...]:
    """FAISS search parameters that keep only `allowed` ids, with the selector they point to."""
    import faiss

    batch = faiss.IDSelectorBatch(allowed)
    params = faiss.SearchParameters()
    params.sel = batch
    return params, batch


def deletion_filter(dead: np.ndarray) -> tuple[Any, ...]:
    """FAISS search parameters that skip `dead` ids, with the selectors they point to (kept
    referenced for as long as the parameters are used)."""
    import faiss

    batch = faiss.IDSelectorBatch(dead)
    skip = faiss.IDSelectorNot(batch)
    params = faiss.SearchParameters()
    params.sel = skip
    return params, skip, batch
