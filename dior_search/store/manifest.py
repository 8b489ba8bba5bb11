"""manifest.json: what made an index's vectors, and every shard with its checksums.

The manifest is the index's commit record: files it does not list do not exist for readers,
and every change is published by replacing it atomically (see docs/index-format.md).
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
from dior_search.models.embedder import EmbedderDescription
from dior_search.models.prompts import build_prompt
from dior_search.store.files import atomic_file
from dior_search.store.index_types import FLAT
from dior_search.store.manifest_schema import MANIFEST_FIELDS, SchemaError, check_fields
from dior_search.version import __version__

FORMAT_VERSION = 1
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

    def __post_init__(self) -> None:
        self.index_spec = self.index_spec or self.index_type

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def next_id(self) -> int:
        """The id the next vector gets: one past the largest id (ids may have gaps)."""
        return max((s.last for s in self.shards), default=-1) + 1

    def to_json(self) -> str:
        """The manifest file's text, with the checksum of its own content."""
        data = asdict(self)
        data["embedder"] = self.embedder.to_fields()
        data[CHECKSUM] = content_checksum(data)
        return json.dumps(data, indent=2, sort_keys=True)

    @property
    def expected_prompt(self) -> str:
        """The prompt the embedder's template makes of the condition text."""
        template = getattr(self.embedder.settings, "template", defaults.DEFAULT_TEMPLATE)
        return build_prompt(template, self.condition["text"])

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
            data = json.loads(path.read_bytes())
        except OSError as exc:
            raise IndexStoreError(f"unreadable manifest {path}: {exc.strerror or exc}") from None
        except (ValueError, RecursionError) as exc:
            raise IndexStoreError(f"damaged manifest {path}: not JSON ({exc})") from None
        version = data.get("format_version") if isinstance(data, dict) else None
        if version != FORMAT_VERSION:
            raise IndexStoreError(
                f"{path} has format version {version!r}; this dior-search reads version "
                f"{FORMAT_VERSION}: rebuild the index"
            )
        try:
            return cls.from_fields(data)
        except (SchemaError, UsageError) as exc:
            raise IndexStoreError(f"damaged manifest {path}: {exc}; rebuild the index") from None

    @classmethod
    def from_fields(cls, data: dict[str, Any]) -> Manifest:
        """A manifest from its parsed JSON; SchemaError or UsageError saying what is wrong."""
        stored = data.pop(CHECKSUM, None)
        if stored is not None and stored != content_checksum(data):
            raise SchemaError("its content does not match its checksum")
        check_fields(data, MANIFEST_FIELDS)
        data["shards"] = [Shard(**s) for s in data["shards"]]
        if data.get("trained") is not None:
            data["trained"] = Trained(**data["trained"])
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


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Publish `manifest` atomically: readers see the old one or this one, never a mix."""
    manifest.updated = now()
    with atomic_file(directory / MANIFEST) as tmp:
        tmp.write_text(manifest.to_json())


def check_same_embedder(
    directory: Path, stored: EmbedderDescription, wanted: EmbedderDescription
) -> None:
    """Refuse to mix vectors of different models or prompts in one index."""
    differences = stored.differences(wanted)
    if differences:
        raise IndexStoreError(f"index {directory} was built with {'; '.join(differences)}")


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


def next_shard_number(manifest: Manifest) -> int:
    """One past the highest shard number in use (packing retires numbers; none is reused)."""
    numbers = [int(s.name.removeprefix(SHARD_PREFIX)) for s in manifest.shards]
    return max(numbers, default=-1) + 1
