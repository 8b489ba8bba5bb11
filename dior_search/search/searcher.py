"""One search engine for the CLI, the server and bench: find indexes, embed, search, explain.

A `Searcher` serves the indexes of one embedder (model and settings), of one collection or of
all: it opens their readers on first use, loads the model only when an image must be embedded
(with the settings in the indexes' manifests; another model is refused), and answers a
`SearchRequest` (an image, stored vectors, or an indexed image's id, under one or several
weighted conditions; words to ask the model about under some conditions; filters) with a
`SearchResult`. A query in words alone loads no model: only its tokenizer and the output
head's rows of the words (see search.words). It is safe to use from several threads: forward
passes are serialised by one lock, searches run concurrently.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dior_search import defaults
from dior_search.data.collections import DATASETS, UNCONDITIONAL, LabelSource, current_labels
from dior_search.errors import IndexStoreError, InputError, UsageError, first_line
from dior_search.models.answers import WordHead, query_word
from dior_search.models.embedder import Embedder, EmbedderDescription

# DeadlineExceeded: re-exported, where callers have always found it.
from dior_search.search.deadline import DeadlineExceeded as DeadlineExceeded
from dior_search.search.deadline import check_deadline
from dior_search.search.distinct import check_distinct, distinct_ranking
from dior_search.search.examples import check_example_conditions, example_vectors
from dior_search.search.facets import Facets, count_answers
from dior_search.search.filters import (
    Filter,
    current_row_labels,
    parse_filters,
    passing_rows,
    store_filter,
)
from dior_search.search.joined import JoinedIndexes, Ranked, normalize_weights
from dior_search.search.terms import ComposedQuery, Term, check_terms, compose, term_conditions
from dior_search.search.words import WordCondition, WordRanking, WordScores
from dior_search.store.backend import (
    DatabaseIndex,
    IndexEntry,
    IndexLocation,
    IndexStore,
    Manifest,
    Reader,
    check_same_embedder,
)
from dior_search.store.schema import ANSWER, Row
from dior_search.store.stores import (
    ManifestStamp,
    check_has_indexes,
    index_first,
    is_index_of,
    manifest_stamp,
    open_reader,
    open_store,
)

log = logging.getLogger(__name__)

JOINED_CACHE_ENTRIES = 64
# Bounds on numbers a request gives: ids are int64, and k beyond a million is no search.
MAX_ID = (1 << 63) - 1
MAX_K = 1_000_000


class NotIndexed(IndexStoreError):
    """A collection, condition or id that the searched indexes do not hold."""

    http_status = 404


class DamagedIndex(NotIndexed):
    """An index whose files were found damaged (or gone) when it was opened."""


class NoAnswers(NotIndexed):
    """A condition asked about in words (or filtered by answer) whose index stores none."""


Stamp = tuple[tuple[str, int, int, int], ...]


def files_stamp(location: IndexLocation) -> Stamp | None:
    """What changes when any file of a folder index does (stats, no reads); None for a
    database's index, or a folder that cannot be listed."""
    if isinstance(location, DatabaseIndex):
        return None
    try:
        with os.scandir(location) as entries:
            found = [(e.name, *_stat_of(e)) for e in entries]
    except OSError:
        return None
    return tuple(sorted(found))


def _stat_of(entry: os.DirEntry[str]) -> tuple[int, int, int]:
    try:
        status = entry.stat(follow_symlinks=False)
    except OSError:
        return (-1, -1, -1)
    return status.st_ino, status.st_size, status.st_mtime_ns


def check_k(k: int, max_k: int = MAX_K) -> None:
    """UsageError unless 1 <= k <= max_k."""
    if not 1 <= k <= max_k:
        raise UsageError(f"k must be between 1 and {max_k}")


@dataclass(frozen=True)
class SearchOptions:
    """How the model runs and how indexes are searched; none of it changes the vectors."""

    device: str = "auto"
    # None: the dtype the indexes were built with.
    dtype: str | None = None
    trust_remote_code: bool = False
    search_params: str = ""
    mmap: bool | None = None
    # The most results one request may ask for (None: no limit).
    max_k: int | None = None


@dataclass(frozen=True)
class ConditionIndex:
    """One index (a directory, or a database's collection): a collection's images under one
    condition."""

    name: str
    text: str | None
    location: IndexLocation
    root: Path
    rows: int
    # Whether its rows carry the model's answers (see models.embedder.AnswerState).
    answers: str = "off"


@dataclass(frozen=True)
class CollectionIndexes:
    """A collection's indexes, one per condition, all of one embedder."""

    name: str
    conditions: dict[str, ConditionIndex]

    @property
    def images(self) -> int:
        return max(c.rows for c in self.conditions.values())


