"""The vector of a term's example under its condition: an image embedded (once per image for
all the conditions it is an example under), an indexed image's stored vector, or the mean unit
vector of the images whose stored answer is a word."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from dior_search.errors import UsageError
from dior_search.models.answers import query_word
from dior_search.search.catalogue import NotIndexed, check_id
from dior_search.search.terms import Term
from dior_search.store.schema import ANSWER, normalize

if TYPE_CHECKING:
    from dior_search.search.catalogue import CollectionIndexes
    from dior_search.search.searcher import Searcher

# Answer words listed in the error for a word no image answered.
SHOWN_ANSWERS = 12


def example_vectors(
    searcher: Searcher,
    collection: CollectionIndexes,
    terms: Sequence[Term],
    deadline: float | None = None,
) -> Callable[[Term], np.ndarray]:
    """A look-up of each term's example vector; images are embedded here, each once under
    all the conditions it is an example under (one model call per image)."""
    found: dict[int, np.ndarray] = {}
    images: dict[int, list[Term]] = {}
    for term in terms:
        if term.image is not None:
            images.setdefault(id(term.image), []).append(term)
    for same_image in images.values():
        texts = list(
            dict.fromkeys(searcher.condition(collection, t.condition).text for t in same_image)
        )
        image = same_image[0].image
        assert image is not None  # grouped by image above
        vectors = dict(zip(texts, searcher.embed(image, texts, deadline), strict=True))
        for term in same_image:
            found[id(term)] = unit(vectors[searcher.condition(collection, term.condition).text])
    for term in terms:
        if term.vector is not None:
            found[id(term)] = unit(term.vector)
        elif term.id is not None:
            found[id(term)] = unit(stored_example(searcher, collection, term))
        elif term.word is not None:
            found[id(term)] = answer_centroid(searcher, collection, term.condition, term.word)
    return lambda term: found[id(term)]


def unit(vector: np.ndarray) -> np.ndarray:
    found: np.ndarray = normalize(np.asarray(vector)[None, :])[0]
    return found


def stored_example(searcher: Searcher, collection: CollectionIndexes, term: Term) -> np.ndarray:
    """The stored vector, under the term's condition, of the image `term.id` names in the
    index of `term.id_condition` (default: the term's own)."""
    assert term.id is not None
    condition = searcher.condition(collection, term.condition)
    named = searcher.condition(collection, term.id_condition or term.condition)
    if named.location == condition.location:
        reader = searcher.reader(condition)
        check_id(reader, condition, term.id)
        return reader.vector(term.id)
    content_hash = searcher.reader_with_id(named, term.id).row(term.id).content_hash
    # The cached join of the condition's index alone keeps its ids by content hash (built
    # once per generation), not a scan of every hash per request.
    alone = searcher.joined([condition])
    row_id = alone.first_id_of_hash(content_hash)
    if row_id is not None:
        return alone.readers[0].vector(row_id)
    raise NotIndexed(f"image {term.id} of '{named.name}' is not indexed under '{condition.name}'")


def answer_centroid(
    searcher: Searcher, collection: CollectionIndexes, condition_name: str, text: str
) -> np.ndarray:
    """The mean unit vector of the images whose stored answer under the condition is the word;
    UsageError, listing the answers, when no image answered it."""
    word = query_word(text)
    condition = searcher.condition(collection, condition_name)
    searcher.check_answers(collection, condition)
    reader = searcher.reader(condition)
    answers = np.asarray(reader.column(ANSWER), dtype=object)
    chosen = np.flatnonzero(answers == word)
    if len(chosen) == 0:
        counted: dict[str, int] = {}
        for answer in answers.tolist():
            if answer is not None:
                counted[answer] = counted.get(answer, 0) + 1
        common = sorted(counted, key=lambda a: (-counted[a], a))[:SHOWN_ANSWERS]
        raise UsageError(
            f"no image's answer under '{condition_name}' is '{word}'; its answers: "
            + ", ".join(common)
        )
    vectors = normalize(reader.vectors(reader.ids[chosen]))
    return np.asarray(vectors.mean(axis=0), dtype=np.float32)


def check_example_conditions(
    searcher: Searcher, collection: CollectionIndexes, terms: Sequence[Term]
) -> None:
    """NotIndexed for a term whose condition (or id's condition) has no index."""
    for term in terms:
        searcher.condition(collection, term.condition)
        if term.id_condition is not None:
            searcher.condition(collection, term.id_condition)
    if any(t.word is not None and not t.word.strip() for t in terms):
        raise UsageError("a word example is empty: give one word")
