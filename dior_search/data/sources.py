"""Image sources besides a folder of files: WebDataset tar shards and Parquet files of images.

`--images` takes a folder of image files, one `.tar` shard, a brace pattern of shards
(`shards/{00000..00099}.tar`), a folder of `.tar` shards, one `.parquet` file, or a folder of
them. Every item of a collection is addressed by one string, relative to the collection root,
so that resuming, skipping and the changing-collection rules see an item as they see a file:

    photos/cat.jpg                  a file
    shards/00000.tar::000123        WebDataset sample `000123` of that shard (its image member)
    part-0.parquet::000123          the row whose `key` is `000123` (its row number without one)
    part-0.parquet[thumb]::000123   the same row, its image read from the column `thumb`

Shards follow WebDataset's layout: a sample's members share a key (the member name up to the
first dot of its base name) and its image is the first member whose extension is an image's
(jpg, png, ...); other members (json, txt, cls) are ignored. Shards must be uncompressed tars,
which is what WebDataset and img2dataset write, so a member is read by one seek.

Parquet files follow img2dataset's layout: the image bytes in a binary column (`jpg`; also
`png`, `webp`, `jpeg`, `image`, `img`, or the only binary column; a Hugging Face `image` struct
with a `bytes` field works too; `--image-column` chooses), the item's key in a `key` column
when there is one whose values are unique. Reading a row reads its row group's image column
once; the last few row groups read are kept.

Reading an item's bytes by its path is `data.reading.read_item`; this module lists sources and
locates their items.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from dior_search.data import collections
from dior_search.data.collections import Collection, Item, folder_collection_name, slug
from dior_search.data.images import IMAGE_SUFFIXES, MAX_FILE_BYTES
from dior_search.data.parquet import ParquetTable
from dior_search.data.paths import name_bytes
from dior_search.errors import DiorError, InputError, UsageError, first_line

TAR = ".tar"
PARQUET = ".parquet"
CONTAINER_SUFFIXES = (TAR, PARQUET)
# Columns that hold image bytes in img2dataset's output (by its encode format) and in
# Hugging Face datasets, in the order they are looked for.
IMAGE_COLUMNS = ("jpg", "png", "webp", "jpeg", "image", "img")
KEY_COLUMN = "key"
SEPARATOR = "::"
MEMBER_PATH = re.compile(
    r"^(?P<container>.*?\.(?:tar|parquet))(?:\[(?P<column>[^\]]+)\])?::(?P<key>.*)$", re.DOTALL
)
BRACES = re.compile(r"\{([^{}]*)\}")
NUMERIC_RANGE = re.compile(r"^(\d+)\.\.(\d+)$")
ROW_GROUPS_KEPT = 2


def over_cap(size: int) -> str | None:
    """Why an item of `size` bytes is not read: one cap for every source (a file, a shard's
    member, a Parquet cell), checked from the size before the bytes are read or decoded.

    >>> over_cap(5), over_cap(3 << 30)
    (None, '3221225472 bytes is over the 1024 MiB cap for an image file')
    """
    if size > MAX_FILE_BYTES:
        return f"{size} bytes is over the {MAX_FILE_BYTES >> 20} MiB cap for an image file"
    return None


class ItemReadError(InputError):
    """An item whose bytes cannot be read; `reason` says why, without the item's name."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"cannot read {name}: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class MemberPath:
    """An item inside a container: the container's path, the image column, the key."""

    container: str
    key: str
    column: str | None = None


def parse_member_path(path: str) -> MemberPath | None:
    """The container, column and key of a member's path; None for a plain file's path."""
    match = MEMBER_PATH.match(path)
    if match is None:
        return None
    return MemberPath(match["container"], match["key"], match["column"])


def member_path(container: str, key: str, column: str | None = None) -> str:
    return f"{container}[{column}]{SEPARATOR}{key}" if column else f"{container}{SEPARATOR}{key}"


def is_container(path: str) -> bool:
    return path.lower().endswith(CONTAINER_SUFFIXES)


def split_source_key(path: str) -> tuple[str, str | None]:
    """(source, key) of an item's path: its container and key, or the file's path and None."""
    member = parse_member_path(path)
    if member is None:
        return path, None
    column = f"[{member.column}]" if member.column else ""
    return f"{member.container}{column}", member.key


