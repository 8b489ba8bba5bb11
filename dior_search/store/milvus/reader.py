"""`MilvusReader`: searches and look-ups by id over an index's live rows as of one commit
(mirrors store.reader)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from dior_search.errors import IndexStoreError
from dior_search.store.backend import (
    DatabaseIndex,
    allowed_rows,
    exact_scores,
    ids_where,
    merge_top_k,
    padded,
    search_allowed,
)
from dior_search.store.index_types import merge_search_params
from dior_search.store.lookups import RowLookups
from dior_search.store.milvus.checks import (
    CHECK_FIELD,
    verify_rows,
    verify_scores,
)
from dior_search.store.milvus.connection import MAX_LIMIT
from dior_search.store.milvus.layout import MANIFEST_KEY
from dior_search.store.milvus.rows import FIXED_FIELDS, fields_expression
from dior_search.store.milvus.types import (
    FLAT,
    search_params_for,
)
from dior_search.store.schema import (
    PATH_BYTES,
    normalize,
)

if TYPE_CHECKING:
    from dior_search.store.milvus.store import MilvusStore


# Allowed ids up to this many are a filter expression Milvus applies itself.
FILTER_EXPRESSION_MAX = 16_384
# A reader that finds fewer rows than its manifest says reads them again this often.
OPEN_ATTEMPTS = 3


# -- reading --------------------------------------------------------------------------------


class MilvusReader(RowLookups):
    """An index of a Milvus store as of one commit: its live ids and columns are read when
    it opens; searches run in the database."""

    def __init__(
        self, store: MilvusStore, location: DatabaseIndex, search_params: str = ""
    ) -> None:
        self.store = store
        self._location = location
        self.asked_params = search_params
        for attempt in range(OPEN_ATTEMPTS):
            self.manifest, self._text = store.read_manifest(location)
            store.load(location)
            columns = self._read_columns()
            if len(columns["id"]) == self.manifest.rows:
                break
            # A commit in progress deletes rows before it publishes its manifest; rows still
            # missing after it are rows the database lost.
            if attempt + 1 == OPEN_ATTEMPTS:
                raise IndexStoreError(
                    f"index {location} is damaged: the database holds {len(columns['id'])} of "
                    f"its {self.manifest.rows} rows (if an index run was interrupted, run it "
                    "again; otherwise rebuild the index)"
                )
            time.sleep(0.2 * (attempt + 1))
        vectors = np.asarray(columns.pop("vector"), dtype=np.float32)
        self._columns = columns
        self.ids = np.asarray(columns["id"], dtype=np.int64)
        spec = self.manifest.index_type
        self.search_params = search_params_for(
            spec,
            merge_search_params(self.manifest.search_params, search_params),
            strict=bool(search_params),
        )
        if spec == FLAT and len(self.ids):  # searches read a copy of the vectors: check it
            seed = self.manifest.generation
            verify_scores(location, self.ids, vectors, self._query, MAX_LIMIT, seed)

    def _read_columns(self) -> dict[str, list[Any]]:
        """Every committed row's fields (its vector too, checked: milvus.checks), in id
        order."""
        rows = sorted(
            self.store.iterate(
                self._location,
                f"id < {self.manifest.next_id}",
                [*FIXED_FIELDS, "vector", "$meta"],
            ),
            key=lambda row: int(row["id"]),
        )
        verify_rows(self._location, rows, self.manifest.dim)
        hidden = {*FIXED_FIELDS, "vector", CHECK_FIELD}
        names = [*FIXED_FIELDS, "vector", *sorted({k for r in rows for k in r} - hidden)]
        columns = {name: [row.get(name) for row in rows] for name in names}
        if PATH_BYTES in columns:  # bytes, as a folder's table holds them
            columns[PATH_BYTES] = [
                None if v is None else bytes.fromhex(v) for v in columns[PATH_BYTES]
            ]
        return columns

    @property
    def location(self) -> DatabaseIndex:
        return self._location

    @property
    def generation(self) -> int:
        return self.manifest.generation

    @property
    def deleted(self) -> int:
        return 0  # the database drops deleted rows itself

    @property
    def exact(self) -> bool:
        return True  # Milvus keeps every vector as written, whatever its index

    def is_current(self) -> bool:
        """Whether no newer commit was published since this reader opened."""
        return self.store.properties(self._location.name).get(MANIFEST_KEY) == self._text

    def reopen(self) -> MilvusReader:
        return MilvusReader(self.store, self._location, self.asked_params)

    # -- columns ----------------------------------------------------------------------------

    def column(self, name: str) -> list[Any]:
        found = self._columns.get(name)
        return found if found is not None else [None] * len(self.ids)

    def column_names(self) -> list[str]:
        return list(self._columns)

    def column_types(self) -> dict[str, Any]:
        import pyarrow as pa

        fixed = {"id": pa.int64(), "path": pa.string(), "content_hash": pa.string()}
        types: dict[str, Any] = {**fixed, "norm": pa.float32()}
        for name, values in self._columns.items():
            if name not in types:
                first = next((v for v in values if v is not None), None)
                types[name] = pa.array([first]).type if first is not None else pa.string()
        return types

    # -- vectors ----------------------------------------------------------------------------

    def vectors(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """The stored unit vectors of `ids`: (len(ids), dim)."""
        wanted = np.asarray(ids, dtype=np.int64)
        self.positions(wanted)  # raises on an unknown id
        found = self.store.fetch(self._location, np.unique(wanted), ["vector"])
        gone = [int(i) for i in wanted if int(i) not in found]
        if gone:
            raise IndexStoreError(
                f"row {gone[0]} of {self._location} was deleted since this search began; "
                "search again"
            )
        out = np.empty((len(wanted), self.manifest.dim), dtype=np.float32)
        for position, row_id in enumerate(wanted.tolist()):
            out[position] = found[row_id]["vector"]
        return out

    def all_vectors(self, raw: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of every live row in id order: unit vectors, or raw if `raw`."""
        out = np.empty((len(self.ids), self.manifest.dim), dtype=np.float32)
        for row in self.store.iterate(
            self._location, f"id < {self.manifest.next_id}", ["id", "vector"]
        ):
            position = int(np.searchsorted(self.ids, int(row["id"])))
            if position < len(self.ids) and self.ids[position] == int(row["id"]):
                out[position] = row["vector"]
        if raw:
            out *= np.asarray(self.column("norm"), dtype=np.float32)[:, None]
        return self.ids.copy(), out

    # -- search -----------------------------------------------------------------------------

    def search(
        self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | Sequence[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query; ids are -1 where fewer than k rows (of
        `allowed_ids`) exist. Allowed ids become a filter expression when there are at most
        16,384 (an approximate index may then find fewer: those queries are scored exactly),
        else the search is over-fetched and filtered."""
        queries = normalize(np.atleast_2d(queries))
        k = max(1, k)
        if allowed_ids is None:
            return self._search(queries, k, len(self), "")
        allowed = allowed_rows(self, allowed_ids)
        if len(allowed) == 0 or len(allowed) > FILTER_EXPRESSION_MAX:
            return search_allowed(self, queries, k, allowed)
        expression = f"id in [{','.join(str(i) for i in allowed.tolist())}]"
        scores, ids = self._search(queries, k, len(allowed), expression)
        return self._fill_short(queries, k, allowed, scores, ids)

    def search_where(
        self, queries: np.ndarray, k: int, equals: Sequence[tuple[str, str]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """`search` among the rows whose fields hold the values `equals` names, filtered by
        Milvus itself: `id < next_id and answer == "red" and label_x == "v"` (values escaped:
        `string_literal`). The rows that pass are counted in this reader's columns; a query
        for which an approximate index finds fewer of them than k is searched among their
        ids again. A field an expression cannot name, or more hits than one search returns,
        take `search`'s allowed-ids path."""
        queries = normalize(np.atleast_2d(queries))
        k = max(1, k)
        passing = ids_where(self, equals)
        expression = fields_expression(equals)
        if expression is None or min(k, len(passing)) > MAX_LIMIT:
            return self.search(queries, k, passing)
        expression = f"id < {self.manifest.next_id} and {expression}"
        scores, ids = self._search(queries, k, len(passing), expression)
        return self._fill_short(queries, k, passing, scores, ids)

    def _fill_short(
        self, queries: np.ndarray, k: int, allowed: np.ndarray, scores: np.ndarray, ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each query whose filtered search found fewer than k of the `allowed` rows (an
        approximate index's probes missed them) searched among them again: scored exactly
        while they are few enough for one expression, else by over-fetching."""
        short = np.flatnonzero((ids >= 0).sum(axis=1) < min(k, len(allowed)))
        if len(short) == 0:
            return scores, ids
        # All of them at once, so the allowed rows' vectors are fetched once.
        if len(allowed) <= FILTER_EXPRESSION_MAX:
            scores[short], ids[short] = exact_scores(self, queries[short], allowed, k)
        else:
            scores[short], ids[short] = search_allowed(self, queries[short], k, allowed)
        return scores, ids

    def _search(
        self, queries: np.ndarray, k: int, available: int, expression: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """Search the database (filtered by `expression`), leaving out rows above this
        reader's commit; asked again with more results while some query comes back short."""
        want = min(k, available)
        if want == 0:
            none = np.empty((len(queries), 0))
            return padded(none.astype(np.float32), none.astype(np.int64), k)
        if want > MAX_LIMIT:
            return exact_scores(self, queries, self.ids, k)
        limit = want
        while True:
            scores, ids = self._query(queries, limit, expression)
            # Rows of a commit in progress are not published yet: left out, and asked again
            # with more results where that leaves a query short.
            unpublished = ids >= self.manifest.next_id
            ids[unpublished] = -1
            scores[ids < 0] = -np.inf
            short = (ids >= 0).sum(axis=1) < want
            if not (short.any() and unpublished.any()) or limit >= MAX_LIMIT:
                break
            limit = min(MAX_LIMIT, limit * 4)
        return padded(*merge_top_k(scores, ids, k), k)

    def _query(
        self, queries: np.ndarray, limit: int, expression: str
    ) -> tuple[np.ndarray, np.ndarray]:
        params = dict(self.search_params)
        if "ef" in params or self.manifest.index_type.startswith("HNSW"):
            params["ef"] = max(int(params.get("ef", 0)), limit)  # Milvus needs ef >= limit
        found = self.store.conn.call(
            f"search {self._location.name}",
            "search",
            self._location.name,
            data=[q for q in queries],
            limit=limit,
            filter=expression,
            output_fields=["id"],
            search_params={"params": params},
        )
        scores = np.full((len(queries), limit), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), limit), -1, dtype=np.int64)
        for row, hits in enumerate(found):
            for column, hit in enumerate(hits[:limit]):
                scores[row, column] = hit["distance"]
                ids[row, column] = hit["id"]
        return scores, ids


# -- writing --------------------------------------------------------------------------------
