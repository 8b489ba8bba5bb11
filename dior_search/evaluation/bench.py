"""The `bench` stage: retrieval metrics per dataset, condition and method.

Each method's indexes are built if missing (or resumed) with the index stage, then every
labelled image queries all the others by exact search over the stored vectors.

- `dior`: the condition in the prompt, one index per condition.
- `dior-unconditional`: the prompt without a condition, one index scored against every label.
- `clip`: a CLIP model's image embedding, one index (CLIP takes no condition).
- `generative`: the VLM's one-word answer to the prompt, embedded by a sentence encoder; with
  `generative_answers`, the answers the DIOR indexes store are embedded instead of generating
  them again (the same numbers where the stored answers are what it generates).
- `indirect`: InDiReCT, CLIP's image embedding projected onto the subspace in which CLIP's
  embeddings of texts about the condition vary.

With several layers, each DIOR method is scored once per layer (`dior layer -8`, ...), every
layer read from the same forward passes. Scores use cosine similarity (as search does) or
Euclidean distance on the raw vectors (as the paper's numbers did). Where a collection has
several labels, `leakage` says how much the other labels still drive each condition's
neighbours (see metrics.leakage). Where a DIOR index stores the model's answers, the model is
also scored as a tagger and a text search engine: `answer_accuracy` (the stored answer is the
label, normalised as answers are) and `text_precision@10` (each label value asked as a word:
the share of the top 10 with that label; mean over the values, and `text_precision@10_min`).
Every index is also clustered as the reference evaluation does (`ami`, `nmi`: k-means with as
many clusters as the condition has labels, see evaluation.clustering).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from dior_search import defaults
from dior_search.data.collections import (
    DATASETS,
    UNCONDITIONAL,
    Collection,
    LabelTableError,
    open_dataset,
)
from dior_search.errors import DiorError, IndexStoreError, InputError, ModelError, UsageError
from dior_search.evaluation.clustering import clustering_metrics
from dior_search.evaluation.metrics import Distance, leakage, retrieval_metrics
from dior_search.indexing.job import IndexSettings
from dior_search.indexing.layers import index_layers
from dior_search.indexing.run import index_collection
from dior_search.models import load_embedder
from dior_search.models.answers import normalize_word, query_word
from dior_search.models.dior import DiorEmbedder
from dior_search.models.embedder import Embedder
from dior_search.models.generative import AnswerTextEncoder
from dior_search.models.methods import settings_for
from dior_search.models.settings import EmbedderOptions
from dior_search.search.joined import JoinedIndexes
from dior_search.search.searcher import Searcher, SearchRequest
from dior_search.store.backend import IndexStore, Reader
from dior_search.store.schema import ANSWER, normalize

log = logging.getLogger(__name__)

# Each bench method and the embedding method it runs.
METHODS = {
    "dior": "dior",
    "dior-unconditional": "dior",
    "clip": "clip",
    "generative": "generative",
    "indirect": "indirect",
}
# Methods whose one index serves every condition.
CONDITION_BLIND = frozenset({"dior-unconditional", "clip"})

Metrics = dict[str, float]
# dataset -> condition -> method -> metric name -> value
BenchResult = dict[str, dict[str, dict[str, Metrics]]]
Stage = Callable[[str, int], None]
Progress = Callable[[int], None]


class MethodModels:
    """Each method's embedder, loaded on first use and shared across datasets."""

    def __init__(
        self,
        options: EmbedderOptions,
        layers: Sequence[int] = (),
        generative_answers: bool = False,
    ) -> None:
        """`layers`: the DIOR methods' hidden layers, several read from one forward pass
        (default: the options' one layer). `generative_answers`: the generative method embeds
        the answers the DIOR indexes store (its text encoder alone is loaded, with the DIOR
        model)."""
        self.options = options
        self.layers = list(dict.fromkeys(layers)) or [options.layer]
        self.generative_answers = generative_answers
        self.loaded: dict[str, Embedder] = {}
        self._answer_encoder: AnswerTextEncoder | None = None

    def get(self, method: str) -> Embedder:
        try:
            kind = METHODS[method]
        except KeyError:
            raise UsageError(f"unknown method {method!r}; valid: {', '.join(METHODS)}") from None
        if kind == "generative" and self.generative_answers:
            self.answer_encoder()
            kind = "dior"  # its indexes hold the answers
        # Both DIOR methods use one model; only the prompt differs.
        if kind not in self.loaded:
            if kind == "dior" and self.several_layers:
                self.loaded[kind] = DiorEmbedder(self.options.dior(), self.layers)
            else:
                self.loaded[kind] = load_embedder(settings_for(kind, self.options))
        return self.loaded[kind]

    def answer_encoder(self) -> AnswerTextEncoder:
        """The generative method's text side, for answers the DIOR indexes store."""
        if self._answer_encoder is None:
            self._answer_encoder = AnswerTextEncoder(self.options.generative())
        return self._answer_encoder

    @property
    def several_layers(self) -> bool:
        return len(self.layers) > 1

    def scored_as(self, method: str) -> list[str]:
        """The result rows of a method: itself, or one per layer for a DIOR method (named
        with its source where that is not the last input)."""
        if METHODS.get(method) != "dior":
            return [method]
        if self.options.source != defaults.DEFAULT_SOURCE:
            method = f"{method} {self.options.source}"
        if self.several_layers:
            return [layer_method(method, layer) for layer in self.layers]
        return [method]

    def loadable(self, methods: Sequence[str]) -> tuple[list[str], list[str]]:
        """(methods whose models load, one message per method that does not)."""
        usable, problems = [], []
        for method in methods:
            try:
                self.get(method)
            except UsageError:
                raise  # an option out of range (a --layer the model lacks): the user's to fix
            except DiorError as exc:
                problems.append(f"skipping method {method}: {exc}")
                continue
            usable.append(method)
        if not usable:
            raise ModelError(f"no method could be loaded: {'; '.join(problems)}")
        return usable, problems


