"""The offline demo: the synthetic test split, the tiny model, recall@1 per condition."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dior_search.data.images import load_image, os_reason
from dior_search.data.synthetic import (
    CONDITIONS,
    MAX_SPLIT_IMAGES,
    MIN_EVALUABLE_IMAGES,
    SyntheticItem,
    write_dataset,
)
from dior_search.errors import OutputError, UsageError
from dior_search.evaluation.metrics import neighbours, retrieval_metrics
from dior_search.models.dior import DiorEmbedder
from dior_search.models.settings import DiorSettings


@dataclass(frozen=True)
class ConditionScore:
    condition: str
    prompt_condition: str
    recall_at_1: float
    unconditional_recall_at_1: float


@dataclass(frozen=True)
class ExampleQuery:
    query: SyntheticItem
    condition: str
    hits: list[tuple[SyntheticItem, float]]


@dataclass(frozen=True)
class DemoResult:
    n_images: int
    scores: list[ConditionScore]
    examples: list[ExampleQuery]


def run_demo(
    settings: DiorSettings,
    data_dir: Path,
    *,
    n_images: int = 400,
    example_conditions: tuple[str, str] = ("color", "background"),
    top_k: int = 5,
    on_start: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> DemoResult:
    """Embed the synthetic test split under every condition and score retrieval by label.

    The images are written to `data_dir` (the demo's own folder; no label table is written
    there, the labels are the generator's), and any file there that does not hold the
    generated pixels is written again.
    """
    if not MIN_EVALUABLE_IMAGES <= n_images <= MAX_SPLIT_IMAGES:
        raise UsageError(
            f"the demo takes {MIN_EVALUABLE_IMAGES} to {MAX_SPLIT_IMAGES} images "
            f"(--n-images), got {n_images}"
        )
    items = write_demo_images(data_dir, n_images)
    images = [load_image(data_dir / item.file_name) for item in items]
    embedder = DiorEmbedder(settings)
    names = list(CONDITIONS)
    conditions: list[str | None] = [None, *(CONDITIONS[n] for n in names)]
    if on_start is not None:
        on_start(len(images) * len(conditions))
    vectors = embedder.embed(images, conditions, on_progress=on_progress)

    scores = []
    for column, name in enumerate(names, start=1):
        labels = [item.label(name) for item in items]
        conditional = retrieval_metrics(vectors[:, column], labels, ks=(1,))
        unconditional = retrieval_metrics(vectors[:, 0], labels, ks=(1,))
        scores.append(
            ConditionScore(
                condition=name,
                prompt_condition=CONDITIONS[name],
                recall_at_1=conditional["recall@1"],
                unconditional_recall_at_1=unconditional["recall@1"],
            )
        )
    examples = []
    for name in example_conditions:
        column = names.index(name) + 1
        found = neighbours(vectors[:, column], top_k)[0]
        unit = vectors[:, column] / np.linalg.norm(vectors[:, column], axis=1, keepdims=True)
        hits = [(items[j], float(unit[0] @ unit[j])) for j in found]
        examples.append(ExampleQuery(items[0], name, hits))
    return DemoResult(len(items), scores, examples)


def write_demo_images(data_dir: Path, n_images: int) -> list[SyntheticItem]:
    """The synthetic test split's first `n_images` images in `data_dir`; OutputError if the
    folder cannot be written."""
    try:
        return write_dataset(data_dir, {"test": n_images}, labels=False)
    except OSError as exc:
        where = exc.filename or data_dir
        raise OutputError(f"cannot write the demo images to {where}: {os_reason(exc)}") from None
