"""Indexing several hidden layers of one DIOR model from one forward pass per batch.

Each layer gets its own indexes (its description names its layer, so they sit in their own
embedder folder, as a run with `--layer L` alone would write them); one job holds every
layer's targets and runs the model once per batch for all of them.
"""

from __future__ import annotations

from collections.abc import Sequence

from dior_search.data.collections import Collection
from dior_search.indexing.job import IndexJob, IndexSettings, Progress, plan_job
from dior_search.indexing.run import index_collection
from dior_search.models.dior import DiorEmbedder
from dior_search.models.layer_views import LayerStack
from dior_search.store.backend import IndexLocation, IndexStore
from dior_search.store.stores import open_store


def index_layers(
    collection: Collection,
    conditions: Sequence[str],
    embedder: DiorEmbedder,
    settings: IndexSettings,
    on_start: Progress | None = None,
    on_progress: Progress | None = None,
    store: IndexStore | None = None,
) -> dict[int, dict[str, IndexLocation]]:
    """Index the collection under each condition at each of the embedder's layers into
    `store` (None: the folder store under settings.indexes_dir): layer -> condition -> index
    location."""
    store = store or open_store(None, settings.indexes_dir)
    stack = LayerStack(embedder)
    jobs = [plan_job(collection, conditions, view, settings, store) for view in stack.views]
    targets = [t for j in jobs for t in j.targets]
    merged = IndexJob(collection, stack, jobs[0].description, settings, targets, store)
    index_collection(collection, conditions, stack, settings, on_start, on_progress, merged)
    return {
        view.layer: {t.condition: t.location for t in job.targets}
        for view, job in zip(stack.views, jobs, strict=True)
    }