def indexed_conditions(method: str, conditions: Sequence[str]) -> list[str]:
    return [UNCONDITIONAL] if method in CONDITION_BLIND else list(conditions)


def layer_method(method: str, layer: int) -> str:
    return f"{method} layer {layer}"


def evaluate_index(
    reader: Reader,
    rows: Sequence[dict[str, str]],
    condition: str,
    distance: Distance = "cosine",
) -> Metrics:
    """Metrics of one index by one condition's labels, exact search over its vectors (unit
    vectors for cosine, raw ones for Euclidean); `leakage` where there are other labels.

    `rows`: each indexed image's labels in the reader's id order, as `current_rows` gives
    them (the label table now, not the labels stored at index time); images without a label
    for `condition` are left out.
    """
    if not reader.exact:
        log.warning(
            "%s stores compressed vectors (%s): metrics use their reconstructions",
            reader.location,
            reader.manifest.index_type,
        )
    _, vectors = reader.all_vectors(raw=distance == "euclidean")
    return evaluate_vectors(vectors, rows, condition, distance)


def current_rows(reader: Reader, collection: Collection) -> list[dict[str, str]]:
    """Each indexed image's labels as the collection's label table says now (none for the
    images it no longer lists, said in a warning), in the reader's id order."""
    current = {item.path: item.labels for item in collection.items}
    paths = reader.paths()
    unlisted = sum(path not in current for path in paths)
    if unlisted:
        log.warning(
            "%d of the %d images indexed in %s are no longer in the label table of %s: left "
            "out of the metrics",
            unlisted,
            len(paths),
            reader.location,
            collection.name,
        )
    return [current.get(path, {}) for path in paths]


