"""Where indexes live: the one module that knows the folder layout under `--indexes`.

    indexes/<collection>/<embedder>/<condition>/     one index directory (see manifest, shards)
    indexes/<collection>/<embedder>/skipped.tsv      images the last run could not index

`<collection>` is a dataset's name or `<folder>-<hash>` for an image folder, `<embedder>` the
model and every setting that changes its vectors, `<condition>` the condition as it is when
it is a plain name (`color`), else made file-safe and followed by a hash of it
(`object-color-1a2b3c4d`), so that two conditions never share a folder.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict
from pathlib import Path

from dior_search import defaults
from dior_search.data.collections import hashed_slug, slug
from dior_search.data.paths import name_bytes
from dior_search.errors import IndexStoreError
from dior_search.models.embedder import EmbedderDescription
from dior_search.models.settings import GenerativeSettings
from dior_search.store.backend import IndexEntry, IndexLocation, matching_entries
from dior_search.store.manifest import MANIFEST, Manifest

SKIPPED_FILE = "skipped.tsv"
# A condition used as its own folder name: letters, digits, - and _ (no dot: never a file
# name such as skipped.tsv), at most 60 characters, and not ending like a hashed name.
PLAIN_CONDITION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,59}")
HASHED_NAME = re.compile(r".*-[0-9a-f]{8}")
# Settings named in the folder when they differ from their default.
FOLDER_SETTINGS = {
    "template": defaults.DEFAULT_TEMPLATE,
    "layer": defaults.DEFAULT_LAYER,
    "source": defaults.DEFAULT_SOURCE,
    "num_token": -1,
    "position_scheme": defaults.DEFAULT_POSITION_SCHEME,
    "components": defaults.INDIRECT_COMPONENTS,
}


def embedder_folder(description: EmbedderDescription) -> str:
    """Folder name of an embedder's indexes: method, model, and any non-default setting."""
    settings = description.settings
    parts = [model_slug(settings.model)]
    if description.method != "dior":
        parts[0] = f"{description.method}-{parts[0]}"
    if isinstance(settings, GenerativeSettings):
        parts.append(f"text-{model_slug(settings.text_encoder)}")
    chosen = asdict(settings)
    parts += [
        f"{key}-{chosen[key]}"
        for key, default in FOLDER_SETTINGS.items()
        if chosen.get(key, default) != default
    ]
    if chosen.get("max_pixels") is not None:
        parts.append(f"px-{chosen['max_pixels']}")
    if settings.max_side != defaults.REFERENCE_MAX_SIDE:
        parts.append(f"side-{settings.max_side}")
    return "+".join(parts)


def model_slug(model: str) -> str:
    """A Hub id as `org--name`; a local folder as its name and a hash of its absolute path."""
    path = Path(model)
    if path.is_dir():
        digest = hashlib.sha256(name_bytes(str(path.resolve()))).hexdigest()[:8]
        return f"{slug(path.name)}-{digest}"
    return slug(model)


def embedder_dir(indexes_dir: Path, collection: str, description: EmbedderDescription) -> Path:
    """The folder holding one embedder's indexes of a collection, one per condition."""
    return indexes_dir / slug(collection) / embedder_folder(description)


def index_dir(
    indexes_dir: Path, collection: str, description: EmbedderDescription, condition: str
) -> Path:
    """The index directory of (collection, embedder, condition)."""
    return embedder_dir(indexes_dir, collection, description) / condition_folder(condition)


def condition_folder(condition: str) -> str:
    """The folder name of a condition's index: one per condition (see module).

    >>> [condition_folder(c) for c in ("color", "object--color", "object/color", "a.b")]
    ['color', 'object--color', 'object--color-2b5005b2', 'a.b-2e7336dc']
    """
    if PLAIN_CONDITION.fullmatch(condition) and not HASHED_NAME.fullmatch(condition):
        return condition
    return hashed_slug(condition)


def skipped_listing(indexes_dir: Path, collection: str, description: EmbedderDescription) -> Path:
    return embedder_dir(indexes_dir, collection, description) / SKIPPED_FILE


def find_indexes(
    indexes_dir: Path,
    collection: str | None = None,
    method: str | None = None,
    model: str | None = None,
    damaged: dict[IndexLocation, IndexStoreError] | None = None,
) -> list[IndexEntry]:
    """Every index under `indexes_dir`, optionally only of one collection, method or model.

    `model` matches the model as given when indexing or the embedder's folder name. A damaged
    manifest raises IndexStoreError, unless `damaged` is given: then its directory and error
    are recorded there and the other indexes are returned.
    """
    pattern = f"{slug(collection) if collection else '*'}/*/*/{MANIFEST}"
    entries = []
    for path in sorted(indexes_dir.glob(pattern)):
        try:
            entries.append(IndexEntry(path.parent, Manifest.read(path.parent)))
        except IndexStoreError as exc:
            if damaged is None:
                raise
            damaged[path.parent] = exc
    return matching_entries(entries, method, model)


def is_index_of(directory: Path, collection: str, condition: str) -> bool:
    """Whether `directory` is where an index of (collection, condition) lives, by its folder
    names alone (all that is known of an index whose manifest cannot be read)."""
    names = (directory.parent.parent.name, directory.name)
    return names == (slug(collection), condition_folder(condition))
