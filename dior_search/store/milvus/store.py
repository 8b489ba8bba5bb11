"""`MilvusStore`: the IndexStore over one Milvus database (see the package's docstring);
mirrors store.folder of the folder store."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dior_search.defaults import DEFAULT_INDEXES_DIR
from dior_search.errors import IndexStoreError
from dior_search.models.answers import Answer
from dior_search.models.embedder import EmbedderDescription
from dior_search.store.backend import (
    Compaction,
    DatabaseIndex,
    IndexEntry,
    IndexLocation,
    matching_entries,
)
from dior_search.store.index_types import AUTO
from dior_search.store.layout import embedder_folder, skipped_listing
from dior_search.store.manifest import (
    Manifest,
)
from dior_search.store.milvus.checks import (
    CHECK_FIELD,
    row_check,
)
from dior_search.store.milvus.connection import (
    ID_BATCH,
    INSERT_BYTES,
    ITERATE_BATCH,
    Connection,
    _lite_lock,
    _lite_users,
    reason,
)
from dior_search.store.milvus.layout import (
    MANIFEST_KEY,
    PREFIX,
    collection_name,
    name_parts,
    parse_store_uri,
)
from dior_search.store.milvus.parts import MilvusParts
from dior_search.store.milvus.reader import MilvusReader
from dior_search.store.milvus.rows import MAX_PATH, answer_columns, database_columns
from dior_search.store.milvus.types import (
    FLAT,
    canonical_milvus_spec,
    choose_milvus_type,
    index_params,
)
from dior_search.store.milvus.writer import MilvusWriter
from dior_search.store.schema import (
    Row,
    normalize,
)


class MilvusStore:
    """Indexes as collections of one Milvus database (see module)."""

    def __init__(
        self, spec: str, create: bool = False, listings_dir: Path = DEFAULT_INDEXES_DIR
    ) -> None:
        self.target = parse_store_uri(spec)
        # Where a run lists the images it skipped (--indexes).
        self.listings_dir = listings_dir
        path = self.target.lite_path
        with _lite_lock:
            self.conn = Connection(self.target, create)
            if path is not None:
                _lite_users[path] += 1
        self.closed = False

    @property
    def name(self) -> str:
        return self.target.uri

    @property
    def lite(self) -> bool:
        return self.target.lite_path is not None

    def close(self) -> None:
        """Disconnect; the last store of a Milvus Lite database in this process stops its
        server, which lets another process open the database."""
        if self.closed:
            return
        self.closed = True
        path = self.target.lite_path
        with _lite_lock:
            self.conn.close()
            if path is None:
                return
            _lite_users[path] -= 1
            if _lite_users[path] <= 0:
                del _lite_users[path]
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_server(str(path))

    # -- locations and manifests ----------------------------------------------------------

    def location(
        self, collection: str, description: EmbedderDescription, condition: str
    ) -> DatabaseIndex:
        return self.location_named(
            collection_name(collection, embedder_folder(description), condition),
            (collection, embedder_folder(description), condition),
        )

    def location_named(self, name: str, parts: tuple[str, str, str] | None = None) -> DatabaseIndex:
        collection, embedder, condition = parts or name_parts(name) or ("", "", "")
        return DatabaseIndex(self.target.uri, name, collection, embedder, condition, self)

    def properties(self, name: str) -> dict[str, str]:
        described = self.conn.call(f"read collection {name}", "describe_collection", name)
        return dict(described.get("properties") or {})

    def read_manifest(self, location: DatabaseIndex) -> tuple[Manifest, str]:
        """The verified manifest of an index, and its text as stored."""
        text = self.properties(location.name).get(MANIFEST_KEY)
        if text is None:
            raise IndexStoreError(f"{location} is not a dior-search index (no manifest)")
        manifest = Manifest.parse(text, f"{location}")
        if manifest.database is None or manifest.shards:
            raise IndexStoreError(f"damaged manifest {location}: not a database index's")
        return manifest, text

    def write_manifest(self, location: DatabaseIndex, manifest: Manifest) -> None:
        """Publish `manifest` (already advanced to its new generation)."""
        self.conn.call(
            f"commit to {location.name}",
            "alter_collection_properties",
            location.name,
            properties={MANIFEST_KEY: manifest.to_json()},
        )

    def exists(self, location: DatabaseIndex) -> bool:
        return bool(self.conn.call("list collections", "has_collection", location.name))

    def manifest_at(self, location: IndexLocation) -> Manifest | None:
        where = self.own(location)
        return self.read_manifest(where)[0] if self.exists(where) else None

    def own(self, location: IndexLocation) -> DatabaseIndex:
        if not isinstance(location, DatabaseIndex) or location.uri != self.target.uri:
            raise IndexStoreError(f"{location} is not an index of {self.target.uri}")
        return location

    def find(
        self,
        collection: str | None = None,
        method: str | None = None,
        model: str | None = None,
        damaged: dict[IndexLocation, IndexStoreError] | None = None,
    ) -> list[IndexEntry]:
        entries = []
        for name in sorted(self.conn.call("list collections", "list_collections")):
            if not name.startswith(PREFIX):
                continue
            location = self.location_named(name)
            if collection is not None and location.collection not in ("", collection):
                continue
            try:
                manifest = self.read_manifest(location)[0]
            except IndexStoreError as exc:
                if damaged is None:
                    raise
                damaged[location] = exc
                continue
            if not location.collection:  # a hashed name: its parts from the manifest
                location = self.location_named(
                    name,
                    (
                        manifest.collection["name"],
                        embedder_folder(manifest.embedder),
                        str(manifest.condition["name"]),
                    ),
                )
            if collection is None or location.collection == collection:
                entries.append(IndexEntry(location, manifest))
        return matching_entries(entries, method, model)

    # -- readers and writers --------------------------------------------------------------

    def writer(
        self, location: IndexLocation, manifest: Manifest, wait_for_lock: bool = False
    ) -> MilvusWriter:
        return MilvusWriter(self, self.own(location), manifest)

    def reader(
        self,
        location: IndexLocation,
        mmap: bool | None = None,
        search_params: str = "",
        verify: bool = True,
    ) -> MilvusReader:
        return MilvusReader(self, self.own(location), search_params)

    def compact(
        self, location: IndexLocation, threshold: float, wait_for_lock: bool = False
    ) -> Compaction:
        """The database's own compaction (deleted rows go when it merges its segments)."""
        where = self.own(location)
        if not self.exists(where):
            raise IndexStoreError(f"no index {where}")
        self.conn.call(f"compact {where.name}", "compact", where.name)
        return Compaction()

    def check_index_spec(
        self, spec: str, dim: int, n_vectors: int, memory_budget: int, existing: Manifest
    ) -> None:
        if canonical_milvus_spec(spec, self.lite) == AUTO:
            choose_milvus_type(n_vectors, dim, memory_budget)  # raises if none fits

    def shared_parts(self) -> MilvusParts:
        return MilvusParts(self)

    def new_manifest(self, **fields: Any) -> Manifest:
        # A new index starts as auto, exact (FLAT) until the type it grows into is built.
        return Manifest(**fields, index_type=FLAT, index_spec=AUTO)

    def skipped_listing(self, collection: str, description: EmbedderDescription) -> Path:
        """Skipped images are listed under --indexes whatever the store (docs/stores.md)."""
        return skipped_listing(self.listings_dir, collection, description)

    # -- collections ----------------------------------------------------------------------

    def create(self, location: DatabaseIndex, manifest: Manifest) -> None:
        """A new collection for an index, its (empty) manifest published with it."""
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=True)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=manifest.dim)
        schema.add_field("path", DataType.VARCHAR, max_length=MAX_PATH)
        schema.add_field("content_hash", DataType.VARCHAR, max_length=64)
        schema.add_field("norm", DataType.FLOAT)
        self.conn.call(
            f"create collection {location.name}",
            "create_collection",
            location.name,
            schema=schema,
            index_params=index_params(manifest.index_type),
            properties={MANIFEST_KEY: manifest.to_json()},
            # A commit is read back at once (the row count, the checks): a server's default,
            # bounded staleness, could answer without the rows just written.
            consistency_level="Strong",
        )

    def built_index(self, location: DatabaseIndex) -> tuple[str, dict[str, str]]:
        """The index type the collection's vectors have, and its parameters as described."""
        found = self.conn.call(
            f"read the index of {location.name}", "describe_index", location.name, "vector"
        )
        params = found.get("params") or {}
        if isinstance(params, str):
            params = json.loads(params)
        return str(found.get("index_type", FLAT)), {str(k): str(v) for k, v in params.items()}

    def rebuild_index(self, location: DatabaseIndex, spec: str) -> None:
        """Replace the collection's vector index by one of type `spec`."""
        name = location.name
        self.conn.call(f"release {name}", "release_collection", name)
        self.conn.call(f"drop the index of {name}", "drop_index", name, "vector")
        self.conn.call(f"index {name}", "create_index", name, index_params(spec))
        self.load(location)

    def load(self, location: DatabaseIndex) -> None:
        """Make the collection searchable (a server keeps released collections on disk)."""
        state = self.conn.call(f"read {location.name}", "get_load_state", location.name)
        if "Loaded" not in str(state.get("state")):
            self.conn.call(f"load {location.name}", "load_collection", location.name)

    def count(self, location: DatabaseIndex, below: int) -> int:
        """Rows with ids below `below`."""
        found = self.conn.call(
            f"count the rows of {location.name}",
            "query",
            location.name,
            filter=f"id < {below}",
            output_fields=["count(*)"],
        )
        return int(found[0]["count(*)"])

    def iterate(
        self, location: DatabaseIndex, where: str, fields: Sequence[str]
    ) -> Iterator[dict[str, Any]]:
        """Every row matching `where`, with `fields` (`$meta`: the dynamic fields)."""
        iterator = self.conn.call(
            f"read the rows of {location.name}",
            "query_iterator",
            location.name,
            batch_size=ITERATE_BATCH,
            filter=where,
            output_fields=list(fields),
        )
        try:
            while True:
                try:
                    batch = iterator.next()
                except self.conn.errors as exc:
                    raise IndexStoreError(
                        f"{self.target.uri}: cannot read the rows of {location.name}: {reason(exc)}"
                    ) from None
                if not batch:
                    return
                yield from batch
        finally:
            with contextlib.suppress(*self.conn.errors):
                iterator.close()

    def put(
        self,
        location: DatabaseIndex,
        ids: Sequence[int],
        vectors: Sequence[np.ndarray],
        rows: Sequence[Row],
        answers: Sequence[Answer | None],
        replace: bool,
    ) -> None:
        """Write rows: unit vectors, their norms, the rows' columns and their answers (where
        given) (`replace`: upsert)."""
        if not ids:
            return
        raw = np.stack(vectors).astype(np.float32)
        norms = np.linalg.norm(raw, axis=1)
        unit = normalize(raw)
        step = max(1, INSERT_BYTES // (4 * raw.shape[1]))
        for low in range(0, len(ids), step):
            batch = []
            for p, row_id in enumerate(ids[low : low + step], start=low):
                columns = {**database_columns(rows[p]), **answer_columns(answers[p])}
                check = row_check(row_id, unit[p], float(norms[p]), columns)
                batch.append(
                    {
                        "id": int(row_id),
                        "vector": unit[p],
                        "norm": float(norms[p]),
                        **columns,
                        CHECK_FIELD: check,
                    }
                )
            method = "upsert" if replace else "insert"
            self.conn.call(f"write rows to {location.name}", method, location.name, batch)

    def remove(self, location: DatabaseIndex, ids: Sequence[int] = (), where: str = "") -> None:
        """Delete rows by id, or those matching `where`."""
        name = location.name
        if where:
            self.conn.call(f"delete rows of {name}", "delete", name, filter=where)
        ordered = sorted(ids)
        for low in range(0, len(ordered), ID_BATCH):
            batch = ordered[low : low + ID_BATCH]
            self.conn.call(f"delete rows of {name}", "delete", name, ids=batch)

    def fetch(
        self, location: DatabaseIndex, ids: np.ndarray, fields: Sequence[str]
    ) -> dict[int, dict[str, Any]]:
        """Rows by id (those that exist), with `fields`."""
        found: dict[int, dict[str, Any]] = {}
        for low in range(0, len(ids), ID_BATCH):
            batch = [int(i) for i in ids[low : low + ID_BATCH]]
            for row in self.conn.call(
                f"read rows of {location.name}",
                "get",
                location.name,
                ids=batch,
                output_fields=list(fields),
            ):
                found[int(row["id"])] = row
        return found
