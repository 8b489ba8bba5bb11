"""manifest.json: what made an index's vectors, and every shard with its checksums.

The manifest is the index's commit record: files it does not list do not exist for readers,
and every change is published by replacing it atomically (see docs/index-format.md). Each
commit increments its `generation`, so a reader can tell cheaply that a newer one exists.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dior_search import defaults
from dior_search.errors import IndexStoreError, UsageError
from dior_search.models.embedder import AnswerState, EmbedderDescription
from dior_search.models.prompts import build_prompt
from dior_search.store.files import atomic_file
from dior_search.store.index_types import FLAT
from dior_search.store.manifest_schema import MANIFEST_FIELDS, SchemaError, check_fields
from dior_search.version import __version__

FORMAT_VERSION = 2
# Version 1 had no tombstones and no generation: it reads as generation 0 with no deleted row,
# and the next commit writes it as version 2.
READABLE_VERSIONS = (1, 2)
# Fields a version-1 manifest cannot have: one that does is not what it says it is.
VERSION_2_FIELDS = ("generation", "next_shard", "next_row_id")
VERSION_2_SHARD_FIELDS = ("deleted", "tombstones", "tombstones_sha256")
MANIFEST = "manifest.json"
CHECKSUM = "checksum"
SHARD_PREFIX = "shard-"
TRAINED = "trained.faiss"


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
    # Rows of this shard deleted since it was written (their ids are in `tombstones`, a file
    # of this directory; "" when none): still in the files, never in answers.
    deleted: int = 0
    tombstones: str = ""
    tombstones_sha256: str = ""

    @property
    def last(self) -> int:
        return self.last_id if self.last_id >= 0 else self.first_id + self.rows - 1

    @property
    def live(self) -> int:
        """Rows not deleted."""
        return self.rows - self.deleted

    def files(self) -> list[str]:
        """The names of this shard's files in its index directory."""
        names = [f"{self.name}.faiss", f"{self.name}.parquet"]
        return [*names, self.tombstones] if self.tombstones else names


@dataclass(frozen=True)
class Trained:
    """The empty trained index every packed shard is cloned from."""

    name: str
    sha256: str
    train_size: int
    seed: int
    bytes_per_vector: int


@dataclass(frozen=True)
class Database:
    """An index kept in a database rather than in shard files: the database's kind and the
    live rows as of the last commit (checked when the index is opened, so that rows the
    database lost are noticed)."""

    kind: str
    rows: int


