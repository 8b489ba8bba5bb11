"""The Milvus store: each index is one collection of a Milvus server or of a Milvus Lite
database (pip install 'dior-search[milvus]').

    --store milvus://HOST:PORT[/DATABASE]       a Milvus server (token: $DIOR_MILVUS_TOKEN)
    --store https://HOST[:PORT][/DATABASE]      a Milvus server over TLS (Zilliz Cloud, ...)
    --store milvus-lite:PATH.db                 Milvus Lite: a server inside this process,
                                                its data in the folder PATH.db

Layout: one collection per (collection, embedder, condition), `dior_<collection>__<embedder>
__<condition>`, where every character but an ASCII letter or digit is `_` and its UTF-8 bytes
in hex (so two indexes never share a name; a name longer than Milvus allows starts with a
hash of it).
Fields: `id` (INT64 primary key, the same ids as the folder store gives), `vector` (the unit
vector; inner product, so scores are cosine similarities), `path`, `content_hash`, `norm`, and
the row's other columns (`label_<name>`, ...) as dynamic fields, which filters can name.
The collection's property `dior_manifest` holds the manifest, verified on every open exactly
as a folder's manifest.json (checksum, field table, prompt) and checked against the model.

Commits: the rows added are inserted with ids from the manifest's `next_row_id` on, the rows
deleted are deleted, then the manifest property is replaced (generation + 1, `next_row_id`
past the new ids, the live row count). Readers answer only ids below their manifest's
`next_row_id`, so rows of a commit in progress stay invisible until it is published (Milvus
has no snapshots: a deletion shows at once); a writer removes rows above `next_row_id` that
an interrupted commit left, and a reader refuses an index whose row count is not its
manifest's (data the database lost). Compaction and durability are the database's own.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from dior_search.data.paths import from_bytes, is_text, name_bytes, readable
from dior_search.errors import IndexStoreError, UsageError, first_line
from dior_search.models.answers import Answer
from dior_search.models.embedder import EmbedderDescription
from dior_search.store.backend import (
    Compaction,
    DatabaseIndex,
    IndexEntry,
    IndexLocation,
    allowed_rows,
    exact_scores,
    ids_where,
    matching_entries,
    merge_top_k,
    padded,
    search_allowed,
)
from dior_search.store.index_types import AUTO, merge_search_params
from dior_search.store.layout import embedder_folder
from dior_search.store.lookups import RowLookups
from dior_search.store.manifest import (
    Database,
    Manifest,
    advance,
    check_same_index,
    now,
)
from dior_search.store.milvus_checks import (
    CHECK_FIELD,
    row_check,
    verify_rows,
    verify_scores,
)
from dior_search.store.milvus_types import (
    FLAT,
    NAME,
    canonical_milvus_spec,
    choose_milvus_type,
    default_search_params,
    parse_spec,
    search_params_for,
)
from dior_search.store.pending import PendingRows
from dior_search.store.schema import (
    ANSWER,
    ANSWER_LOGPROB,
    LOG_PARTITION,
    PATH_BYTES,
    Row,
    normalize,
)

log = logging.getLogger(__name__)

LITE = "milvus-lite:"
SERVER_SCHEMES = ("milvus", "http", "https")
TOKEN_VARIABLE = "DIOR_MILVUS_TOKEN"
PREFIX = "dior_"
SEPARATOR = "__"
# Milvus's longest collection name; longer ones keep a prefix and end in a hash.
MAX_NAME = 255
MANIFEST_KEY = "dior_manifest"
PART_KEY = "dior_part_"
PUBLISHER_KEY = "dior_publisher"
# A part's marker or the publisher's claim once a run is published: properties are set to
# this rather than dropped (Milvus servers before 2.5 cannot drop a collection's property).
CLEARED = ""
KIND = "milvus"
FIXED_FIELDS = ("id", "path", "content_hash", "norm")
MAX_PATH = 65_535
# Rows per query of an iterator, ids per delete or get, results per search (Milvus's limit).
ITERATE_BATCH = 16_384
ID_BATCH = 4096
MAX_LIMIT = 16_384
# Allowed ids up to this many are a filter expression Milvus applies itself.
FILTER_EXPRESSION_MAX = 16_384
# What a string literal of an expression escapes (Milvus reads no other escape).
STRING_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Bytes of vectors per insert request (gRPC messages are bounded).
INSERT_BYTES = 16 << 20
# A process that claims the publishing of a distributed run's parts waits this long for a
# competing claim before it reads back whose claim stands (Milvus has no locks).
CLAIM_WAIT_S = 2.0
# A reader that finds fewer rows than its manifest says reads them again this often.
OPEN_ATTEMPTS = 3
# Milvus Lite's servers opened by this process, by database folder: released with the last.
_lite_users: Counter[Path] = Counter()
_lite_lock = threading.Lock()


@dataclass(frozen=True)
class Target:
    """A parsed `--store` value: what messages show, and how to connect."""

    uri: str
    client_uri: str
    db_name: str = ""
    lite_path: Path | None = None
    token: str = field(default="", repr=False)


def parse_store_uri(spec: str) -> Target:
    """A Milvus `--store` value; UsageError naming the valid forms otherwise."""
    if spec.startswith(LITE):
        path = Path(spec.removeprefix(LITE)).expanduser().absolute()
        if path.suffix != ".db" or not spec.removeprefix(LITE):
            raise UsageError(
                f"--store {spec!r}: a Milvus Lite database is a folder whose name ends in .db "
                "(milvus-lite:PATH.db)"
            )
        return Target(f"{LITE}{path}", str(path), lite_path=path)
    parts = urlsplit(spec)
    if parts.scheme not in SERVER_SCHEMES or not parts.hostname:
        raise UsageError(
            f"--store {spec!r} is not a store: give milvus-lite:PATH.db, milvus://HOST:PORT or "
            "https://HOST[:PORT] (omit --store for the index folders under --indexes)"
        )
    if parts.username or parts.password or parts.query:
        raise UsageError(
            f"--store takes no user, password or query: put the Milvus token in the "
            f"environment variable {TOKEN_VARIABLE}"
        )
    scheme = "http" if parts.scheme == "milvus" else parts.scheme
    port = f":{parts.port}" if parts.port else ""
    address = f"{scheme}://{parts.hostname}{port}"
    shown = f"{parts.scheme}://{parts.hostname}{port}{parts.path.rstrip('/')}"
    return Target(shown, address, parts.path.strip("/"), token=os.environ.get(TOKEN_VARIABLE, ""))


# -- collection names -----------------------------------------------------------------------


def escape(text: str) -> str:
    """Letters and digits as they are, every other character as `_` and its UTF-8 bytes in
    hex: a name Milvus accepts, and a different one for every text.

    >>> escape("color"), escape("object color"), escape("a_b")
    ('color', 'object_20color', 'a_5fb')
    """
    out = []
    for char in text:
        if char.isascii() and char.isalnum():
            out.append(char)
        else:
            out.append("".join(f"_{byte:02x}" for byte in char.encode("utf-8", "surrogatepass")))
    return "".join(out)


def unescape(text: str) -> str:
    data = bytearray()
    position = 0
    while position < len(text):
        if text[position] == "_":
            data.append(int(text[position + 1 : position + 3], 16))
            position += 3
        else:
            data += text[position].encode()
            position += 1
    return data.decode("utf-8", "surrogatepass")


def collection_name(collection: str, embedder: str, condition: str) -> str:
    """The Milvus collection of (collection, embedder folder, condition).

    >>> collection_name("synthetic", "tiny", "color")
    'dior_synthetic__tiny__color'
    """
    name = PREFIX + SEPARATOR.join(escape(part) for part in (collection, embedder, condition))
    if len(name) <= MAX_NAME:
        return name
    # `_h` is no escape (h is no hex digit): a hashed name never equals a readable one.
    digest = hashlib.sha256(name.encode()).hexdigest()
    return f"{PREFIX}_h{digest}_{name.removeprefix(PREFIX)}"[:MAX_NAME]


def name_parts(name: str) -> tuple[str, str, str] | None:
    """(collection, embedder, condition) of a readable collection name (None: hashed, or not
    one of this store's names)."""
    if not name.startswith(PREFIX):
        return None
    body = name.removeprefix(PREFIX)
    parts: list[str] = []
    start = position = 0
    try:
        while position < len(body):
            if body.startswith(SEPARATOR, position):
                parts.append(unescape(body[start:position]))
                position += len(SEPARATOR)
                start = position
            elif body[position] == "_":
                int(body[position + 1 : position + 3], 16)  # an escape, or not this store's
                position += 3
            else:
                position += 1
        parts.append(unescape(body[start:]))
    except (ValueError, UnicodeDecodeError):
        return None
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else None


# -- the connection -------------------------------------------------------------------------


def quiet_client_logs() -> None:
    """pymilvus and Milvus Lite (and the gRPC server it runs in this process) log every
    failure with a traceback, also those they recover from; the store turns each failure into
    one line (IndexStoreError), so their logs are kept to criticals."""
    for name in ("pymilvus", "milvus_lite", "grpc._server"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


class Connection:
    """A MilvusClient whose failures are one-line IndexStoreErrors naming the store."""

    def __init__(self, target: Target, create: bool) -> None:
        quiet_client_logs()
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException

        self.target = target
        self.errors: tuple[type[BaseException], ...] = (MilvusException, ConnectionError)
        if target.lite_path is not None:
            check_lite_folder(target.lite_path, create)
        try:
            self.client = MilvusClient(
                uri=target.client_uri, token=target.token, db_name=target.db_name
            )
        except self.errors as exc:
            raise IndexStoreError(open_failure(target, exc)) from None

    def call(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """`client.<method>(...)`; IndexStoreError saying what could not be done."""
        try:
            return getattr(self.client, method)(*args, **kwargs)
        except self.errors as exc:
            raise IndexStoreError(f"{self.target.uri}: cannot {what}: {reason(exc)}") from None

    def close(self) -> None:
        with contextlib.suppress(*self.errors):
            self.client.close()


def reason(exc: BaseException) -> str:
    """A client error's message without its code and class name."""
    message = getattr(exc, "message", None) or str(exc)
    return first_line(Exception(message))


def check_lite_folder(path: Path, create: bool) -> None:
    """A Milvus Lite database folder to open: there (or creatable), and a database."""
    if path.exists() and not path.is_dir():
        raise IndexStoreError(
            f"{path} is not a Milvus Lite database (a file, where a database is a folder); "
            "move it away or name another .db"
        )
    if not path.exists():
        if not create:
            raise IndexStoreError(
                f"no Milvus Lite database {path}: run `dior-search index --store "
                f"{LITE}{path}` first"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not create and not ((path / "collections").is_dir() or (path / "LOCK").exists()):
        raise IndexStoreError(f"{path} is a folder but not a Milvus Lite database")


def open_failure(target: Target, exc: BaseException) -> str:
    """Why a store could not be opened, as one line."""
    path = target.lite_path
    if path is not None and lite_locked(path):
        return (
            f"{target.uri}: another process has this Milvus Lite database open (Milvus Lite "
            "serves one process at a time; several processes need a Milvus server)"
        )
    return f"cannot open {target.uri}: {reason(exc)}"


def lite_locked(path: Path) -> bool:
    """Whether another process holds Milvus Lite's lock on the database folder."""
    lock = path / "LOCK"
    if not lock.is_file():
        return False
    with lock.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


# -- the store ------------------------------------------------------------------------------


class MilvusStore:
    """Indexes as collections of one Milvus database (see module)."""

    def __init__(self, spec: str, create: bool = False) -> None:
        self.target = parse_store_uri(spec)
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


def same_index(built: tuple[str, dict[str, str]], wanted: str) -> bool:
    """Whether the index built (as the database describes it, possibly with more parameters)
    is of the type and build parameters `wanted` asks for.

    >>> same_index(("HNSW", {"efConstruction": "100", "M": "16"}), "HNSW:M=16,efConstruction=100")
    True
    >>> same_index(("FLAT", {}), "HNSW:M=16")
    False
    """
    kind = parse_spec(wanted, lite=False)
    index_type, params = built
    return index_type == kind.index_type and all(params.get(k) == v for k, v in kind.params)


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


def index_params(spec: str) -> Any:
    """pymilvus index parameters of type `spec` on `vector`, by inner product.

    The build parameters go as one `params` object, which a Milvus server and Milvus Lite
    both read (pymilvus's flat form is lost on Lite).
    """
    from pymilvus.milvus_client.index import IndexParam, IndexParams

    kind = parse_spec(spec, lite=False)

    class Nested(IndexParam):  # type: ignore[misc]
        def get_index_configs(self) -> dict[str, Any]:
            return {
                "index_type": kind.index_type,
                "metric_type": "IP",
                "params": kind.build_params(),
            }

    params = IndexParams()
    params.append(Nested("vector", kind.index_type, "vector"))
    return params


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
        """Every committed row's fields (its vector too, checked: milvus_checks), in id
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


class MilvusWriter(PendingRows):
    """Adds and deletes rows of one index of a Milvus store, a commit at a time.

    `staged` (a part of a distributed run): rows are written above the manifest's
    `next_row_id`, where readers do not see them, and nothing is published; the process
    that completes the run publishes every part at once (MilvusParts.publish). Milvus has no
    locks: one writer per index at a time (one run), or the parts of one distributed run.
    """

    def __init__(
        self,
        store: MilvusStore,
        location: DatabaseIndex,
        new_manifest: Manifest,
        staged: bool = False,
    ) -> None:
        self.store, self._location, self.staged = store, location, staged
        # Vectors of rows this writer deleted that a new row may still copy (a rename).
        self.retired = Spill()
        self.retired_answers: dict[int, Answer] = {}
        self.manifest = self.open_manifest(new_manifest)
        self.next_id = self.manifest.next_id
        self.changed_type = False
        self.notes: list[str] = []
        store.load(location)
        if not staged:
            self.remove_leftovers()
        self.read_rows()

    @property
    def location(self) -> DatabaseIndex:
        return self._location

    def open_manifest(self, new_manifest: Manifest) -> Manifest:
        """The index's manifest, or a new collection created with `new_manifest`."""
        store, location = self.store, self._location
        if not store.exists(location):
            manifest = as_database_manifest(new_manifest, store.lite)
            try:
                store.create(location, manifest)
                return manifest
            except IndexStoreError:
                if not store.exists(location):  # not another part that created it first
                    raise
        stored = store.read_manifest(location)[0]
        check_same_index(location, stored, new_manifest)
        return stored

    def remove_leftovers(self) -> None:
        """Delete rows an interrupted commit wrote but never published, and bring the row
        count up to date where it deleted rows without publishing."""
        store, location, manifest = self.store, self._location, self.manifest
        store.remove(location, where=f"id >= {manifest.next_id}")
        live = store.count(location, manifest.next_id)
        if live != manifest.rows:
            log.info("%s: %d rows, not %d; publishing the count", location, live, manifest.rows)
            self.publish(live)

    def read_rows(self) -> None:
        """The rows of the index (a staged writer: the rows its run staged so far)."""
        self.start_rows()
        edge = self.manifest.next_id
        where = f"id >= {edge}" if self.staged else f"id < {edge}"
        rows = self.store.iterate(self._location, where, ["id", "path", "content_hash", "$meta"])
        for row in sorted(rows, key=lambda r: int(r["id"])):
            has_answer = row.get(ANSWER) is not None
            self.remember(int(row["id"]), exact_path(row), row["content_hash"], True, has_answer)

    def publish(self, rows: int) -> None:
        """Publish the manifest as the next generation, with `rows` live rows."""
        self.manifest.database = Database(KIND, rows)
        advance(self.manifest)
        self.store.write_manifest(self._location, self.manifest)

    def set_index_type(self, spec: str | None, memory_budget: int | None) -> None:
        """Use another index type or budget; the index is rebuilt when the run packs (a
        database index can change its type at any time)."""
        manifest = self.manifest
        if spec is not None:
            spec = canonical_milvus_spec(spec, self.store.lite)
            if spec != manifest.index_spec:
                manifest.index_spec = spec
                self.changed_type = True
        if memory_budget is not None and memory_budget != manifest.memory_budget:
            manifest.memory_budget = memory_budget
            self.changed_type = True

    def stored(self, row_id: int) -> tuple[np.ndarray, Answer | None]:
        """The raw vector (unit vector x norm) and answer of a stored row, or of one this
        writer deleted."""
        retired = self.retired.get(row_id)
        if retired is not None:
            return retired, self.retired_answers.get(row_id)
        found = self.stored_rows([row_id]).get(row_id)
        if found is None:
            raise IndexStoreError(f"no stored row {row_id} in {self._location}")
        return found

    def stored_rows(self, ids: Sequence[int]) -> dict[int, tuple[np.ndarray, Answer | None]]:
        """Raw vectors (unit vector x norm) and answers of the stored rows among `ids`."""
        fields = ["vector", "norm", "$meta"]
        found = self.store.fetch(self._location, np.asarray(ids, np.int64), fields)
        return {
            row_id: (
                np.asarray(row["vector"], dtype=np.float32) * np.float32(row["norm"]),
                stored_answer(row),
            )
            for row_id, row in found.items()
        }

    def retire(self, ids: Sequence[int]) -> None:
        """Keep, before they are deleted, the vectors of rows that are their content's source:
        a file renamed in this run copies its vector after the old row is gone (a folder's
        shards keep deleted rows until compaction; a database drops them at once). A content's
        source with an answer counts too: a copy takes its vector and answer from it."""
        sources = set(self.sources.values()) | set(self.answered.values())
        wanted = [i for i in ids if i in sources]
        for low in range(0, len(wanted), ID_BATCH):
            found = self.stored_rows(wanted[low : low + ID_BATCH])
            self.retired.put({row_id: vector for row_id, (vector, _) in found.items()})
            self.retired_answers.update(
                {row_id: answer for row_id, (_, answer) in found.items() if answer is not None}
            )

    def write_shard(self) -> None:
        """Commit: write the queued rows, delete the rows deleted since the last commit, and
        publish the manifest (a staged writer publishes nothing)."""
        if not self.rows and not self.deleting:
            return
        location = self._location
        before = self.manifest.rows
        try:
            self.store.put(
                location, self.ids, self.vectors, self.rows, self.answers, replace=self.staged
            )
            self.retire(sorted(self.deleting))
            self.store.remove(location, sorted(self.deleting))
            if not self.staged:
                if self.ids:
                    self.manifest.next_row_id = max(self.manifest.next_row_id, self.ids[-1] + 1)
                self.publish(before + len(self.rows) - len(self.deleting))
        except IndexStoreError as exc:
            raise IndexStoreError(
                f"{exc}; the index keeps its {before} rows of its last commit"
            ) from None
        self.committed()

    def pack(self) -> None:
        """Build the index type the manifest asks for (`auto`: FLAT while small, then chosen
        by size and budget, once) and flush the rows to the database's storage."""
        if self.staged:
            return
        self.write_shard()
        manifest, location = self.manifest, self._location
        target = manifest.index_type
        if manifest.index_spec == AUTO:
            if manifest.index_type == FLAT:
                target = choose_milvus_type(
                    manifest.rows, manifest.dim, manifest.memory_budget
                ).spec
        else:
            target = manifest.index_spec
        if not same_index(self.store.built_index(location), target):
            log.info("%s: building a %s index", location, target)
            self.store.rebuild_index(location, target)
            if manifest.rows:
                self.notes.append(f"the index is now {target}")
        if target != manifest.index_type or self.changed_type:
            manifest.index_type = target
            manifest.search_params = default_search_params(target)
            self.publish(manifest.rows)
            self.changed_type = False
        self.store.conn.call(f"flush {location.name}", "flush", location.name)

    def compact(self, threshold: float = 0.0) -> Compaction:
        """Commit, then let the database compact (it drops deleted rows itself)."""
        self.write_shard()
        if not self.staged:
            self.store.conn.call(f"compact {self._location.name}", "compact", self._location.name)
        return Compaction()

    def close(self, threshold: float = 0.0) -> Compaction:
        """Commit what is queued, build the index type, compact."""
        try:
            self.write_shard()
            self.pack()
            return self.compact(threshold)
        finally:
            self.retired.close()

    def abort(self) -> None:
        """Drop what is queued: the index stays as of its last commit (no lock to release)."""
        self.clear_queue()
        self.retired.close()


class Spill:
    """Raw vectors by row id in a temporary file: any number of them, in bounded memory."""

    def __init__(self) -> None:
        self.file: Any = None
        self.where: dict[int, tuple[int, int]] = {}

    def put(self, vectors: dict[int, np.ndarray]) -> None:
        if self.file is None:
            # Open for the writer's life; closed (and gone) in close().
            self.file = tempfile.TemporaryFile()  # noqa: SIM115
        for row_id, vector in vectors.items():
            data = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
            self.file.seek(0, os.SEEK_END)
            self.where[row_id] = (self.file.tell(), len(data))
            self.file.write(data)

    def get(self, row_id: int) -> np.ndarray | None:
        found = self.where.get(row_id)
        if found is None or self.file is None:
            return None
        self.file.seek(found[0])
        vector: np.ndarray = np.frombuffer(self.file.read(found[1]), dtype=np.float32).copy()
        return vector

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        self.file, self.where = None, {}


def as_database_manifest(manifest: Manifest, lite: bool) -> Manifest:
    """A new index's manifest as a Milvus store keeps it: Milvus index types, no shards."""
    spec = canonical_milvus_spec(manifest.index_spec, lite)
    manifest.index_spec = spec
    manifest.index_type = FLAT if spec == AUTO else spec
    manifest.search_params = "" if spec == AUTO else default_search_params(spec)
    manifest.created = now()
    manifest.database = Database(KIND, 0)
    advance(manifest)
    return manifest


# -- distributed runs -----------------------------------------------------------------------


@dataclass(frozen=True)
class MilvusParts:
    """A distributed run on a Milvus store: each part's rows are staged in the collection
    (ids above the manifest's next_row_id), its completion is a collection property, and
    the process that finds every part complete publishes them all in one commit."""

    store: MilvusStore

    @property
    def single_process(self) -> bool:
        """Milvus Lite: one process at a time (parts run one after another)."""
        return self.store.lite

    def staged_writer(self, location: IndexLocation, manifest: Manifest) -> MilvusWriter:
        return MilvusWriter(self.store, self.store.own(location), manifest, staged=True)

    def mark_done(self, location: IndexLocation, part: str, plan: str, rows: int) -> None:
        where = self.store.own(location)
        marker = json.dumps({"plan": plan, "rows": rows})
        self.store.conn.call(
            f"mark {part} of {where.name} done",
            "alter_collection_properties",
            where.name,
            properties={PART_KEY + part: marker},
        )

    def missing(self, location: IndexLocation, parts: Sequence[str], plan: str) -> list[str]:
        where = self.store.own(location)
        if not self.store.exists(where):
            return list(parts)
        found = self.store.properties(where.name)
        done = {
            key.removeprefix(PART_KEY)
            for key, value in found.items()
            if key.startswith(PART_KEY)
            and value != CLEARED
            and json.loads(value).get("plan") == plan
        }
        return [part for part in parts if part not in done]

    def publish(self, location: IndexLocation, plan: str, next_id: int) -> int | None:
        """Publish the staged rows below `next_id`: the rows published, or None where another
        process claimed the publishing."""
        store, where = self.store, self.store.own(location)
        token = uuid.uuid4().hex
        store.conn.call(
            f"publish {where.name}",
            "alter_collection_properties",
            where.name,
            properties={PUBLISHER_KEY: token},
        )
        if not store.lite:
            time.sleep(CLAIM_WAIT_S)
        found = store.properties(where.name)
        if found.get(PUBLISHER_KEY) != token:
            return None
        manifest = store.read_manifest(where)[0]
        markers = [k for k, v in found.items() if k.startswith(PART_KEY) and v != CLEARED]
        rows = sum(int(json.loads(found[k]).get("rows", 0)) for k in markers)
        if manifest.next_row_id < next_id:
            manifest.next_row_id = next_id
            manifest.database = Database(KIND, store.count(where, next_id))
            advance(manifest)
            store.write_manifest(where, manifest)
        store.conn.call(
            f"publish {where.name}",
            "alter_collection_properties",
            where.name,
            properties=dict.fromkeys([*markers, PUBLISHER_KEY], CLEARED),
        )
        return rows