@dataclass(frozen=True)
class SearchRequest:
    """What to search for: under each condition, a word to ask the model about, or (for the
    conditions without one) exactly one of an image, its vectors, or an indexed image's id."""

    conditions: tuple[str, ...] = ()
    # None: the searcher's only collection.
    collection: str | None = None
    # One per condition searched by image (those without a word).
    weights: tuple[float, ...] | None = None
    k: int = defaults.DEFAULT_K
    image: Image.Image | None = None
    # The query already embedded under each condition without a word (e.g. a cached upload).
    vectors: tuple[np.ndarray, ...] | None = None
    id: int | None = None
    # The condition whose index `id` is from (None: the first condition).
    id_condition: str | None = None
    # Per condition, a word to rank by the model's answers (None: ranked by the image).
    words: tuple[str | None, ...] | None = None
    # Filters: `CONDITION=WORD` (an answer) or `label:NAME=VALUE` (see search.filters).
    where: tuple[str, ...] = ()
    # A composed query (search.terms): examples, positive or negative, per condition; then
    # no image, vectors or id. The single-image query is one positive term per condition.
    terms: tuple[Term, ...] = ()
    # Hide a hit whose similarity to a better-ranked one is at least this (near-copies).
    distinct: float | None = None

    def word_of(self, position: int) -> str | None:
        return None if self.words is None else self.words[position]

    @property
    def searched_conditions(self) -> tuple[str, ...]:
        """The conditions named, or (none named) those of the terms in order."""
        return self.conditions or term_conditions(self.terms)


@dataclass(frozen=True)
class Hit:
    """One result; `id` is in the first condition's index."""

    rank: int
    id: int
    score: float
    scores: dict[str, float]
    path: str
    labels: dict[str, str]
    # The model's stored answer under each searched condition that has answers.
    answers: dict[str, str] = field(default_factory=dict)
    # Per condition asked about in words: "answer" (its stored answer is the word) or
    # "first-token" (scored by the word's first token).
    scored_by: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        found = {
            "rank": self.rank,
            "id": self.id,
            "score": self.score,
            "scores": self.scores,
            "path": self.path,
            "labels": self.labels,
            "answers": self.answers,
        }
        if self.scored_by:
            found["scored_by"] = self.scored_by
        return found


@dataclass(frozen=True)
class QueryImage:
    """The indexed image an id query searched with (all None for an image query)."""

    id: int | None = None
    condition: str | None = None
    path: str | None = None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchResult:
    collection: CollectionIndexes
    conditions: tuple[ConditionIndex, ...]
    # One per condition searched by image (those without a word), in order.
    weights: tuple[float, ...]
    query: QueryImage
    hits: list[Hit]
    # The word asked about under each condition that has one.
    words: dict[str, str] = field(default_factory=dict)
    filters: tuple[Filter, ...] = ()
    # Paths of hits that the collection's label table no longer lists (their labels: none).
    unlisted: tuple[str, ...] = ()
    terms: tuple[Term, ...] = ()
    # Near-copies of better-ranked hits left out (`distinct`).
    hidden: int = 0

    @property
    def root(self) -> Path:
        """The folder the hits' paths are relative to."""
        return self.conditions[0].root

    @property
    def title(self) -> str:
        names = [c.name for c in self.conditions if c.name not in self.words]
        parts = [
            f"'{name}'" if len(names) == 1 else f"'{name}' ({w:.2f})"
            for name, w in zip(names, self.weights, strict=True)
        ]
        parts += [f"'{name}' = {word!r}" for name, word in self.words.items()]
        if self.terms:
            parts = [
                f"{'+' if t.positive else '-'}'{t.condition}' {t.example}"
                + (f" ({t.weight:g})" if t.weight != 1 else "")
                for t in self.terms
            ] + [f"'{name}' = {word!r}" for name, word in self.words.items()]
        where = f" where {', '.join(map(str, self.filters))}" if self.filters else ""
        return f"{self.collection.name} under " + " + ".join(parts) + where


def entry_condition(entry: IndexEntry) -> ConditionIndex:
    manifest = entry.manifest
    return ConditionIndex(
        name=entry.condition,
        text=manifest.condition["text"],
        location=entry.location,
        root=Path(manifest.collection["root"]),
        rows=manifest.rows,
        answers=manifest.answers,
    )


