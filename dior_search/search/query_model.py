"""The model a searcher embeds queries with, and asks about words with: loaded once, with the
settings in the served indexes' manifests (an index built with other settings is left out;
another model is refused); a query in words alone loads only its tokenizer and the output
head's rows of the words (see search.words). Forward passes are serialised by one lock.

Also the checks that an index can answer words: it stores the model's answers, and its
vectors are the last input token's (whose output head scores a word's first token).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Sequence

import numpy as np
from PIL import Image

from dior_search.data.collections import DATASETS
from dior_search.errors import IndexStoreError, InputError, first_line
from dior_search.models.answers import WordHead
from dior_search.models.embedder import Embedder, EmbedderDescription
from dior_search.search.catalogue import Catalogue, CollectionIndexes, ConditionIndex, NotIndexed
from dior_search.search.deadline import DeadlineExceeded
from dior_search.search.request import SearchOptions
from dior_search.store.backend import IndexEntry, Reader, check_same_embedder

log = logging.getLogger(__name__)


class NoAnswers(NotIndexed):
    """A condition asked about in words (or filtered by answer) whose index stores none."""


class QueryModel:
    """The model of a catalogue's indexes, loaded on first use; loading it leaves out of the
    catalogue, with a warning, the indexes built with other settings."""

    def __init__(
        self, catalogue: Catalogue, options: SearchOptions, embedder: Embedder | None = None
    ) -> None:
        self.catalogue = catalogue
        self.options = options
        self._embedder = embedder
        if embedder is not None:
            catalogue.replace(matching(catalogue.entries, embedder))
        self._embed_lock = threading.Lock()
        self._word_head: WordHead | None = None
        self._word_head_lock = threading.Lock()

    @property
    def description(self) -> EmbedderDescription:
        return self.catalogue.description

    def embedder(self) -> Embedder:
        """The model that made the indexes, loaded once with their settings."""
        if self._embedder is None:
            from dior_search.models import load_embedder

            stored = self.description
            if stored.method != "dior":
                raise IndexStoreError(
                    f"index {self.catalogue.entries[0].location} holds {stored.method} "
                    "vectors; query it with --id, or query a dior index"
                )
            settings = dataclasses.replace(
                stored.settings,
                device=self.options.device,
                dtype=self.options.dtype or stored.dtype,
                trust_remote_code=self.options.trust_remote_code,
            )
            embedder = load_embedder(settings)
            self.catalogue.replace(matching(self.catalogue.entries, embedder))
            self._embedder = embedder
        return self._embedder

    def embed(
        self, image: Image.Image, texts: Sequence[str | None], deadline: float | None = None
    ) -> list[np.ndarray]:
        """An image's embedding under each condition text, in one call to the model."""
        embedder = self.embedder()
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
                        f"{self.catalogue.entries[0].location} (its weights changed): rebuild "
                        "the index"
                    )
                self._word_head = WordHead(
                    source, settings.revision, self.options.trust_remote_code
                )
            return self._word_head


def matching(entries: Sequence[IndexEntry], embedder: Embedder) -> list[IndexEntry]:
    """The entries built with `embedder`'s settings; the others are logged and left out."""
    loaded = embedder.describe()
    kept = []
    for entry in entries:
        try:
            check_same_embedder(entry.location, entry.manifest.embedder, loaded)
        except IndexStoreError as exc:
            if len(entries) == 1:
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


def check_first_token_scores(reader: Reader, condition: ConditionIndex) -> None:
    """NoAnswers unless the condition's vectors are last-input states, whose output head
    scores a word's first token (answer tokens' states score the token after them)."""
    description = reader.manifest.embedder
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


def check_answers(
    reader: Reader,
    description: EmbedderDescription,
    collection: CollectionIndexes,
    condition: ConditionIndex,
) -> None:
    """NoAnswers, saying how to add them, unless the condition's index stores answers."""
    state = reader.manifest.answers
    if state == "stored":
        return
    if state == "not-last-layer":
        layer = description.settings.layer
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