# -- opening a source ---------------------------------------------------------------------


def open_images(spec: Path, image_column: str | None = None) -> Collection:
    """The collection `--images SPEC` names: a folder, shard(s) or Parquet file(s), unlabelled."""
    text = str(spec)
    if "{" in text or "}" in text:
        root = brace_free_root(spec)
        files = [Path(name) for name in expand_braces(text)]
        kind = PARQUET if all(f.suffix.lower() == PARQUET for f in files) else TAR
        if kind == TAR and any(f.suffix.lower() != TAR for f in files):
            raise UsageError(f"{text}: a brace pattern must name .tar shards or .parquet files")
        if not any(f.is_file() for f in files):
            raise InputError(f"no file matches {text}")
    elif spec.is_file():
        kind = spec.suffix.lower()
        if kind not in CONTAINER_SUFFIXES:
            raise InputError(
                f"{spec} is a file but not a .tar shard or a .parquet file; give a folder of "
                "images, a shard, a brace pattern of shards, or Parquet files"
            )
        root, files = spec.parent, [spec]
    elif spec.is_dir() and not has_image(spec) and (containers := list_containers(spec)):
        root, files, kind = spec, containers, containers[0].suffix.lower()
    else:
        if image_column is not None:
            raise UsageError("--image-column applies only to Parquet files")
        return collections.open_folder(spec)
    if image_column is not None and kind != PARQUET:
        raise UsageError("--image-column applies only to Parquet files")
    root = root.resolve()
    items: list[Item] = []
    for file in files:
        relative = file.resolve().relative_to(root).as_posix()
        if kind == TAR:
            items += shard_items(root, relative)
        else:
            items += parquet_items(root, relative, image_column)
    return Collection(source_name(spec), root, items, {})


def list_containers(folder: Path) -> list[Path]:
    """A folder's .tar shards, or else its .parquet files (img2dataset writes a Parquet table
    of metadata beside each shard), sorted."""
    return sorted(folder.rglob(f"*{TAR}")) or sorted(folder.rglob(f"*{PARQUET}"))


def source_name(spec: Path) -> str:
    """The collection name of `--images SPEC`: its name and a hash of its absolute path, so
    two sources never share indexes; a brace pattern is named after its brace-free folder."""
    text = str(spec)
    if "{" not in text and "}" not in text:
        return folder_collection_name(spec)
    base = brace_free_root(spec)
    root = base.resolve()
    absolute = root.joinpath(*spec.parts[len(base.parts) :])
    digest = hashlib.sha256(name_bytes(str(absolute))).hexdigest()[:8]
    return f"{slug(root.name)}-shards-{digest}"


def has_image(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() for p in folder.rglob("*"))


def brace_free_root(pattern: Path) -> Path:
    """The deepest folder of a brace pattern that holds no brace: shard paths start there."""
    parts = pattern.parts
    first = next(i for i, part in enumerate(parts) if "{" in part or "}" in part)
    return Path(*parts[:first]) if first else Path(".")


def expand_braces(pattern: str) -> list[str]:
    """`{a,b}` alternatives and `{000..099}` ranges (zero-padded as written), as WebDataset."""
    match = BRACES.search(pattern)
    if match is None:
        if "{" in pattern or "}" in pattern:
            raise UsageError(f"unbalanced braces in {pattern!r}")
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end() :]
    numeric = NUMERIC_RANGE.match(match[1])
    if numeric:
        first, last = numeric[1], numeric[2]
        width = max(len(first), len(last)) if first.startswith("0") or last.startswith("0") else 0
        step = 1 if int(last) >= int(first) else -1
        choices = [f"{n:0{width}d}" for n in range(int(first), int(last) + step, step)]
    else:
        choices = match[1].split(",")
    return [f"{head}{choice}{rest}" for choice in choices for rest in expand_braces(tail)]


# -- WebDataset shards ----------------------------------------------------------------------


@dataclass(frozen=True)
class TarListing:
    """A shard's samples: key -> (data offset, size) of its image member, in shard order."""

    members: dict[str, tuple[int, int]] = field(default_factory=dict)
    # Why the shard could not be read (whole or past some member); None: read to its end.
    error: str | None = None


def webdataset_key(name: str) -> tuple[str, str]:
    """(key, extension) of a member name: the base name splits at its first dot."""
    folder, _, base = name.rpartition("/")
    stem, dot, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (extension if dot else "")


