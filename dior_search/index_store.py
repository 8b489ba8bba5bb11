"""Sharded FAISS indexes with a Parquet table beside each shard and a JSON manifest.

Layout of one index directory (one collection, embedder and condition):

    manifest.json            what made the vectors, and every shard with its checksums
    shard-00000.faiss        FAISS index of L2-normalised vectors, ids stored with them
    shard-00000.parquet      one row per vector: id, path, content_hash, norm, label_<name> ...
    index.lock               held by the one `index` run allowed to write here

Every file is written to a temporary name, fsynced and renamed into place, and the manifest
is replaced after each shard, so an interrupted run loses at most the shard in progress.
Files that the manifest does not list are leftovers of such a run and are removed on resume.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import numpy as np

from dior_search import __version__
from dior_search.errors import IndexStoreError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LOCK = "index.lock"
SHARD_PREFIX = "shard-"
DEFAULT_SHARD_SIZE = 10_000
# What must match between an index and a query (or a resumed run) for vectors to be comparable.
EMBEDDER_IDENTITY = (
    "method",
    "model",
    "commit",
    "weights_fingerprint",
    "template",
    "layer",
    "position_scheme",
    "max_pixels",
    "max_side",
    "text_encoder",
    "text_encoder_fingerprint",
)


@dataclass(frozen=True)
class Row:
    """Metadata stored beside one vector."""

    path: str
    content_hash: str
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Shard:
    name: str
    rows: int
    first_id: int
    faiss_sha256: str
    parquet_sha256: str


@dataclass
class Manifest:
    collection: dict[str, str]
    condition: dict[str, str | None]
    prompt: str | None
    embedder: dict[str, Any]
    dim: int
    index_type: str = "Flat"
    metric: str = "inner_product"
    normalized: bool = True
    shard_size: int = DEFAULT_SHARD_SIZE
    shards: list[Shard] = field(default_factory=list)
    format_version: int = FORMAT_VERSION
    tool_version: str = __version__
    created: str = ""
    updated: str = ""

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST
        if not path.is_file():
            raise IndexStoreError(f"no index in {directory} (no {MANIFEST})")
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise IndexStoreError(f"unreadable manifest {path}: {exc}") from None
        version = data.get("format_version") if isinstance(data, dict) else None
        if version != FORMAT_VERSION:
            raise IndexStoreError(
                f"{path} has format version {version!r}; this dior-search reads version "
                f"{FORMAT_VERSION}: rebuild the index"
            )
        try:
            data["shards"] = [Shard(**s) for s in data["shards"]]
            return cls(**data)
        except (KeyError, TypeError) as exc:
            raise IndexStoreError(f"malformed manifest {path}: {exc}") from None


def identity(embedder: dict[str, Any]) -> dict[str, Any]:
    return {key: embedder.get(key) for key in EMBEDDER_IDENTITY}


def check_same_embedder(directory: Path, stored: dict[str, Any], wanted: dict[str, Any]) -> None:
    """Refuse to mix vectors of different models or prompts in one index."""
    differences = [
        f"{key} {stored.get(key)!r} (asked: {wanted.get(key)!r})"
        for key in EMBEDDER_IDENTITY
        if stored.get(key) != wanted.get(key)
    ]
    if differences:
        raise IndexStoreError(f"index {directory} was built with {'; '.join(differences)}")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is fsynced and renamed onto `path`."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        with tmp.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_manifest(directory: Path, manifest: Manifest) -> None:
    manifest.updated = now()
    with atomic_file(directory / MANIFEST) as tmp:
        tmp.write_text(manifest.to_json())


def shard_name(number: int) -> str:
    return f"{SHARD_PREFIX}{number:05d}"


class IndexWriter:
    """Appends vectors to one index directory, a shard at a time; resumes where it stopped."""

    def __init__(self, directory: Path, new_manifest: Manifest) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.lock = take_lock(directory)
        if (directory / MANIFEST).is_file():
            self.manifest = Manifest.read(directory)
            check_same_embedder(directory, self.manifest.embedder, new_manifest.embedder)
            if self.manifest.condition != new_manifest.condition:
                raise IndexStoreError(
                    f"index {directory} is for condition {self.manifest.condition}, "
                    f"not {new_manifest.condition}"
                )
        else:
            self.manifest = new_manifest
            self.manifest.created = now()
            # Published at once, empty: the directory is an index from its first moment.
            write_manifest(directory, self.manifest)
        self.remove_leftovers()
        self.known_hashes = self.read_hashes()
        self.next_id = self.manifest.rows
        self.vectors: list[np.ndarray] = []
        self.rows: list[Row] = []

    def remove_leftovers(self) -> None:
        listed = {s.name for s in self.manifest.shards}
        for path in self.directory.iterdir():
            stem = path.name.split(".")[0]
            is_shard_file = stem.startswith(SHARD_PREFIX) and stem not in listed
            if is_shard_file or path.name.endswith(".tmp"):
                log.info("removing %s, left by an interrupted run", path)
                path.unlink()

    def read_hashes(self) -> set[str]:
        import pyarrow.parquet as pq

        hashes: set[str] = set()
        for shard in self.manifest.shards:
            path = self.directory / f"{shard.name}.parquet"
            verify_file(path, shard.parquet_sha256)
            column = pq.read_table(path, columns=["content_hash"]).column("content_hash")
            hashes.update(column.to_pylist())
        return hashes

    def add(self, vector: np.ndarray, row: Row) -> None:
        """Queue one vector; a full shard is written out at once."""
        self.known_hashes.add(row.content_hash)
        self.vectors.append(vector)
        self.rows.append(row)
        if len(self.rows) >= self.manifest.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the queued vectors as a new shard and publish it in the manifest."""
        if not self.rows:
            return
        name = shard_name(len(self.manifest.shards))
        first_id = self.next_id
        ids = np.arange(first_id, first_id + len(self.rows), dtype=np.int64)
        raw = np.stack(self.vectors).astype(np.float32)
        norms = np.linalg.norm(raw, axis=1)
        vectors = normalize(raw)
        faiss_path = self.directory / f"{name}.faiss"
        parquet_path = self.directory / f"{name}.parquet"
        published = list(self.manifest.shards)
        try:
            with atomic_file(faiss_path) as tmp:
                write_faiss(tmp, vectors, ids, self.manifest.index_type)
            with atomic_file(parquet_path) as tmp:
                write_parquet(tmp, ids, norms, self.rows)
            self.manifest.shards.append(
                Shard(
                    name,
                    len(self.rows),
                    first_id,
                    sha256_file(faiss_path),
                    sha256_file(parquet_path),
                )
            )
            write_manifest(self.directory, self.manifest)
        except (OSError, RuntimeError) as exc:  # FAISS reports write failures as RuntimeError
            # The manifest on disk still lists only the earlier shards; files of this one are
            # leftovers that the next run removes.
            self.manifest.shards = published
            reason = getattr(exc, "strerror", None) or str(exc).strip().splitlines()[0]
            raise IndexStoreError(
                f"cannot write {name} in {self.directory}: {reason}; the index keeps its "
                f"{self.manifest.rows} rows written before"
            ) from None
        self.next_id += len(self.rows)
        self.vectors, self.rows = [], []

    def close(self) -> None:
        """Write what is queued (a last, partial shard) and release the lock."""
        try:
            self.flush()
        finally:
            self.release()

    def release(self) -> None:
        self.lock.close()


