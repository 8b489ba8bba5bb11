"""Sharded FAISS indexes with a Parquet table beside each shard and a JSON manifest.

Layout of one index directory (one collection, embedder and condition):

    manifest.json            what made the vectors, and every shard with its checksums
    shard-00000.faiss        FAISS index of L2-normalised vectors, ids stored with them
    shard-00000.parquet      one row per vector: id, path, content_hash, norm, label_<name> ...
    index.lock               held by the one `index` run allowed to write here

Every file is written to a temporary name, fsynced and renamed into place, and the manifest
is replaced after each shard, so an interrupted run loses at most the shard in progress.
Files that the manifest does not list are leftovers of such a run and are removed on resume.

Vectors are staged as exact `Flat` shards while they arrive; when the index type is another
(see index_types), closing the writer trains it once on a sample of the staged vectors
(`trained.faiss`) and packs the staged shards into shards of that type (index_pack).
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
from dior_search.errors import IndexStoreError, UsageError
from dior_search.index_types import (
    AUTO,
    DEFAULT_MEMORY_BUDGET,
    FLAT,
    apply_search_params,
    canonical_spec,
    merge_search_params,
    parse_search_params,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LOCK = "index.lock"
SHARD_PREFIX = "shard-"
TRAINED = "trained.faiss"
# Shards at least this large are memory-mapped by default rather than read into RAM.
MMAP_MIN_BYTES = 16 << 20
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
    # Ids increase within a shard; -1: first_id + rows - 1 (contiguous, as before this field).
    last_id: int = -1
    # Type of this shard's index: Flat while staged, the manifest's index_type once packed.
    index_type: str = FLAT

    @property
    def last(self) -> int:
        return self.last_id if self.last_id >= 0 else self.first_id + self.rows - 1


@dataclass(frozen=True)
class Trained:
    """The empty trained index every packed shard is cloned from."""

    name: str
    sha256: str
    train_size: int
    seed: int
    bytes_per_vector: int


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
    # What was asked for: auto, Flat or a factory string ("": index_type, as before the field).
    index_spec: str = ""
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    # Default search parameters (faiss.ParameterSpace syntax); a query may override them.
    search_params: str = ""
    # Rows per packed shard of a non-Flat type (0: not packed yet).
    packed_shard_size: int = 0
    trained: Trained | None = None
    format_version: int = FORMAT_VERSION
    tool_version: str = __version__
    created: str = ""
    updated: str = ""

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def next_id(self) -> int:
        """The id the next vector gets: one past the largest id (ids may have gaps)."""
        return max((s.last for s in self.shards), default=-1) + 1

    @property
    def spec(self) -> str:
        return self.index_spec or self.index_type

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
            if data.get("trained") is not None:
                data["trained"] = Trained(**data["trained"])
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


def next_shard_number(manifest: Manifest) -> int:
    """One past the highest shard number in use (packing retires numbers; none is reused)."""
    numbers = [int(s.name.removeprefix(SHARD_PREFIX)) for s in manifest.shards]
    return max(numbers, default=-1) + 1


class IndexWriter:
    """Appends vectors to one index directory, a shard at a time; resumes where it stopped.

    With `finalize=False` (a part of a distributed run) the shards stay Flat: the run that
    merges the parts trains and packs them.
    """

    def __init__(
        self,
        directory: Path,
        new_manifest: Manifest,
        finalize: bool = True,
        wait_for_lock: bool = False,
    ) -> None:
        self.directory = directory
        self.finalizes = finalize
        directory.mkdir(parents=True, exist_ok=True)
        self.lock = take_lock(directory, wait_for_lock)
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
        self.next_id = self.manifest.next_id
        self.vectors: list[np.ndarray] = []
        self.rows: list[Row] = []
        self.ids: list[int] = []

    def remove_leftovers(self) -> None:
        listed = {s.name for s in self.manifest.shards}
        if self.manifest.trained is not None:
            listed.add(self.manifest.trained.name)
        for path in self.directory.iterdir():
            stem = path.name.split(".")[0]
            is_shard_file = stem.startswith(SHARD_PREFIX) and stem not in listed
            is_trained_file = path.name == TRAINED and TRAINED not in listed
            if is_shard_file or is_trained_file or path.name.endswith(".tmp"):
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

    def set_index_type(self, spec: str | None, memory_budget: int | None) -> None:
        """Use another index type or budget from now on; refused once shards are packed."""
        manifest = self.manifest
        spec = None if spec is None else canonical_spec(spec)
        if spec is not None and spec != manifest.spec:
            packed = [s.name for s in manifest.shards if s.index_type != FLAT]
            if packed or manifest.trained is not None:
                raise IndexStoreError(
                    f"index {self.directory} is built as {manifest.spec!r} (asked: {spec!r}); "
                    "delete it to rebuild it with another index type"
                )
            manifest.index_spec = spec
            manifest.index_type = FLAT if spec == AUTO else spec
            manifest.search_params = ""
        if memory_budget is not None:
            manifest.memory_budget = memory_budget

    def add(self, vector: np.ndarray, row: Row, row_id: int | None = None) -> None:
        """Queue one vector (with the next id, or `row_id`); a full shard is written at once."""
        floor = self.ids[-1] + 1 if self.ids else self.next_id
        if row_id is None:
            row_id = floor
        elif row_id < floor:
            raise IndexStoreError(f"id {row_id} is not above the ids already in {self.directory}")
        self.known_hashes.add(row.content_hash)
        self.vectors.append(vector)
        self.rows.append(row)
        self.ids.append(row_id)
        if len(self.rows) >= self.manifest.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the queued vectors as a new shard and publish it in the manifest."""
        if not self.rows:
            return
        name = shard_name(next_shard_number(self.manifest))
        ids = np.array(self.ids, dtype=np.int64)
        raw = np.stack(self.vectors).astype(np.float32)
        norms = np.linalg.norm(raw, axis=1)
        vectors = normalize(raw)
        faiss_path = self.directory / f"{name}.faiss"
        parquet_path = self.directory / f"{name}.parquet"
        published = list(self.manifest.shards)
        try:
            # Staged as exact vectors: finalize() packs them into the index type.
            with atomic_file(faiss_path) as tmp:
                write_faiss(tmp, vectors, ids, FLAT)
            with atomic_file(parquet_path) as tmp:
                write_parquet(tmp, ids, norms, self.rows)
            self.manifest.shards.append(
                Shard(
                    name,
                    len(self.rows),
                    int(ids[0]),
                    sha256_file(faiss_path),
                    sha256_file(parquet_path),
                    last_id=int(ids[-1]),
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
        self.next_id = int(ids[-1]) + 1
        self.vectors, self.rows, self.ids = [], [], []

    def finalize(self) -> None:
        """Train the index type if needed and pack the staged Flat shards into it."""
        if self.finalizes:
            from dior_search.index_pack import pack_staged_shards

            pack_staged_shards(self.directory, self.manifest)

    def finish(self) -> None:
        """Write what is queued (a last, partial shard) and pack the staged shards."""
        self.flush()
        self.finalize()

    def close(self) -> None:
        """Write what is queued, pack the staged shards, and release the lock."""
        try:
            self.finish()
        finally:
            self.release()

    def release(self) -> None:
        self.lock.close()


def take_lock(directory: Path, wait: bool = False) -> IO[str]:
    handle = (directory / LOCK).open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
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


def reconstruct_rows(index: Any, start: int, count: int) -> np.ndarray:
    """Rows start .. start + count - 1 of an index's storage, as float32 numpy.

    The output buffer is passed in: faiss.contrib.torch_utils (which some libraries import,
    pytorch-metric-learning among them) makes FAISS return torch tensors otherwise.
    """
    out = np.empty((count, index.d), dtype=np.float32)
    index.reconstruct_n(start, count, out)
    return out


def read_shard_index(path: Path, mmap: bool | None = None) -> Any:
    """A shard's FAISS index, memory-mapped if asked (None: if the file is large).

    FAISS 1.10+ maps the file's contents in place (IO_FLAG_MMAP_IFC) for flat codes, IVF
    lists and HNSW storage, so only the pages a search touches are read.
    """
    import faiss

    if mmap is None:
        mmap = path.stat().st_size >= MMAP_MIN_BYTES
    flags = getattr(faiss, "IO_FLAG_MMAP_IFC", 0) if mmap else 0
    return faiss.read_index(str(path), flags)


class IndexReader:
    """A loaded index directory: search every shard, merge, and look up rows.

    `mmap`: map shard files instead of reading them (None: shards of 16 MiB or more).
    `search_params`: `name=value,...` over the manifest's defaults (`nprobe`, `efSearch`,
    `k_factor_rf`, ...), applied to every shard of a non-Flat type. `verify`: check every
    file's sha256 first (streamed: it fills the page cache, not the process's memory).
    """

    def __init__(
        self,
        directory: Path,
        mmap: bool | None = None,
        search_params: str = "",
        verify: bool = True,
    ) -> None:
        import pyarrow.parquet as pq

        self.directory = directory
        self.manifest = Manifest.read(directory)
        self.shards: list[Any] = []
        self.tables: list[Any] = []
        for shard in self.manifest.shards:
            faiss_path = directory / f"{shard.name}.faiss"
            parquet_path = directory / f"{shard.name}.parquet"
            if verify:
                verify_file(faiss_path, shard.faiss_sha256)
                verify_file(parquet_path, shard.parquet_sha256)
            self.shards.append(read_shard_index(faiss_path, mmap))
            self.tables.append(pq.read_table(parquet_path))
        self.first_ids = np.array([s.first_id for s in self.manifest.shards], dtype=np.int64)
        # Ids of each shard's rows, ascending: any increasing ids, not only contiguous ones.
        self.shard_ids = [
            np.asarray(t.column("id").to_numpy(), dtype=np.int64) for t in self.tables
        ]
        self.search_params = merge_search_params(self.manifest.search_params, search_params)
        self.set_search_params(self.search_params, strict=bool(search_params))

    def set_search_params(self, text: str, strict: bool = True) -> None:
        """Apply `name=value,...` search parameters to every non-Flat shard.

        Flat shards (exact search) take none: `strict` makes asking for one on an index of
        Flat shards only an error rather than a no-op.
        """
        searched = [
            (index, shard.index_type)
            for index, shard in zip(self.shards, self.manifest.shards, strict=True)
            if shard.index_type != FLAT
        ]
        if not searched and strict and parse_search_params(text):
            names = ", ".join(parse_search_params(text))
            raise UsageError(
                f"index {self.directory} is exact (Flat): search parameters ({names}) do not "
                "apply to it"
            )
        for index, index_type in searched:
            apply_search_params(index, text, index_type)

    @property
    def exact(self) -> bool:
        """Whether every shard stores its vectors exactly (Flat), so all_vectors() is exact."""
        return all(s.index_type == FLAT for s in self.manifest.shards)

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
        shard = int(np.searchsorted(self.first_ids, row_id, side="right") - 1)
        if shard >= 0:
            ids = self.shard_ids[shard]
            offset = int(np.searchsorted(ids, row_id))
            if offset < len(ids) and ids[offset] == row_id:
                return shard, offset
        last = self.manifest.next_id - 1
        raise IndexStoreError(f"no id {row_id} in {self.directory} (ids 0..{last})")

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
        """The stored (normalised) vector of an id; reconstructed from codes unless Flat."""
        import faiss

        shard, _ = self.locate(row_id)
        index = self.shards[shard]
        stored = np.empty(index.d, dtype=np.float32)  # numpy out: see reconstruct_rows
        try:
            index.reconstruct(row_id, stored)
        except RuntimeError:
            # An IVF without a re-ranking copy finds a vector through its direct map.
            ivf = faiss.try_extract_index_ivf(index)
            if ivf is None:
                raise
            ivf.make_direct_map()
            index.reconstruct(row_id, stored)
        return stored

    def top_hits(self, vector: np.ndarray, k: int) -> list[Hit]:
        """The k nearest rows to one query vector, with their metadata."""
        scores, ids = self.search(vector[None, :], k)
        return self.hits(scores[0], ids[0])

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
        """(ids, vectors) of every row in id order: unit vectors, or raw embeddings if `raw`.

        Exact for Flat shards; for other types, what the codes reconstruct (see `exact`).
        """
        import faiss

        ids = np.concatenate([faiss.vector_to_array(s.id_map) for s in self.shards])
        # The wrapped index holds the vectors in insertion order, which is id order here.
        vectors = np.vstack(
            [reconstruct_rows(faiss.downcast_index(s.index), 0, s.ntotal) for s in self.shards]
        )
        if raw:
            norms = np.concatenate([t.column("norm").to_numpy() for t in self.tables])
            vectors *= norms[:, None]
        return ids, vectors

    def all_rows(self) -> Iterable[Row]:
        for ids in self.shard_ids:
            for row_id in ids.tolist():
                yield self.row(row_id)


def merge_top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the k highest scores per row (inner product: higher is closer); ties by lower id."""
    order = np.lexsort((np.where(ids < 0, np.iinfo(np.int64).max, ids), -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)