def list_shard(path: Path) -> TarListing:
    """The image members of a shard (cached while the file is unchanged)."""
    try:
        stat = path.stat()
    except OSError as exc:
        return TarListing(error=f"cannot read shard: {exc.strerror or exc}")
    return cached_shard_listing(path, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=64)
def cached_shard_listing(path: Path, _mtime_ns: int, _size: int) -> TarListing:
    members: dict[str, tuple[int, int]] = {}
    try:
        with tarfile.open(path, "r:") as shard:
            for info in shard:
                key, extension = webdataset_key(info.name)
                if info.isfile() and f".{extension.lower()}" in IMAGE_SUFFIXES:
                    members.setdefault(key, (info.offset_data, info.size))
    except (tarfile.TarError, OSError, EOFError) as exc:
        where = f" after {len(members)} images" if members else ""
        return TarListing(members, f"damaged shard{where}: {exc}")
    return TarListing(members)


def shard_items(root: Path, relative: str) -> list[Item]:
    """One item per sample of a shard; the shard itself as an item if it is damaged, so that
    the run lists it as skipped with the reason (and a re-run tries it again)."""
    listing = list_shard(root / relative)
    items = [Item(member_path(relative, key)) for key in listing.members]
    if listing.error is not None:
        items.append(Item(relative))
    return items


def read_shard_member(root: Path, member: MemberPath) -> bytes:
    shard = root / member.container
    listing = list_shard(shard)
    found = listing.members.get(member.key)
    if found is None:
        reason = listing.error or f"no image of key {member.key!r} in the shard"
        raise ItemReadError(member_path(member.container, member.key), reason)
    offset, size = found
    problem = over_cap(size)  # from the member's header, before any byte of it is read
    if problem is not None:
        raise ItemReadError(member_path(member.container, member.key), problem)
    with shard.open("rb") as handle:
        handle.seek(offset)
        data = handle.read(size)
    if len(data) < size:
        raise ItemReadError(
            member_path(member.container, member.key),
            f"truncated tar member ({len(data)} of {size} bytes)",
        )
    return data


# -- Parquet files --------------------------------------------------------------------------


@dataclass(frozen=True)
class ParquetListing:
    """A Parquet file's image column and its rows: key -> (row group, row within it)."""

    column: str | None = None
    keys: dict[str, tuple[int, int]] = field(default_factory=dict)
    error: str | None = None


def list_parquet(path: Path, column: str | None) -> ParquetListing:
    """The rows of a Parquet file (cached while the file is unchanged)."""
    try:
        stat = path.stat()
    except OSError as exc:
        return ParquetListing(error=f"cannot read Parquet file: {exc.strerror or exc}")
    return cached_parquet_listing(path, column, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=64)
def cached_parquet_listing(
    path: Path, column: str | None, _mtime_ns: int, _size: int
) -> ParquetListing:
    import pyarrow as pa

    try:
        # Arrow gets an open file: it cannot open a name that is not UTF-8 itself.
        with path.open("rb") as handle:
            parquet = ParquetTable(handle)
            chosen = image_column(path, parquet.schema, column)
            counts = parquet.group_rows()
            positions = [(g, r) for g, count in enumerate(counts) for r in range(count)]
            keys = [str(n) for n in range(len(positions))]
            field_type = (
                parquet.schema.field(KEY_COLUMN).type if KEY_COLUMN in parquet.names else None
            )
            if field_type is not None and not pa.types.is_nested(field_type):
                values = parquet.read([KEY_COLUMN]).column(KEY_COLUMN).to_pylist()
                named = [str(v) for v in values]
                # Keys name rows only where they are given and unique; row numbers otherwise.
                if None not in values and len(set(named)) == len(named):
                    keys = named
    except (OSError, ValueError, pa.ArrowException) as exc:
        return ParquetListing(error=f"unreadable Parquet file: {exc}")
    return ParquetListing(chosen, dict(zip(keys, positions, strict=True)))


