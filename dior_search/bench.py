"""The `bench` stage: retrieval metrics per dataset, condition and method.

Each method's indexes are built if missing (or resumed) with the index stage, then every
labelled image queries all the others by exact search over the stored vectors.

- `dior`: the condition in the prompt, one index per condition.
- `dior-unconditional`: the prompt without a condition, one index scored against every label.
- `clip`: a CLIP model's image embedding, one index (CLIP takes no condition).
- `generative`: the VLM's one-word answer to the prompt, embedded by a sentence encoder.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dior_search.datasets import UNCONDITIONAL, Collection
from dior_search.embedder import DiorEmbedder, Embedder, EmbedderSettings
from dior_search.errors import UsageError
from dior_search.index_store import IndexReader
from dior_search.indexing import IndexSettings, index_collection
from dior_search.metrics import retrieval_metrics

log = logging.getLogger(__name__)

METHODS = ("dior", "dior-unconditional", "clip", "generative")
# Methods whose one index serves every condition.
CONDITION_BLIND = frozenset({"dior-unconditional", "clip"})

Metrics = dict[str, float]
# dataset -> condition -> method -> metric name -> value
BenchResult = dict[str, dict[str, dict[str, Metrics]]]


@dataclass(frozen=True)
class BenchModels:
    """The models each method uses; DIOR's settings come as an EmbedderSettings."""

    dior: EmbedderSettings
    clip_model: str = "openai/clip-vit-large-patch14"
    text_encoder: str = "sentence-transformers/sentence-t5-base"


def load_method(method: str, models: BenchModels) -> tuple[Embedder, dict[str, Any]]:
    """The embedder of a method and what to record about it in the manifest."""
    dior = models.dior
    if method in ("dior", "dior-unconditional"):
        dior_embedder = DiorEmbedder(dior)
        return dior_embedder, dior_embedder.describe()
    if method == "clip":
        from dior_search.clip_embedder import ClipEmbedder, ClipSettings

        clip = ClipEmbedder(
            ClipSettings(model=models.clip_model, dtype=dior.dtype, device=dior.device)
        )
        return clip, clip.describe()
    if method == "generative":
        from dior_search.generative_embedder import GenerativeEmbedder, GenerativeSettings

        generative = GenerativeEmbedder(
            GenerativeSettings(
                model=dior.model,
                revision=dior.revision,
                text_encoder=models.text_encoder,
                template=dior.template,
                dtype=dior.dtype,
                device=dior.device,
                max_pixels=dior.max_pixels,
                batch_size=dior.batch_size,
                trust_remote_code=dior.trust_remote_code,
            )
        )
        return generative, generative.describe()
    raise UsageError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")


class MethodModels:
    """Each method's embedder, loaded on first use and shared across datasets."""

    def __init__(self, models: BenchModels) -> None:
        self.models = models
        self.loaded: dict[str, tuple[Embedder, dict[str, Any]]] = {}

    def get(self, method: str) -> tuple[Embedder, dict[str, Any]]:
        # Both DIOR methods use one model; only the prompt differs.
        key = "dior" if method == "dior-unconditional" else method
        if key not in self.loaded:
            self.loaded[key] = load_method(method, self.models)
        return self.loaded[key]


def indexed_conditions(method: str, conditions: Sequence[str]) -> list[str]:
    return [UNCONDITIONAL] if method in CONDITION_BLIND else list(conditions)


def evaluate_index(directory: Path, condition: str) -> Metrics:
    """Metrics of one index directory by one condition's labels, exact search."""
    reader = IndexReader(directory)
    if not reader.exact:
        log.warning(
            "%s stores compressed vectors (%s): metrics use their reconstructions",
            directory,
            reader.manifest.index_type,
        )
    _, vectors = reader.all_vectors()
    labels = [row.labels.get(condition) for row in reader.all_rows()]
    keep = np.array([label is not None for label in labels])
    kept_labels = [label for label in labels if label is not None]
    return retrieval_metrics(vectors[keep], kept_labels)


def run_bench(
    collection: Collection,
    conditions: Sequence[str],
    methods: Sequence[str],
    models: MethodModels,
    index_settings: IndexSettings,
    on_stage: Callable[[str, int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, dict[str, Metrics]]:
    """condition -> method -> metrics for one collection; indexes built where missing."""
    unknown = [c for c in conditions if c not in collection.conditions]
    if unknown:
        valid = ", ".join(collection.conditions)
        raise UsageError(f"{collection.name} has no labels for {unknown}; valid: {valid}")
    results: dict[str, dict[str, Metrics]] = {c: {} for c in conditions}
    for method in methods:
        embedder, info = models.get(method)
        targets = indexed_conditions(method, conditions)

        def start(total: int, method: str = method) -> None:
            if on_stage is not None:
                on_stage(f"{collection.name}: {method}", total)

        report = index_collection(
            collection, targets, embedder, info, index_settings, start, on_progress
        )
        for condition in conditions:
            directory = report.directories[
                UNCONDITIONAL if method in CONDITION_BLIND else condition
            ]
            results[condition][method] = evaluate_index(directory, condition)
    return results