def take_lock(directory: Path) -> IO[str]:
    handle = (directory / LOCK).open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise IndexStoreError(
            f"another dior-search run is writing {directory}; wait for it to finish"
        ) from None
    return handle


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, so inner product is cosine similarity."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit: np.ndarray = vectors / np.maximum(norms, 1e-12)
    return unit


def write_faiss(path: Path, vectors: np.ndarray, ids: np.ndarray, index_type: str) -> None:
    import faiss

    index = faiss.index_factory(
        vectors.shape[1], f"IDMap2,{index_type}", faiss.METRIC_INNER_PRODUCT
    )
    index.add_with_ids(vectors, ids)
    faiss.write_index(index, str(path))


def write_parquet(path: Path, ids: np.ndarray, norms: np.ndarray, rows: Sequence[Row]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, Any] = {
        "id": pa.array(ids, type=pa.int64()),
        "path": pa.array([r.path for r in rows], type=pa.string()),
        "content_hash": pa.array([r.content_hash for r in rows], type=pa.string()),
        # The vector's length before normalisation: unit vector * norm is the raw embedding.
        "norm": pa.array(norms, type=pa.float32()),
    }
    for name in sorted({name for r in rows for name in r.labels}):
        columns[f"label_{name}"] = pa.array([r.labels.get(name) for r in rows], type=pa.string())
    pq.write_table(pa.table(columns), path)