@dataclass
class Manifest:
    collection: dict[str, str]
    condition: dict[str, str | None]
    prompt: str | None
    embedder: EmbedderDescription
    dim: int
    index_type: str = FLAT
    metric: str = "inner_product"
    normalized: bool = True
    shard_size: int = defaults.DEFAULT_SHARD_SIZE
    shards: list[Shard] = field(default_factory=list)
    # What was asked for: auto, Flat or a factory string (older manifests: index_type).
    index_spec: str = ""
    memory_budget: int = defaults.DEFAULT_MEMORY_BUDGET
    # Default search parameters (faiss.ParameterSpace syntax); a query may override them.
    search_params: str = ""
    # Rows per packed shard of a non-Flat type (0: not packed yet).
    packed_shard_size: int = 0
    trained: Trained | None = None
    format_version: int = FORMAT_VERSION
    tool_version: str = __version__
    created: str = ""
    updated: str = ""
    # Incremented by every commit (write_manifest): readers compare it to see a newer state.
    generation: int = 0
    # One past the highest shard number ever listed: a number, once used, is never given to
    # another shard, so a file name always means the same content (0: from the shards listed).
    next_shard: int = 0
    # One past the highest row id ever given: ids of deleted rows are never given again, so
    # an id always means the same image (0: from the shards listed).
    next_row_id: int = 0
    # Whether every row carries the model's own answer (`stored`), or why not: `off` (not
    # asked for, or written before answers existed) or `not-last-layer`.
    answers: AnswerState = "off"
    # Set for an index kept in a database (no shards); absent from a folder's manifest.
    database: Database | None = None

    def __post_init__(self) -> None:
        self.index_spec = self.index_spec or self.index_type

    @property
    def rows(self) -> int:
        """Live rows: every image the index answers with."""
        if self.database is not None:
            return self.database.rows
        return sum(s.live for s in self.shards)

    @property
    def stored_rows(self) -> int:
        """Rows in the shard files, deleted ones included (until compaction drops them)."""
        return sum(s.rows for s in self.shards)

    @property
    def deleted(self) -> int:
        return sum(s.deleted for s in self.shards)

    @property
    def next_id(self) -> int:
        """The id the next vector gets: one past the largest id ever given (ids may have
        gaps)."""
        return max(max((s.last for s in self.shards), default=-1) + 1, self.next_row_id)

    def to_json(self) -> str:
        """The manifest file's text, with the checksum of its own content."""
        data = asdict(self)
        data["embedder"] = self.embedder.to_fields()
        if self.database is None:
            del data["database"]  # a folder's manifest has no such field
        data[CHECKSUM] = content_checksum(data)
        return json.dumps(data, indent=2, sort_keys=True)

    @property
    def expected_prompt(self) -> str:
        """The prompt the embedder's template makes of the condition text."""
        return build_prompt(self.embedder.settings.template, self.condition["text"])

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        """The manifest of `directory`, verified: checksum, every field, the prompt.

        IndexStoreError naming the file if it is missing, of another format version or
        damaged in any way these checks see.
        """
        path = directory / MANIFEST
        if not path.is_file():
            raise IndexStoreError(f"no index in {directory} (no {MANIFEST})")
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise IndexStoreError(f"unreadable manifest {path}: {exc.strerror or exc}") from None
        manifest = cls.parse(text, str(path))
        if manifest.database is not None:
            raise IndexStoreError(f"damaged manifest {path}: an index folder has no database")
        return manifest

    @classmethod
    def parse(cls, text: str | bytes, where: str) -> Manifest:
        """A manifest from its JSON text, verified as `read` does; errors name `where`."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise IndexStoreError(f"damaged manifest {where}: not JSON ({exc})") from None
        version = data.get("format_version") if isinstance(data, dict) else None
        if version not in READABLE_VERSIONS:
            raise IndexStoreError(
                f"{where} has format version {version!r}; this dior-search reads versions "
                f"{READABLE_VERSIONS[0]} to {READABLE_VERSIONS[-1]}: rebuild the index with it, "
                "or use the dior-search that wrote it"
            )
        try:
            return cls.from_fields(data)
        except (SchemaError, UsageError) as exc:
            raise IndexStoreError(f"damaged manifest {where}: {exc}; rebuild the index") from None

    @classmethod
    def from_fields(cls, data: dict[str, Any]) -> Manifest:
        """A manifest from its parsed JSON; SchemaError or UsageError saying what is wrong."""
        stored = data.pop(CHECKSUM, None)
        if stored is not None and stored != content_checksum(data):
            raise SchemaError("its content does not match its checksum")
        check_fields(data, MANIFEST_FIELDS)
        if data["format_version"] == 1:
            check_version_1(data)
        data["shards"] = [Shard(**s) for s in data["shards"]]
        if data.get("trained") is not None:
            data["trained"] = Trained(**data["trained"])
        if "database" in data:
            data["database"] = Database(**data["database"])
        data["embedder"] = EmbedderDescription.from_fields(data["embedder"])
        manifest = cls(**data)
        manifest.check_consistent()
        return manifest

    def check_consistent(self) -> None:
        """Fields that must agree with each other; SchemaError naming the first that does not."""
        if self.embedder.dim != self.dim:
            raise SchemaError(f"dim {self.dim} differs from the embedder's {self.embedder.dim}")
        if self.prompt != self.expected_prompt:
            raise SchemaError(
                f"its prompt {self.prompt!r} is not what template and condition text make of "
                f"it ({self.expected_prompt!r})"
            )
        names: set[str] = set()
        last = -1
        for shard in self.shards:
            if shard.name in names:
                raise SchemaError(f"shard {shard.name} is listed twice")
            names.add(shard.name)
            if shard.first_id <= last or shard.last < shard.first_id + shard.rows - 1:
                raise SchemaError(
                    f"shard {shard.name} holds ids {shard.first_id}..{shard.last} for "
                    f"{shard.rows} rows after ids up to {last}"
                )
            last = shard.last


def check_version_1(data: dict[str, Any]) -> None:
    """A version-1 manifest has none of version 2's fields (else it is not version 1)."""
    found = [key for key in VERSION_2_FIELDS if key in data] + [
        key for shard in data["shards"] for key in VERSION_2_SHARD_FIELDS if key in shard
    ]
    if found:
        raise SchemaError(f"format version 1 with the version-2 field {found[0]!r}")


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Publish `manifest` atomically as the next generation: readers see the old one or this
    one, never a mix. A version-1 manifest is written as the current version."""
    advance(manifest)
    with atomic_file(directory / MANIFEST) as tmp:
        tmp.write_text(manifest.to_json())


def advance(manifest: Manifest) -> None:
    """Make `manifest` the next generation's, as every commit publishes it."""
    manifest.updated = now()
    manifest.generation += 1
    manifest.format_version = FORMAT_VERSION
    manifest.next_shard = next_shard_number(manifest)
    manifest.next_row_id = manifest.next_id


