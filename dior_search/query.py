"""The `query` stage: find the index for a condition and search it with an image or an id."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dior_search.datasets import slug
from dior_search.embedder import DiorEmbedder, EmbedderSettings
from dior_search.errors import IndexStoreError
from dior_search.index_store import (
    MANIFEST,
    Hit,
    IndexReader,
    Manifest,
    check_same_embedder,
)


@dataclass(frozen=True)
class QueryResult:
    directory: Path
    manifest: Manifest
    hits: list[Hit]


def find_index(indexes_dir: Path, collection: str, condition: str, model: str | None) -> Path:
    """The index directory of a collection and condition, built by `model` if given."""
    base = indexes_dir / slug(collection)
    built = sorted(p.parent for p in base.glob(f"*/*/{MANIFEST}"))
    if model is not None:
        built = [d for d in built if Manifest.read(d).embedder.get("model") == model]
    matches = [d for d in built if d.name == slug(condition)]
    if not matches:
        have = sorted({d.name for d in built})
        by = f" built with model {model!r}" if model else ""
        listing = ", ".join(have) if have else "none: run `dior-search index` first"
        raise IndexStoreError(
            f"no index for condition {condition!r} of {collection}{by}; "
            f"conditions with an index: {listing}"
        )
    if len(matches) > 1:
        names = ", ".join(d.parent.name for d in matches)
        raise IndexStoreError(
            f"several indexes for condition {condition!r} of {collection} ({names}); "
            "pick one with --model or --index"
        )
    return matches[0]


def settings_from_manifest(
    manifest: Manifest, device: str, dtype: str | None, trust_remote_code: bool
) -> EmbedderSettings:
    """The embedder settings an index was built with; device and dtype may differ."""
    stored = manifest.embedder
    return EmbedderSettings(
        model=stored["model"],
        revision=stored.get("revision"),
        template=stored["template"],
        layer=stored["layer"],
        dtype=dtype or stored.get("dtype", "auto"),
        device=device,
        position_scheme=stored["position_scheme"],
        max_pixels=stored.get("max_pixels"),
        max_side=stored.get("max_side"),
        trust_remote_code=trust_remote_code,
    )


def load_query_embedder(
    manifest: Manifest, directory: Path, device: str, dtype: str | None, trust_remote_code: bool
) -> DiorEmbedder:
    """The embedder that made an index, checked to be the same model and prompt."""
    if manifest.embedder.get("method", "dior") != "dior":
        raise IndexStoreError(
            f"index {directory} holds {manifest.embedder['method']} vectors; "
            "query it with --id, or query a dior index"
        )
    embedder = DiorEmbedder(settings_from_manifest(manifest, device, dtype, trust_remote_code))
    check_same_embedder(directory, manifest.embedder, embedder.describe())
    return embedder


def query_vector(reader: IndexReader, vector: np.ndarray, k: int) -> list[Hit]:
    scores, ids = reader.search(vector[None, :], k)
    return reader.hits(scores[0], ids[0])


def embed_query(embedder: DiorEmbedder, manifest: Manifest, image: Image.Image) -> np.ndarray:
    vectors = embedder.embed([image], [manifest.condition["text"]])
    return np.asarray(vectors[0, 0])
