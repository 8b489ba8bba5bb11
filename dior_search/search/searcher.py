"""One search engine for the CLI, the server and bench: find indexes, embed, search, explain.

A `Searcher` serves the indexes of one embedder (model and settings), of one collection or of
all, and answers a `SearchRequest` (search.request) with a `SearchResult`. It is a short
pipeline over four parts, each in its own module:

- the catalogue (search.catalogue): which indexes are served, their row counts as of their
  latest commits, the damaged ones left out;
- the reader cache (search.readers): readers opened on first use and reopened after a commit,
  joins of several indexes, damaged files remembered until they change;
- the query model (search.query_model): the model, loaded only when an image must be embedded,
  with the settings in the indexes' manifests; a query in words alone loads only its tokenizer
  and the output head's rows of the words;
- the request plan (search.plan): one request's indexes, query and filters, then its ranking
  and hits.

It is safe to use from several threads: forward passes are serialised by one lock, searches
run concurrently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace as replace_plan
from pathlib import Path

import numpy as np
from PIL import Image

from dior_search.data.collections import current_labels
from dior_search.data.fingerprints import Fingerprints
from dior_search.errors import IndexStoreError, UsageError
from dior_search.models.answers import WordHead, query_word
from dior_search.models.embedder import Embedder, EmbedderDescription
from dior_search.search import query_model
from dior_search.search.catalogue import (
    Catalogue,
    CollectionIndexes,
    ConditionIndex,
    check_id,
    manifest_of,
)

# Re-exported, where callers have always found them.
from dior_search.search.catalogue import NotIndexed as NotIndexed
from dior_search.search.deadline import DeadlineExceeded as DeadlineExceeded
from dior_search.search.deadline import check_deadline
from dior_search.search.distinct import distinct_ranking
from dior_search.search.examples import check_example_conditions, example_vectors
from dior_search.search.facets import Facets, count_answers
from dior_search.search.filters import (
    Filter,
    current_row_labels,
    parse_filters,
    passing_rows,
    store_filter,
)
from dior_search.search.joined import JoinedIndexes, normalize_weights
from dior_search.search.plan import RequestPlan
from dior_search.search.query_model import NoAnswers as NoAnswers
from dior_search.search.query_model import QueryModel
from dior_search.search.readers import DamagedIndex as DamagedIndex
from dior_search.search.readers import ReaderCache
from dior_search.search.request import MAX_RESULTS, QueryImage
from dior_search.search.request import Hit as Hit
from dior_search.search.request import SearchOptions as SearchOptions
from dior_search.search.request import SearchRequest as SearchRequest
from dior_search.search.request import SearchResult as SearchResult
from dior_search.search.request import check_k as check_k
from dior_search.search.terms import check_terms as check_term_list
from dior_search.search.terms import compose
from dior_search.search.words import WordCondition
from dior_search.store.backend import IndexEntry, IndexLocation, IndexStore, Reader
from dior_search.store.schema import Row
from dior_search.store.stores import check_has_indexes, index_first, open_store

__all__ = [
    "DamagedIndex",
    "DeadlineExceeded",
    "Hit",
    "NoAnswers",
    "NotIndexed",
    "SearchOptions",
    "SearchRequest",
    "SearchResult",
    "Searcher",
    "check_k",
]


class Searcher:
    """Search the indexes of one embedder: single or several conditions, by image or by id."""

    def __init__(
        self,
        entries: Sequence[IndexEntry],
        options: SearchOptions | None = None,
        embedder: Embedder | None = None,
        damaged: dict[IndexLocation, IndexStoreError] | None = None,
    ) -> None:
        if not entries:
            raise next(iter((damaged or {}).values()), IndexStoreError("no indexes to search"))
        folders = sorted({e.embedder_folder for e in entries})
        if len(folders) > 1:
            raise IndexStoreError(
                f"indexes of several embedders: {', '.join(folders)}; pick one with --model"
            )
        self.options = options or SearchOptions()
        self.catalogue = Catalogue(entries, damaged)
        self.model = QueryModel(self.catalogue, self.options, embedder)
        self.cache = ReaderCache(
            self.options.mmap, self.options.search_params, self.catalogue.update
        )
        # Pictures' fingerprints for `distinct` (read from the image files, kept per content).
        self.fingerprints = Fingerprints()

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

    # -- the catalogue, the readers and the model -----------------------------------------

    @property
    def entries(self) -> list[IndexEntry]:
        return self.catalogue.entries

    @property
    def collections(self) -> dict[str, CollectionIndexes]:
        return self.catalogue.collections

    @property
    def damaged(self) -> dict[IndexLocation, IndexStoreError]:
        return self.catalogue.damaged

    @property
    def description(self) -> EmbedderDescription:
        """The embedder description the searched indexes were built with."""
        return self.catalogue.description

    def collection(self, name: str | None) -> CollectionIndexes:
        return self.catalogue.collection(name)

    def condition(self, collection: CollectionIndexes, name: str) -> ConditionIndex:
        return self.catalogue.condition(collection, name)

    def refresh_catalog(self) -> dict[str, CollectionIndexes]:
        """The collections with row counts as of each index's latest commit (see
        Catalogue.refresh); opens no index."""
        return self.catalogue.refresh()

    def reader(self, condition: ConditionIndex) -> Reader:
        """The condition's index as of its latest generation (see ReaderCache.reader)."""
        return self.cache.reader(condition)

    def joined(self, conditions: Sequence[ConditionIndex]) -> JoinedIndexes:
        """The conditions' indexes joined, each as of its latest generation."""
        return self.cache.joined(conditions)

    def reader_with_id(self, condition: ConditionIndex, row_id: int) -> Reader:
        """The condition's index, checked to hold `row_id`."""
        reader = self.reader(condition)
        check_id(reader, condition, row_id)
        return reader

    def load_embedder(self) -> Embedder:
        """The model that made the indexes, loaded once with their settings."""
        return self.model.embedder()

    def check_size(self, width: int, height: int) -> None:
        """InputError (ImageRefused) saying why, if the model would refuse an image this size."""
        self.load_embedder().check_size(width, height)

    def embed(
        self, image: Image.Image, texts: Sequence[str | None], deadline: float | None = None
    ) -> list[np.ndarray]:
        """An image's embedding under each condition text, in one call to the model."""
        return self.model.embed(image, texts, deadline)

    def word_head(self) -> WordHead:
        return self.model.word_head()

    def check_answers(self, collection: CollectionIndexes, condition: ConditionIndex) -> None:
        """NoAnswers, saying how to add them, unless the condition's index stores answers."""
        query_model.check_answers(self.reader(condition), self.description, collection, condition)

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
        request.check(self.options.max_k or MAX_RESULTS)
        names = request.searched_conditions
        by_image = request.by_image
        collection = self.collection(request.collection)
        if request.terms:
            self.check_terms(request, collection, names)
        conditions = tuple(self.condition(collection, c) for c in names)
        if request.terms or by_image:
            return collection, conditions, normalize_weights(request.weights, by_image)
        return collection, conditions, ()

    def check_terms(
        self, request: SearchRequest, collection: CollectionIndexes, names: Sequence[str]
    ) -> None:
        """UsageError (or NotIndexed) for terms that cannot make a query with the rest."""
        check_term_list(request.terms)
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
        plan = self.plan(request, deadline)
        check_deadline(deadline)
        if request.distinct is None:
            ranked, scored = plan.rank(request.k)
            hidden = 0
        else:
            root = plan.conditions[0].root

            def fingerprint_of(row: Row) -> np.ndarray | None:
                check_deadline(deadline)
                return self.fingerprints.of(root, row.path, row.content_hash)

            ranked, scored, hidden = distinct_ranking(
                plan.joined.readers[0], plan.rank, request.k, request.distinct, fingerprint_of
            )
        check_deadline(deadline)
        return plan.result(ranked, scored, request.terms, hidden)

    def plan(self, request: SearchRequest, deadline: float | None = None) -> RequestPlan:
        """The request checked and resolved: its indexes joined, its filters' rows and its
        query's vectors (an image embedded, an id's stored vectors, or a composed query's
        directions); `deadline` is checked between the steps."""
        collection, conditions, weights = self.resolve(request)
        words = {
            c.name: query_word(w)
            for i, c in enumerate(conditions)
            if (w := request.word_of(i)) is not None
        }
        filters = parse_filters(request.where)
        check_deadline(deadline)
        joined, answer_readers = self.joined_for(collection, conditions, filters)
        worded = self.word_conditions(collection, conditions, words)
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
        plan = RequestPlan(
            collection,
            conditions,
            joined,
            tuple(i for i, c in enumerate(conditions) if c.name not in words),
            tuple(worded),
            words,
            filters,
            labels_now,
            pushed,
            passing,
            weights=weights,
        )
        return self.with_query(plan, request, deadline)

    def with_query(
        self, plan: RequestPlan, request: SearchRequest, deadline: float | None
    ) -> RequestPlan:
        """The plan with the query's vector (and weight) under each condition searched by
        image, and the indexed image an id query names."""
        by_image, conditions = plan.by_image, plan.conditions
        if request.terms:
            composed = compose(
                [conditions[i].name for i in by_image],
                plan.weights,
                request.terms,
                example_vectors(self, plan.collection, request.terms, deadline),
            )
            return replace_plan(
                plan, vectors=composed.directions, weights=composed.weights, composed=composed
            )
        if by_image and request.id is not None:
            first_id = self.first_id(plan.joined, plan.collection, conditions, request)
            row = plan.joined.readers[0].row(first_id)
            (labels,), _ = current_row_labels(plan.labels_now, [row])
            return replace_plan(
                plan,
                vectors=plan.joined.stored_query(first_id, by_image),
                query=QueryImage(first_id, conditions[0].name, row.path, labels),
            )
        if by_image and request.vectors is not None:
            return replace_plan(plan, vectors=list(request.vectors))
        if by_image:
            assert request.image is not None  # request.check() made sure one is given
            texts = [conditions[i].text for i in by_image]
            return replace_plan(plan, vectors=self.embed(request.image, texts, deadline))
        return plan

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
                query_model.check_first_token_scores(self.reader(condition), condition)
                _, rows = self.word_head().word(words[condition.name])
                found.append(WordCondition(condition.name, position, words[condition.name], rows))
        return found

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
