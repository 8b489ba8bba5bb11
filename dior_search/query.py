"""The `query` stage: find a collection's indexes and search them with an image or an id.

One condition searches its index as it is; several are joined on content hash and ranked by
the weighted mean of their cosine similarities (`multi_condition`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from dior_search.datasets import slug
from dior_search.embedder import DiorEmbedder, EmbedderSettings
from dior_search.errors import IndexStoreError, UsageError
from dior_search.images import load_image
from dior_search.index_store import MANIFEST, IndexReader, Manifest, check_same_embedder
from dior_search.multi_condition import (
    ConditionHit,
    JoinedIndexes,
    embed_conditions,
    normalize_weights,
)


@dataclass(frozen=True)
class QueryRequest:
    """What to search for, and where: `index` (one directory) or `collection` + `conditions`."""

    conditions: tuple[str, ...]
    weights: tuple[float, ...] | None = None
    k: int = 10
    image: Path | None = None
    row_id: int | None = None
    collection: str | None = None
    index: Path | None = None
    indexes_dir: Path = Path("indexes")
    model: str | None = None
    device: str = "auto"
    dtype: str | None = None
    trust_remote_code: bool = False
    search_params: str = ""
    mmap: bool | None = None


@dataclass(frozen=True)
class QueryAnswer:
    title: str
    conditions: tuple[str, ...]
    weights: tuple[float, ...]
    hits: list[ConditionHit]
    root: Path
    query_image: Image.Image | None
    query_path: Path
    caption: str


def run_query(request: QueryRequest) -> QueryAnswer:
    """Search with an image (embedded with the indexes' own settings) or an indexed id."""
    if request.k < 1:
        raise UsageError("-k must be at least 1")
    if (request.image is None) == (request.row_id is None):
        raise UsageError("give a query IMAGE or --id ID (one of them)")
    directories = query_directories(request)
    weights = normalize_weights(request.weights, len(directories))
    query_image = load_image(request.image) if request.image is not None else None
    readers = [
        IndexReader(d, mmap=request.mmap, search_params=request.search_params) for d in directories
    ]
    joined = JoinedIndexes(readers)
    first = readers[0]
    if query_image is not None:
        embedder = load_query_embedder(
            first.manifest,
            first.directory,
            request.device,
            request.dtype,
            request.trust_remote_code,
        )
        vectors = embed_conditions(embedder, readers, query_image)
    else:
        vectors = joined.stored_query(int(request.row_id or 0))
    root = Path(first.manifest.collection["root"])
    if request.image is not None:
        query_path, caption = request.image, request.image.name
    else:
        query_path = root / first.row(int(request.row_id or 0)).path
        caption = f"id {request.row_id}"
    names = tuple(str(r.manifest.condition["name"]) for r in readers)
    title = f"{first.manifest.collection['name']} under " + " + ".join(
        f"'{name}'" if len(names) == 1 else f"'{name}' ({w:.2f})"
        for name, w in zip(names, weights, strict=True)
    )
    return QueryAnswer(
        title=title,
        conditions=names,
        weights=weights,
        hits=joined.search(vectors, weights, request.k),
        root=root,
        query_image=query_image,
        query_path=query_path,
        caption=caption,
    )


def query_directories(request: QueryRequest) -> list[Path]:
    """The index directory of each condition asked for."""
    if request.index is not None:
        if len(request.conditions) > 1:
            raise UsageError(
                "--index takes one condition; combine conditions of a collection "
                "with --dataset NAME or --images DIR"
            )
        return [request.index]
    if not request.conditions:
        raise UsageError("--condition is required (or give --index DIR)")
    if request.collection is None:
        raise UsageError("give one of --dataset NAME, --images DIR or --index DIR")
    if len(set(request.conditions)) != len(request.conditions):
        raise UsageError(f"a condition is repeated in {list(request.conditions)}")
    return [
        find_index(request.indexes_dir, request.collection, c, request.model)
        for c in request.conditions
    ]


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