def evaluate_vectors(
    vectors: np.ndarray, rows: Sequence[dict[str, str]], condition: str, distance: Distance
) -> Metrics:
    """Metrics of the vectors of an index's rows (in its id order) by their labels `rows`:
    retrieval, clustering (on the same vectors: unit ones for cosine, raw for Euclidean) and
    leakage where there are other labels."""
    labels = [row.get(condition) for row in rows]
    keep = np.array([label is not None for label in labels], dtype=bool)
    kept = [label for label in labels if label is not None]
    metrics = retrieval_metrics(vectors[keep], kept, distance=distance)
    metrics.update(clustering_metrics(vectors[keep], kept))
    names = sorted({name for row in rows for name in row})
    if condition in names and len(names) > 1:
        by_name = {
            name: np.asarray([row.get(name) for row in rows], dtype=object)[keep] for name in names
        }
        metrics["leakage"] = leakage(vectors[keep], by_name, condition, distance=distance)
    return metrics


def answer_metrics(
    searcher: Searcher,
    reader: Reader,
    rows: Sequence[dict[str, str]],
    collection: str,
    condition: str,
) -> Metrics:
    """The model as a tagger and a text search engine under `condition` (none where its index
    stores no answers): `answer_accuracy`, and `text_precision@10` of each one-word label value
    asked as a word (mean, and `text_precision@10_min`). `rows` as for `evaluate_index`."""
    if reader.manifest.answers != "stored":
        return {}
    labels = [row.get(condition) for row in rows]
    answers = reader.column(ANSWER)
    pairs = [(a, normalize_word(label)) for a, label in zip(answers, labels, strict=True) if label]
    if not pairs:
        return {}
    metrics = {"answer_accuracy": float(np.mean([a == label for a, label in pairs]))}
    if not reader.manifest.embedder.reads_last_input:
        return metrics  # a text query scores by last-input states: none here
    precisions = []
    for value in sorted({label for label in labels if label is not None}):
        try:
            query_word(value)
        except UsageError:
            continue  # a phrase: no one-word answer can be it
        found = searcher.search(
            SearchRequest(conditions=(condition,), collection=collection, words=(value,), k=10)
        )
        precisions.append(np.mean([hit.labels.get(condition) == value for hit in found.hits]))
    if precisions:
        metrics["text_precision@10"] = float(np.mean(precisions))
        metrics["text_precision@10_min"] = float(np.min(precisions))
    return metrics


def generative_from_answers(
    encoder: AnswerTextEncoder,
    reader: Reader,
    collection: Collection,
    condition: str,
    distance: Distance,
) -> Metrics:
    """The generative method's metrics from the answers a DIOR index stores: each row's
    answer embedded as the baseline embeds a generated one."""
    if reader.manifest.answers != "stored":
        raise IndexStoreError(
            f"{reader.location} stores no answers to reuse: index it with --answers, or "
            "run the generative method without reusing them"
        )
    vectors = encoder.embed_answers(reader.manifest.condition["text"], reader.column(ANSWER))
    if distance == "cosine":
        vectors = normalize(vectors)
    return evaluate_vectors(vectors, current_rows(reader, collection), condition, distance)