class Searcher:
    """Search the indexes of one embedder: single or several conditions, by image or by id."""

    def __init__(
        self,
        entries: Sequence[IndexEntry],
        options: SearchOptions | None = None,
        embedder: Embedder | None = None,
        damaged: dict[IndexLocation, IndexStoreError] | None = None,
    ) -> None:
        # Indexes whose manifests are damaged: left out, their error raised when a request
        # names their condition.
        self.damaged = dict(damaged or {})
        if not entries:
            raise next(iter(self.damaged.values()), IndexStoreError("no indexes to search"))
        folders = sorted({e.embedder_folder for e in entries})
        if len(folders) > 1:
            raise IndexStoreError(
                f"indexes of several embedders: {', '.join(folders)}; pick one with --model"
            )
        self.options = options or SearchOptions()
        self.entries = list(entries)
        self._embedder = embedder
        if embedder is not None:
            self.entries = self._matching(embedder)
        self.collections = self._catalog(self.entries)
        self._embed_lock = threading.Lock()
        self._readers: dict[IndexLocation, Reader] = {}
        self._reader_locks: dict[IndexLocation, threading.Lock] = {}
        self._readers_lock = threading.Lock()
        self._joined: OrderedDict[tuple[tuple[IndexLocation, int, int], ...], JoinedIndexes] = (
            OrderedDict()
        )
        self._joined_lock = threading.Lock()
        self._word_head: WordHead | None = None
        self._word_head_lock = threading.Lock()
        # Indexes found damaged when opened: the error, until their files change (so a
        # request after it does not re-open and re-hash the whole index).
        self._damage: dict[IndexLocation, tuple[Stamp, str]] = {}
        # Each folder index's manifest stamp when the catalog last read it.
        self._manifest_stamps: dict[IndexLocation, ManifestStamp] = {}

    @classmethod
    def open(
        cls,
        indexes: Path | IndexStore,
        *,
        collection: str | None = None,
        model: str | None = None,
        method: str | None = "dior",
        options: SearchOptions | None = None,
        load_model: bool = False,
    ) -> Searcher:
        """The indexes of a store (a folder of indexes, or any `IndexStore`), of one
        collection, method and model if given.

        `load_model` loads the model at once and leaves out, with a warning, the indexes
        built with other settings; otherwise it is loaded on the first image query. Damaged
        indexes are left out (listed in `damaged`); a request under one of their conditions
        gets their error.
        """
        store = open_store(None, indexes) if isinstance(indexes, Path) else indexes
        check_has_indexes(store)
        damaged: dict[IndexLocation, IndexStoreError] = {}
        entries = store.find(collection, method, model, damaged=damaged)
        if not entries and damaged:
            raise next(iter(damaged.values()))
        if not entries:
            what = f" of collection {collection!r}" if collection else ""
            kind = {None: "", "dior": " DIOR"}.get(method, f" {method}")
            by = f" built with model {model!r}" if model else ""
            raise NotIndexed(f"no{kind} indexes{what}{by} in {store.name}: {index_first(store)}")
        searcher = cls(entries, options, damaged=damaged)
        if load_model:
            searcher.load_embedder()
        return searcher

    @classmethod
    def of_directories(
        cls, directories: Sequence[IndexLocation], options: SearchOptions | None = None
    ) -> Searcher:
        """Indexes named directly (directories, or a database's collections), whatever
        collection, embedder or method."""
        return cls([IndexEntry(d, manifest_of(d)) for d in directories], options)

    @staticmethod
    def _catalog(entries: Sequence[IndexEntry]) -> dict[str, CollectionIndexes]:
        by_collection: dict[str, dict[str, ConditionIndex]] = {}
        for entry in entries:
            by_collection.setdefault(entry.collection, {})[entry.condition] = entry_condition(entry)
        return {
            name: CollectionIndexes(name, dict(sorted(conditions.items())))
            for name, conditions in sorted(by_collection.items())
        }

    # -- the model ------------------------------------------------------------------------

    @property
    def description(self) -> EmbedderDescription:
        """The embedder description the searched indexes were built with."""
        return self.entries[0].manifest.embedder

    def load_embedder(self) -> Embedder:
        """The model that made the indexes, loaded once with their settings."""
        if self._embedder is None:
            from dior_search.models import load_embedder

            stored = self.description
            if stored.method != "dior":
                raise IndexStoreError(
                    f"index {self.entries[0].location} holds {stored.method} vectors; query "
                    "it with --id, or query a dior index"
                )
            settings = dataclasses.replace(
                stored.settings,
                device=self.options.device,
                dtype=self.options.dtype or stored.dtype,
                trust_remote_code=self.options.trust_remote_code,
            )
            embedder = load_embedder(settings)
            self.entries = self._matching(embedder)
            self.collections = self._catalog(self.entries)
            self._embedder = embedder
        return self._embedder

    def _matching(self, embedder: Embedder) -> list[IndexEntry]:
        """The entries built with `embedder`'s settings; the others are logged and left out."""
        loaded = embedder.describe()
        kept = []
        for entry in self.entries:
            try:
                check_same_embedder(entry.location, entry.manifest.embedder, loaded)
            except IndexStoreError as exc:
                if len(self.entries) == 1:
                    raise
                log.warning("not searching %s: %s", entry.location, exc)
                continue
            kept.append(entry)
        if not kept:
            raise IndexStoreError(
                "no index was built with the loaded model's settings (see the warnings above): "
                "rebuild them with `dior-search index`"
            )
        return kept

    def check_size(self, width: int, height: int) -> None:
        """InputError (ImageRefused) saying why, if the model would refuse an image this size."""
        self.load_embedder().check_size(width, height)

    def embed(
        self, image: Image.Image, texts: Sequence[str | None], deadline: float | None = None
    ) -> list[np.ndarray]:
        """An image's embedding under each condition text, in one call to the model."""
        embedder = self.load_embedder()
        embedder.check_size(*image.size)
        with self._embed_lock:
            if deadline is not None and time.monotonic() > deadline:
                raise DeadlineExceeded("the request timed out waiting for the model")
            try:
                vectors = embedder.embed([image], list(texts))
            except ValueError as exc:
                # A processor's refusal of this image that check_size does not know of.
                raise InputError(f"the model cannot embed this image: {first_line(exc)}") from None
        return [np.asarray(vectors[0, column]) for column in range(len(texts))]

    # -- look-ups -------------------------------------------------------------------------

    def collection(self, name: str | None) -> CollectionIndexes:
        if name is None:
            if len(self.collections) == 1:
                return next(iter(self.collections.values()))
            valid = ", ".join(self.collections)
            raise UsageError(f"name a collection; searched: {valid}")
        try:
            return self.collections[name]
        except KeyError:
            valid = ", ".join(self.collections)
            raise NotIndexed(f"no collection {name!r}; searched: {valid}") from None

    def condition(self, collection: CollectionIndexes, name: str) -> ConditionIndex:
        try:
            return collection.conditions[name]
        except KeyError:
            for location, problem in self.damaged.items():
                if is_index_of(location, collection.name, name):
                    raise NotIndexed(str(problem)) from None
            valid = ", ".join(collection.conditions)
            raise NotIndexed(
                f"no index for condition {name!r} of {collection.name}; conditions with an "
                f"index: {valid}"
            ) from None

    def reader(self, condition: ConditionIndex) -> Reader:
        """The condition's index as of its latest generation: opened (and checked) on first
        use, reopened when a newer generation was committed (a stat of its manifest, or a
        look at its database collection's, per call). A reader already handed out stays
        valid: it keeps its files open (a database reader filters by its commit)."""
        location = condition.location
        with self._readers_lock:
            reader = self._readers.get(location)
            lock = self._reader_locks.setdefault(location, threading.Lock())
        if reader is not None and reader.is_current():
            return reader
        with lock:
            with self._readers_lock:
                reader = self._readers.get(location)
            if reader is not None and reader.is_current():
                return reader
            stamp = files_stamp(location)
            remembered = self._damage.get(location)
            if remembered is not None and stamp is not None and remembered[0] == stamp:
                raise DamagedIndex(remembered[1])  # a new one: a raised one keeps its frames
            try:
                if reader is None:
                    reader = open_reader(
                        location, mmap=self.options.mmap, search_params=self.options.search_params
                    )
                else:
                    log.info("%s: switching to a newer generation", location)
                    reader = reader.reopen()
            except NotIndexed:
                raise
            except IndexStoreError as exc:
                message = first_line(exc)
                if stamp is not None:
                    self._damage[location] = (stamp, message)
                raise DamagedIndex(message) from None
            self._damage.pop(location, None)
            with self._readers_lock:
                self._readers[location] = reader
                self._update_catalog(IndexEntry(location, reader.manifest))
            self._forget_joined(location, reader)
            return reader

    def _forget_joined(self, location: IndexLocation, current: Reader) -> None:
        """Drop the cached joins of an older generation of an index: once the requests using
        them end, its old files are closed (and their disk space freed)."""
        with self._joined_lock:
            for key in list(self._joined):
                if any(d == location and r != id(current) for d, _, r in key):
                    del self._joined[key]

    def _update_catalog(self, entry: IndexEntry) -> None:
        """Row counts (and the rest of the catalog) as of a newly opened generation."""
        self.entries = [entry if e.location == entry.location else e for e in self.entries]
        self.collections = self._catalog(self.entries)

    def refresh_catalog(self) -> dict[str, CollectionIndexes]:
        """The collections with each index's row count as of its latest commit, without
        opening any index: a folder index's manifest is read again only when a stat says it
        was replaced; a database's is looked up. An unreadable one keeps its last counts."""
        for entry in list(self.entries):
            location = entry.location
            stamp = None if isinstance(location, DatabaseIndex) else manifest_stamp(location)
            if stamp is not None and stamp == self._manifest_stamps.get(location):
                continue
            try:
                manifest = manifest_of(location)
            except (IndexStoreError, OSError, ValueError):
                continue
            if stamp is not None:
                self._manifest_stamps[location] = stamp
            if manifest != entry.manifest:
                with self._readers_lock:
                    self._update_catalog(IndexEntry(location, manifest))
        return self.collections

    def joined(self, conditions: Sequence[ConditionIndex]) -> JoinedIndexes:
        """The conditions' indexes joined, each as of its latest generation: one request
        searches through one JoinedIndexes, so it never sees half of a change."""
        readers = [self.reader(c) for c in conditions]
        key = tuple(
            (c.location, r.generation, id(r)) for c, r in zip(conditions, readers, strict=True)
        )
        with self._joined_lock:
            joined = self._joined.get(key)
            if joined is not None:
                self._joined.move_to_end(key)
                return joined
        joined = JoinedIndexes(readers)
        with self._joined_lock:
            self._joined[key] = joined
            while len(self._joined) > JOINED_CACHE_ENTRIES:
                self._joined.popitem(last=False)
        return joined

    def reader_with_id(self, condition: ConditionIndex, row_id: int) -> Reader:
        """The condition's index, checked to hold `row_id`."""
        reader = self.reader(condition)
        check_id(reader, condition, row_id)
        return reader

    # -- words ----------------------------------------------------------------------------

    def word_head(self) -> WordHead:
        """The tokenizer and output-head rows a text query needs, loaded once with the
        indexes' settings and checked to be the model that made them."""
        with self._word_head_lock:
            if self._word_head is None:
                from dior_search.models.loading import model_identity, resolve_model_source

                stored = self.description
                settings = stored.settings
                source = resolve_model_source(settings.model)
                if (stored.commit, stored.weights_fingerprint) != model_identity(
                    source, settings.revision
                ):
                    raise IndexStoreError(
                        f"the model {settings.model!r} is not the one that built "
                        f"{self.entries[0].location} (its weights changed): rebuild the index"
                    )
                self._word_head = WordHead(
                    source, settings.revision, self.options.trust_remote_code
                )
            return self._word_head

    def check_first_token_scores(self, condition: ConditionIndex) -> None:
        """NoAnswers unless the condition's vectors are last-input states, whose output head
        scores a word's first token (answer tokens' states score the token after them)."""
        description = self.reader(condition).manifest.embedder
        if not description.reads_last_input:
            num_token = description.settings.num_token
            held, fix = (
                (f"{description.source} vectors", "--source last_input")
                if description.source != "last_input"
                else (f"prompt token {num_token}'s vectors", "--num-token -1")
            )
            raise NoAnswers(
                f"the index of {condition.name!r} holds {held}: text queries score by the last "
                f"input token's (index with {fix}); --where filters on its answers work"
            )

    def check_answers(self, collection: CollectionIndexes, condition: ConditionIndex) -> None:
        """NoAnswers, saying how to add them, unless the condition's index stores answers."""
        state = self.reader(condition).manifest.answers
        if state == "stored":
            return
        if state == "not-last-layer":
            layer = self.description.settings.layer
            raise NoAnswers(
                f"the index of {condition.name!r} holds layer {layer}'s vectors: the model's "
                "answers come with the last layer's only (index with --layer -1)"
            )
        source = (
            f"--dataset {collection.name}"
            if collection.name in DATASETS
            else f"--images {condition.root}"
        )
        raise NoAnswers(
            f"the index of {condition.name!r} stores no answers of the model: add them with "
            f"`dior-search index {source} -c {condition.name} --answers`"
        )

    def labels(
        self, collection: str, root: Path, rows: Sequence[Row]
    ) -> tuple[list[dict[str, str]], list[str]]:
        """Each row's labels as the collection's label table says now (not as stored when it
        was indexed), and the paths the table no longer lists (their labels: none); see
        search.filters.current_row_labels, which label filters read too."""
        return current_row_labels(current_labels(collection, root), rows)

    # -- queries --------------------------------------------------------------------------

    def resolve(
        self, request: SearchRequest
    ) -> tuple[CollectionIndexes, tuple[ConditionIndex, ...], tuple[float, ...]]:
        """The collection, conditions and normalised weights (of the conditions searched by
        image) a request names, all checked."""
        names = request.searched_conditions
        if not names:
            raise UsageError("give at least one condition")
        if len(set(names)) != len(names):
            raise UsageError(f"a condition is repeated in {list(names)}")
        if request.words is not None and len(request.words) != len(names):
            raise UsageError("give one word (or none) per condition")
        check_k(request.k, self.options.max_k or MAX_K)
        if request.id is not None and not 0 <= request.id <= MAX_ID:
            raise UsageError(f"an id must be between 0 and {MAX_ID}")
        check_distinct(request.distinct)
        by_image = sum(request.word_of(i) is None for i in range(len(names)))
        given = [request.image is not None, request.vectors is not None, request.id is not None]
        if request.terms:
            collection = self.collection(request.collection)
            self.check_terms(request, collection, names)
            conditions = tuple(self.condition(collection, c) for c in names)
            return collection, conditions, normalize_weights(request.weights, by_image)
        if by_image and sum(given) != 1:
            raise UsageError("give a query image or an id (one of them)")
        if not by_image and any(given):
            raise UsageError(
                "every condition has a word to ask about: give no image or id (or a condition "
                "without a word to search by the image)"
            )
        if request.vectors is not None and len(request.vectors) != by_image:
            raise UsageError("give one query vector per condition searched by image")
        collection = self.collection(request.collection)
        conditions = tuple(self.condition(collection, c) for c in names)
        weights = normalize_weights(request.weights, by_image) if by_image else ()
        return collection, conditions, weights

    def check_terms(
        self, request: SearchRequest, collection: CollectionIndexes, names: Sequence[str]
    ) -> None:
        """UsageError (or NotIndexed) for terms that cannot make a query with the rest."""
        if request.image is not None or request.vectors is not None or request.id is not None:
            raise UsageError(
                "conflicting terms: give the examples as terms, with no separate image or id"
            )
        check_terms(request.terms)
        check_example_conditions(self, collection, request.terms)
        worded = {n for i, n in enumerate(names) if request.word_of(i) is not None}
        for term in request.terms:
            if term.condition not in names:
                raise UsageError(
                    f"a term is under {term.condition!r}, which is not among the conditions "
                    f"searched ({', '.join(names)})"
                )
            if term.condition in worded:
                raise UsageError(
                    f"conflicting terms: {term.condition!r} is asked about in words (--text) "
                    "and also given examples"
                )
        if not any(t.positive for t in request.terms if t.condition not in worded):
            raise UsageError("a query needs at least one positive example")

    def search(self, request: SearchRequest, deadline: float | None = None) -> SearchResult:
        """Rank a collection's images by (weighted) similarity under the conditions searched
        by image, by the model's answers under those asked about in words, among the images
        that pass the filters."""
        collection, conditions, weights = self.resolve(request)
        words = {
            c.name: query_word(w)
            for i, c in enumerate(conditions)
            if (w := request.word_of(i)) is not None
        }
        filters = parse_filters(request.where)
        by_image = [i for i, c in enumerate(conditions) if c.name not in words]
        check_deadline(deadline)
        joined, answer_readers = self.joined_for(collection, conditions, filters)
        word_conditions = self.word_conditions(collection, conditions, words)
        # The label table is read once a request: filters and results see the same labels.
        labels_now = current_labels(collection.name, conditions[0].root)
        check_deadline(deadline)
        # Filters one index decides go to its store; the others become a mask of rows.
        pushed = None
        if filters and not words and len(conditions) == 1:
            pushed = store_filter(joined, filters, labels_now)
        passing = None
        if filters and pushed is None:
            passing = passing_rows(joined, filters, answer_readers, labels_now, deadline)
        query = QueryImage()
        vectors: list[np.ndarray] = []
        composed: ComposedQuery | None = None
        if request.terms:
            composed = compose(
                [conditions[i].name for i in by_image],
                weights,
                request.terms,
                example_vectors(self, collection, request.terms, deadline),
            )
            vectors, weights = composed.directions, composed.weights
        elif by_image and request.id is not None:
            first_id = self.first_id(joined, collection, conditions, request)
            vectors = joined.stored_query(first_id, by_image)
            row = joined.readers[0].row(first_id)
            (labels,), _ = current_row_labels(labels_now, [row])
            query = QueryImage(first_id, conditions[0].name, row.path, labels)
        elif by_image and request.vectors is not None:
            vectors = list(request.vectors)
        elif by_image:
            assert request.image is not None  # resolve() checked that one is given
            texts = [conditions[i].text for i in by_image]
            vectors = self.embed(request.image, texts, deadline)
        check_deadline(deadline)

        def ranking(k: int) -> tuple[list[Ranked], list[WordScores]]:
            if pushed is not None:
                return joined.search_where(vectors[0], k, pushed), []
            return self.rank(joined, vectors, weights, by_image, word_conditions, passing, k)

        hidden = 0
        if request.distinct is None:
            ranked, scored = ranking(request.k)
        else:
            ranked, scored, hidden = distinct_ranking(
                self.near_copy_reader(collection, conditions, by_image),
                joined.readers[0],
                ranking,
                request.k,
                request.distinct,
            )
        if composed is not None:
            ranked, weights = composed.rescaled(ranked), composed.condition_weights
        check_deadline(deadline)
        hits, unlisted = self.hits(
            labels_now, joined, conditions, by_image, word_conditions, ranked, scored
        )
        return SearchResult(
            collection,
            conditions,
            weights,
            query,
            hits,
            words,
            filters,
            tuple(unlisted),
            request.terms,
            hidden,
        )

    def near_copy_reader(
        self,
        collection: CollectionIndexes,
        conditions: Sequence[ConditionIndex],
        by_image: Sequence[int],
    ) -> Reader:
        """The index near-copies are judged in: the unconditional one when the collection has
        it, else the first condition searched by example (else the first searched)."""
        if UNCONDITIONAL in collection.conditions:
            return self.reader(collection.conditions[UNCONDITIONAL])
        return self.reader(conditions[by_image[0] if by_image else 0])

    def joined_for(
        self,
        collection: CollectionIndexes,
        conditions: Sequence[ConditionIndex],
        filters: Sequence[Filter],
    ) -> tuple[JoinedIndexes, dict[str, int]]:
        """The searched conditions' indexes joined with those whose answers the filters read,
        and where in the join each answer filter's index is."""
        joined_conditions = list(conditions)
        positions: dict[str, int] = {}
        for where in filters:
            if where.kind != "answer" or where.name in positions:
                continue
            condition = self.condition(collection, where.name)
            self.check_answers(collection, condition)
            if condition not in joined_conditions:
                joined_conditions.append(condition)
            positions[where.name] = joined_conditions.index(condition)
        return self.joined(joined_conditions), positions

    def word_conditions(
        self,
        collection: CollectionIndexes,
        conditions: Sequence[ConditionIndex],
        words: dict[str, str],
    ) -> list[WordCondition]:
        """The conditions asked about in words, each checked to store answers, with the output
        head's rows of its word's first tokens."""
        found = []
        for position, condition in enumerate(conditions):
            if condition.name in words:
                self.check_answers(collection, condition)
                self.check_first_token_scores(condition)
                _, rows = self.word_head().word(words[condition.name])
                found.append(WordCondition(condition.name, position, words[condition.name], rows))
        return found

    def rank(
        self,
        joined: JoinedIndexes,
        vectors: Sequence[np.ndarray],
        weights: Sequence[float],
        by_image: Sequence[int],
        words: Sequence[WordCondition],
        passing: np.ndarray | None,
        k: int,
    ) -> tuple[list[Ranked], list[WordScores]]:
        """The top k as image rankings (score and per-image-condition cosines, none where
        nothing is searched by image) and, per hit, its word scores."""
        if not words:
            return joined.search(vectors, weights, k, by_image, passing), []
        ranking = WordRanking(joined, words)
        rows = joined.complete if passing is None else joined.complete & passing
        by_position: dict[int, Ranked] = {}

        def by_similarity(members: np.ndarray, wanted: int) -> list[int]:
            found = joined.search(vectors, weights, wanted, by_image, members)
            positions: list[int] = joined.readers[0].positions([r.id for r in found]).tolist()
            by_position.update(zip(positions, found, strict=True))
            return positions

        order = ranking.rank(rows, k, by_similarity if by_image else None)
        positions = np.asarray(order, dtype=np.int64)
        scored = ranking.explain(positions)
        first_ids = joined.readers[0].ids
        ranked = [
            by_position.get(p, Ranked(int(first_ids[p]), float(sum(s.logprobs)), ()))
            for p, s in zip(order, scored, strict=True)
        ]
        return ranked, scored

    def hits(
        self,
        labels_now: LabelSource | None,
        joined: JoinedIndexes,
        conditions: Sequence[ConditionIndex],
        by_image: Sequence[int],
        words: Sequence[WordCondition],
        ranked: Sequence[Ranked],
        scored: Sequence[WordScores],
    ) -> tuple[list[Hit], list[str]]:
        """The ranked images as hits: rows from the first condition's index, each condition's
        score (cosine, or log-probability of the word) and stored answer, the labels the label
        table gives now; and the paths it no longer lists."""
        first = joined.readers[0]
        rows = first.rows([r.id for r in ranked])
        labels, unlisted = current_row_labels(labels_now, rows)
        positions = first.positions([r.id for r in ranked])
        answers = {
            c.name: joined.column(j, ANSWER)[positions]
            for j, c in enumerate(conditions)
            if ANSWER in joined.readers[j].column_names()
        }
        hits = []
        for rank, (r, row, row_labels) in enumerate(zip(ranked, rows, labels, strict=True), 1):
            scores = {conditions[j].name: s for j, s in zip(by_image, r.scores, strict=True)}
            scored_by = {}
            if scored:
                explained = scored[rank - 1]
                for word, logprob, how in zip(
                    words, explained.logprobs, explained.scored_by, strict=True
                ):
                    scores[word.name] = logprob
                    scored_by[word.name] = how
            hits.append(
                Hit(
                    rank=rank,
                    id=r.id,
                    score=r.score,
                    scores={c.name: scores[c.name] for c in conditions},
                    path=row.path,
                    labels=row_labels,
                    answers={
                        name: str(values[rank - 1])
                        for name, values in answers.items()
                        if values[rank - 1] is not None
                    },
                    scored_by=scored_by,
                )
            )
        return hits, unlisted

    def facets(
        self,
        collection_name: str | None,
        condition_name: str,
        where: Sequence[str] = (),
        top: int | None = None,
        deadline: float | None = None,
    ) -> Facets:
        """The model's answers under a condition with their counts, over the images that pass
        `where`; NoAnswers (saying how to add them) if its index stores none. `deadline`: see
        search.deadline."""
        collection = self.collection(collection_name)
        condition = self.condition(collection, condition_name)
        self.check_answers(collection, condition)
        filters = parse_filters(where)
        joined, answer_readers = self.joined_for(collection, [condition], filters)
        labels_now = current_labels(collection.name, condition.root)
        passing = passing_rows(joined, filters, answer_readers, labels_now, deadline)
        check_deadline(deadline, "counting")
        images, unanswered, counts, distinct = count_answers(joined, 0, passing, top)
        return Facets(collection.name, condition.name, images, unanswered, counts, distinct)

    def first_id(
        self,
        joined: JoinedIndexes,
        collection: CollectionIndexes,
        conditions: Sequence[ConditionIndex],
        request: SearchRequest,
    ) -> int:
        """The first condition's id of the image `request.id` names under `id_condition`."""
        row_id = int(request.id or 0)
        named_in = self.condition(collection, request.id_condition or conditions[0].name)
        # The request's own generation of that index when it is one of the searched ones.
        searched = {c.location: r for c, r in zip(conditions, joined.readers, strict=False)}
        reader = searched.get(named_in.location) or self.reader(named_in)
        check_id(reader, named_in, row_id)
        if named_in.location == conditions[0].location:
            first_id: int | None = row_id
        else:
            first_id = joined.first_id_of_hash(reader.row(row_id).content_hash)
        # The query image must be held under the conditions searched by image (not under a
        # filter's condition: filters choose among the results, not the query).
        searched_by_image = [j for j in range(len(conditions)) if request.word_of(j) is None]
        absent = [0] if first_id is None else joined.absent_under(first_id, searched_by_image)
        if first_id is None or absent:
            missing = ", ".join(conditions[j].name for j in absent)
            raise NotIndexed(f"image {row_id} of {named_in.name!r} is not indexed under {missing}")
        return first_id


def manifest_of(location: IndexLocation) -> Manifest:
    """The manifest of the index at `location`; IndexStoreError if there is none."""
    if isinstance(location, DatabaseIndex):
        found = location.store.manifest_at(location)
        if found is None:
            raise IndexStoreError(f"no index {location}")
        return found
    return Manifest.read(location)


def check_id(reader: Reader, condition: ConditionIndex, row_id: int) -> None:
    """NotIndexed unless the reader holds a live row `row_id`."""
    if len(reader) == 0:
        raise NotIndexed(f"no id {row_id}: the index of {condition.name!r} is empty")
    if not reader.contains(row_id):
        raise NotIndexed(
            f"no id {row_id} under condition {condition.name!r} "
            f"(ids {reader.ids[0]}..{reader.ids[-1]}; an image's id changes when it is "
            "re-indexed)"
        )