Stamp = tuple[int, int, int]


def manifest_stamp(directory: Path) -> Stamp | None:
    """What changes whenever the manifest is replaced (a stat, not a read); None if absent.

    Every commit renames a new file into place, so its inode and modification time change.
    """
    try:
        status = (directory / MANIFEST).stat()
    except FileNotFoundError:
        return None
    return status.st_ino, status.st_mtime_ns, status.st_size


def check_same_embedder(
    where: object, stored: EmbedderDescription, wanted: EmbedderDescription
) -> None:
    """Refuse to mix vectors of different models or prompts in one index (`where`: the
    index's directory or database collection, as messages name it)."""
    differences = stored.differences(wanted)
    if differences:
        raise IndexStoreError(f"index {where} was built with {'; '.join(differences)}")


def check_same_index(where: object, stored: Manifest, wanted: Manifest) -> None:
    """Refuse to write rows of another model, prompt or condition into an index."""
    check_same_embedder(where, stored.embedder, wanted.embedder)
    if stored.condition != wanted.condition:
        raise IndexStoreError(
            f"index {where} is for condition {stored.condition}, not {wanted.condition}"
        )


def content_checksum(data: dict[str, Any]) -> str:
    """sha256 of a manifest's fields (its checksum left out) as canonical JSON: sorted keys,
    no spaces, ASCII."""
    fields = {key: value for key, value in data.items() if key != CHECKSUM}
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def shard_name(number: int) -> str:
    return f"{SHARD_PREFIX}{number:05d}"


def tombstones_name(shard: str, generation: int) -> str:
    """A shard's tombstone file as of a commit: a new name per commit, so a reader of an older
    generation never finds the file it checksummed replaced."""
    return f"{shard}.deleted-{generation}.parquet"


def listed_files(manifest: Manifest) -> set[str]:
    """Every file of the index directory that the manifest refers to."""
    names = {name for shard in manifest.shards for name in shard.files()}
    if manifest.trained is not None:
        names.add(manifest.trained.name)
    return names


def next_shard_number(manifest: Manifest) -> int:
    """One past the highest shard number ever used (packing and compaction retire numbers;
    none is reused)."""
    numbers = [int(s.name.removeprefix(SHARD_PREFIX)) for s in manifest.shards]
    return max(max(numbers, default=-1) + 1, manifest.next_shard)