def image_column(path: Path, schema: Any, asked: str | None) -> str:
    """The column holding image bytes: the one asked for, or found as the module says."""
    import pyarrow as pa

    def holds_bytes(name: str) -> bool:
        kind = schema.field(name).type
        if pa.types.is_struct(kind):
            return any(
                kind.field(i).name == "bytes" and is_binary(kind.field(i).type)
                for i in range(kind.num_fields)
            )
        return is_binary(kind)

    candidates: list[str] = [str(name) for name in schema.names if holds_bytes(name)]
    if asked is not None:
        if asked not in candidates:
            listed = ", ".join(candidates) or "none"
            raise UsageError(
                f"{path} has no image-bytes column {asked!r}; binary columns: {listed}"
            )
        return asked
    for name in IMAGE_COLUMNS:
        if name in candidates:
            return name
    if len(candidates) == 1:
        return str(candidates[0])
    if not candidates:
        names = ", ".join(schema.names)
        raise InputError(f"{path} has no column of image bytes (columns: {names})")
    raise UsageError(
        f"{path} has several binary columns ({', '.join(candidates)}): choose one with "
        "--image-column"
    )


def is_binary(kind: Any) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_binary(kind) or pa.types.is_large_binary(kind))


def parquet_items(root: Path, relative: str, column: str | None) -> list[Item]:
    """One item per row of a Parquet file (the file itself as an item if it is unreadable)."""
    auto = automatic_column(root / relative) if column is not None else None
    listing = list_parquet(root / relative, column)
    if listing.error is not None:
        return [Item(relative)]
    # The column is named in the path only when it is not the one found without asking.
    named = column if column is not None and column != auto else None
    return [Item(member_path(relative, key, named)) for key in listing.keys]


def automatic_column(path: Path) -> str | None:
    """The image column found without asking (None where none can be found alone)."""
    try:
        return list_parquet(path, None).column
    except UsageError:
        return None


class RowGroups:
    """The image column of the last few row groups read, shared by the loader threads."""

    def __init__(self, kept: int = ROW_GROUPS_KEPT) -> None:
        self.kept = kept
        self.groups: OrderedDict[tuple[Path, int, str, int], Any] = OrderedDict()
        self.lock = threading.Lock()

    def column(self, path: Path, group: int, column: str) -> Any:
        key = (path, path.stat().st_mtime_ns, column, group)
        with self.lock:
            if key in self.groups:
                self.groups.move_to_end(key)
                return self.groups[key]
            # Read under the lock: the threads wanting this group wait for one read of it.
            with path.open("rb") as handle:
                values = ParquetTable(handle).read_row_group(group, [column]).column(column)
            self.groups[key] = values
            while len(self.groups) > self.kept:
                self.groups.popitem(last=False)
            return values


ROW_GROUPS = RowGroups()


def read_parquet_row(root: Path, member: MemberPath) -> bytes:
    import pyarrow as pa

    name = member_path(member.container, member.key, member.column)
    path = root / member.container
    try:
        listing = list_parquet(path, member.column)
    except DiorError as exc:  # the file changed since it was listed: no such column now
        raise ItemReadError(name, first_line(exc)) from None
    if listing.error is not None or listing.column is None:
        raise ItemReadError(name, listing.error or "no image column")
    found = listing.keys.get(member.key)
    if found is None:
        raise ItemReadError(name, f"no row of key {member.key!r} in the file")
    group, row = found
    try:
        value = ROW_GROUPS.column(path, group, listing.column)[row]
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise ItemReadError(name, f"unreadable row group {group}: {exc}") from None
    data = value.as_py()
    if isinstance(data, dict):
        data = data.get("bytes")
    if not data:
        raise ItemReadError(name, f"no image bytes in column {listing.column!r}")
    # A cell's size is known once its row group is read (Parquet keeps no cell sizes); it is
    # refused before it is copied or decoded.
    problem = over_cap(len(data))
    if problem is not None:
        raise ItemReadError(name, problem)
    return bytes(data)


def read_container(root: Path, relative: str) -> str:
    """Why a whole container listed as an item is not readable (it is one only then)."""
    if relative.lower().endswith(TAR):
        error = list_shard(root / relative).error
    else:
        error = list_parquet(root / relative, None).error
    return error or "a shard or Parquet file, not an image"


def read_member(root: Path, member: MemberPath) -> bytes:
    """The bytes of a shard member or a Parquet row; ItemReadError with the reason if not."""
    if member.container.lower().endswith(TAR):
        return read_shard_member(root, member)
    return read_parquet_row(root, member)
