"""dior-search: conditional image search with DIOR embeddings from vision-language models.

The package reads as its pipeline, each layer importing only the layers below it:
data -> models -> store -> indexing / search -> evaluation / serve -> cli
(see docs/architecture.md).

The public API, imported on first use (so `import dior_search` and `dior-search --help` load
no model library):

- embedding: `DiorSettings` (and the baselines' `ClipSettings`, `GenerativeSettings`,
  `IndirectSettings`), `load_embedder(settings)` -> an `Embedder` whose
  `embed(images, conditions)` gives one vector per (image, condition);
- collections: `open_dataset(name, datasets_dir)`, `open_images(folder, shards or Parquet)`,
  `load_image(path)`;
- indexing: `index_collection(collection, conditions, embedder, IndexSettings(...), store=...)`;
- searching: `Searcher.open(indexes_dir, collection=...)` and
  `searcher.search(SearchRequest(conditions, image=... | id=..., weights=..., k=...))` ->
  a `SearchResult` of `Hit`s;
- stores: `open_store(None, indexes_dir)` (index folders) or `open_store("milvus-lite:x.db",
  ...)` / `open_store("milvus://host:19530", ...)`, for `index_collection(..., store=...)`,
  `Searcher.open(store)` and `export_collection(store, ...)`;
- export: `export_collection(...)`, `export_index(IndexReader(directory), out_dir)`;
- errors: `DiorError` and its kinds, each with the CLI's exit code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dior_search.data.collections import Collection, Item, open_dataset
    from dior_search.data.images import load_image
    from dior_search.data.sources import open_images
    from dior_search.errors import DiorError, IndexStoreError, InputError, ModelError, UsageError
    from dior_search.indexing.job import IndexReport
    from dior_search.indexing.run import index_collection
    from dior_search.indexing.settings import IndexSettings
    from dior_search.models import load_embedder
    from dior_search.models.embedder import Embedder
    from dior_search.models.settings import (
        ClipSettings,
        DiorSettings,
        GenerativeSettings,
        IndirectSettings,
    )
    from dior_search.search.request import Hit, SearchOptions, SearchRequest, SearchResult
    from dior_search.search.searcher import Searcher
    from dior_search.store.export import export_collection, export_index
    from dior_search.store.reader import IndexReader
    from dior_search.store.stores import open_store
    from dior_search.version import __version__

# Public name -> the module that defines it. `__version__` too: looked up on first use, not on
# import, so that `dior-search` handles Ctrl+C from its first milliseconds.
API = {
    "Collection": "dior_search.data.collections",
    "Item": "dior_search.data.collections",
    "open_dataset": "dior_search.data.collections",
    "open_images": "dior_search.data.sources",
    "load_image": "dior_search.data.images",
    "DiorError": "dior_search.errors",
    "UsageError": "dior_search.errors",
    "InputError": "dior_search.errors",
    "ModelError": "dior_search.errors",
    "IndexStoreError": "dior_search.errors",
    "IndexSettings": "dior_search.indexing.settings",
    "IndexReport": "dior_search.indexing.job",
    "index_collection": "dior_search.indexing.run",
    "load_embedder": "dior_search.models",
    "Embedder": "dior_search.models.embedder",
    "DiorSettings": "dior_search.models.settings",
    "ClipSettings": "dior_search.models.settings",
    "GenerativeSettings": "dior_search.models.settings",
    "IndirectSettings": "dior_search.models.settings",
    "Searcher": "dior_search.search.searcher",
    "SearchOptions": "dior_search.search.request",
    "SearchRequest": "dior_search.search.request",
    "SearchResult": "dior_search.search.request",
    "Hit": "dior_search.search.request",
    "IndexReader": "dior_search.store.reader",
    "open_store": "dior_search.store.stores",
    "export_collection": "dior_search.store.export",
    "export_index": "dior_search.store.export",
    "__version__": "dior_search.version",
}

__all__ = [
    "ClipSettings",
    "Collection",
    "DiorError",
    "DiorSettings",
    "Embedder",
    "GenerativeSettings",
    "Hit",
    "IndexReader",
    "IndexReport",
    "IndexSettings",
    "IndexStoreError",
    "IndirectSettings",
    "InputError",
    "Item",
    "ModelError",
    "SearchOptions",
    "SearchRequest",
    "SearchResult",
    "Searcher",
    "UsageError",
    "__version__",
    "export_collection",
    "export_index",
    "index_collection",
    "load_embedder",
    "load_image",
    "open_dataset",
    "open_images",
    "open_store",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use."""
    module = API.get(name)
    if module is None:
        raise AttributeError(f"module 'dior_search' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *API})