def run_bench(
    collection: Collection,
    conditions: Sequence[str],
    methods: Sequence[str],
    models: MethodModels,
    index_settings: IndexSettings,
    on_stage: Stage | None = None,
    on_progress: Progress | None = None,
    distance: Distance = "cosine",
    store: IndexStore | None = None,
) -> dict[str, dict[str, Metrics]]:
    """condition -> method -> metrics for one collection; indexes built where missing (in
    `store`; None: the folder store under index_settings.indexes_dir)."""
    unknown = [c for c in conditions if c not in collection.conditions]
    if unknown:
        valid = ", ".join(collection.conditions)
        raise UsageError(f"{collection.name} has no labels for {unknown}; valid: {valid}")
    results: dict[str, dict[str, Metrics]] = {c: {} for c in conditions}
    for method in methods:
        targets = indexed_conditions(method, conditions)

        def start(total: int, method: str = method) -> None:
            if on_stage is not None:
                on_stage(f"{collection.name}: {method}", total)

        embedder = models.get(method)
        if method == "generative" and models.generative_answers:
            report = index_collection(
                collection, targets, embedder, index_settings, start, on_progress, store=store
            )
            searcher = Searcher.of_directories(list(report.indexes.values()))
            indexes = searcher.collection(collection.name)
            for condition in conditions:
                reader = searcher.reader(searcher.condition(indexes, condition))
                results[condition][method] = generative_from_answers(
                    models.answer_encoder(), reader, collection, condition, distance
                )
            continue
        if isinstance(embedder, DiorEmbedder) and models.several_layers:
            by_layer = index_layers(
                collection, targets, embedder, index_settings, start, on_progress, store
            )
            rows = models.scored_as(method)
            directories = {
                row: by_layer[layer] for row, layer in zip(rows, models.layers, strict=True)
            }
        else:
            report = index_collection(
                collection, targets, embedder, index_settings, start, on_progress, store=store
            )
            directories = {models.scored_as(method)[0]: report.indexes}
        for row, found in directories.items():
            searcher = Searcher.of_directories(list(found.values()))
            indexes = searcher.collection(collection.name)
            for condition in conditions:
                indexed = UNCONDITIONAL if method in CONDITION_BLIND else condition
                reader = searcher.reader(searcher.condition(indexes, indexed))
                labels_now = current_rows(reader, collection)
                results[condition][row] = evaluate_index(reader, labels_now, condition, distance)
                if METHODS[method] == "dior" and indexed == condition:
                    answered = answer_metrics(
                        searcher, reader, labels_now, collection.name, condition
                    )
                    results[condition][row].update(answered)
    return results


def open_bench_datasets(
    names: Sequence[str] | None, datasets_dir: Path
) -> tuple[list[Collection], list[str]]:
    """The datasets to evaluate (all whose images are present when `names` is None), and a
    message for each one left out."""
    collections, problems = [], []
    for name in names or list(DATASETS):
        try:
            collections.append(open_dataset(name, datasets_dir))
        except LabelTableError:
            raise  # a dataset that is there but whose labels cannot be read
        except InputError as exc:
            if names:
                raise
            problems.append(f"skipped {exc}")
    if not collections:
        raise InputError(f"no dataset to evaluate in {datasets_dir}: {'; '.join(problems)}")
    return collections, problems


def run_benches(
    collections: Sequence[Collection],
    conditions: Sequence[str] | None,
    methods: Sequence[str],
    models: MethodModels,
    index_settings: IndexSettings,
    on_stage: Stage | None = None,
    on_progress: Progress | None = None,
    distance: Distance = "cosine",
    store: IndexStore | None = None,
) -> BenchResult:
    """`run_bench` for each collection, under `conditions` (default: all its labelled ones)."""
    return {
        collection.name: run_bench(
            collection,
            conditions or list(collection.conditions),
            methods,
            models,
            index_settings,
            on_stage,
            on_progress,
            distance,
            store,
        )
        for collection in collections
    }


def shared_label_rate(
    joined: JoinedIndexes, weights: Sequence[float], label_names: Sequence[str], k: int = 10
) -> float:
    """Mean share of each indexed image's top k (itself left out) that has all its labels named.

    Every image indexed under all the conditions queries with its stored vectors, as `--id`.
    """
    first = joined.readers[0]
    rates = []
    for row_id in first.ids[joined.complete].tolist():
        labels = first.row(row_id).labels
        ranked = joined.search(joined.stored_query(row_id), weights, k + 1)
        others = [r.id for r in ranked if r.id != row_id][:k]
        rows = first.rows(others)
        same = [all(r.labels.get(n) == labels.get(n) for n in label_names) for r in rows]
        rates.append(sum(same) / max(1, len(same)))
    return float(np.mean(rates)) if rates else 0.0