def verify_file(path: Path, expected_sha256: str) -> None:
    """The file exists and has the checksum the manifest recorded; IndexStoreError otherwise."""
    if not path.is_file():
        raise IndexStoreError(f"index file missing: {path}")
    if sha256_file(path) != expected_sha256:
        raise IndexStoreError(f"index file damaged (checksum mismatch): {path}; rebuild the index")


@dataclass(frozen=True)
class Hit:
    id: int
    score: float
    path: str
    labels: dict[str, str]


class IndexReader:
    """A loaded index directory: search every shard, merge, and look up rows."""

    def __init__(self, directory: Path) -> None:
        import faiss
        import pyarrow.parquet as pq

        self.directory = directory
        self.manifest = Manifest.read(directory)
        self.shards: list[Any] = []
        self.tables: list[Any] = []
        for shard in self.manifest.shards:
            faiss_path = directory / f"{shard.name}.faiss"
            parquet_path = directory / f"{shard.name}.parquet"
            verify_file(faiss_path, shard.faiss_sha256)
            verify_file(parquet_path, shard.parquet_sha256)
            self.shards.append(faiss.read_index(str(faiss_path)))
            self.tables.append(pq.read_table(parquet_path))
        self.first_ids = np.array([s.first_id for s in self.manifest.shards], dtype=np.int64)

    def __len__(self) -> int:
        return self.manifest.rows

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query over all shards; ids are -1 where fewer exist."""
        queries = normalize(np.atleast_2d(queries))
        k = max(1, min(k, len(self)))
        scores = [np.full((len(queries), k), -np.inf, dtype=np.float32)]
        ids = [np.full((len(queries), k), -1, dtype=np.int64)]
        for index in self.shards:
            shard_scores, shard_ids = index.search(queries, min(k, index.ntotal))
            scores.append(shard_scores)
            ids.append(shard_ids)
        return merge_top_k(np.hstack(scores), np.hstack(ids), k)

    def locate(self, row_id: int) -> tuple[int, int]:
        """(shard number, row within it) of an id."""
        if len(self) == 0:
            raise IndexStoreError(f"index {self.directory} is empty")
        if not 0 <= row_id < len(self):
            raise IndexStoreError(f"no id {row_id} in {self.directory} (ids 0..{len(self) - 1})")
        shard = int(np.searchsorted(self.first_ids, row_id, side="right") - 1)
        return shard, row_id - int(self.first_ids[shard])

    def row(self, row_id: int) -> Row:
        shard, offset = self.locate(row_id)
        record = self.tables[shard].slice(offset, 1).to_pylist()[0]
        labels = {
            key.removeprefix("label_"): str(value)
            for key, value in record.items()
            if key.startswith("label_") and value is not None
        }
        return Row(record["path"], record["content_hash"], labels)

    def vector(self, row_id: int) -> np.ndarray:
        """The stored (normalised) vector of an id."""
        shard, _ = self.locate(row_id)
        stored: np.ndarray = self.shards[shard].reconstruct(row_id)
        return stored

    def hits(self, scores: np.ndarray, ids: np.ndarray) -> list[Hit]:
        """Hits of one query's result row, with their metadata."""
        found = []
        for score, row_id in zip(scores.tolist(), ids.tolist(), strict=True):
            if row_id < 0:
                continue
            row = self.row(row_id)
            found.append(Hit(row_id, score, row.path, row.labels))
        return found

    def all_vectors(self, raw: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of every row in id order: unit vectors, or raw embeddings if `raw`."""
        import faiss

        ids = np.concatenate([faiss.vector_to_array(s.id_map) for s in self.shards])
        # The wrapped index holds the vectors in insertion order, which is id order here.
        vectors = np.vstack(
            [faiss.downcast_index(s.index).reconstruct_n(0, s.ntotal) for s in self.shards]
        )
        if raw:
            norms = np.concatenate([t.column("norm").to_numpy() for t in self.tables])
            vectors *= norms[:, None]
        return ids, vectors

    def all_rows(self) -> Iterable[Row]:
        for row_id in range(len(self)):
            yield self.row(row_id)


def merge_top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the k highest scores per row (inner product: higher is closer); ties by lower id."""
    order = np.lexsort((np.where(ids < 0, np.iinfo(np.int64).max, ids), -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)
