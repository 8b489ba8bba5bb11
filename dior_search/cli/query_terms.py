"""`dior-search query`'s composed-query options as library terms (search.terms).

Every option names its condition in its own value (`--example pattern=a.jpg`), so nothing
depends on the order of the options on the command line:

    --example CONDITION=IMAGE      more like IMAGE under CONDITION
    --example-id CONDITION=ID      more like the indexed image ID (of CONDITION's index)
    --word CONDITION=WORD          more like the images the model answered WORD under CONDITION
    --not [CONDITION=]IMAGE        less like IMAGE (under every condition searched by example)
    --not-id [CONDITION=]ID        less like the indexed image ID
    --not-word CONDITION=WORD      less like the images that answered WORD
    --text CONDITION=WORD          ask the model about WORD under CONDITION (search.words)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dior_search.data.collections import check_condition
from dior_search.errors import UsageError

if TYPE_CHECKING:
    from PIL import Image

    from dior_search.search.terms import Term


@dataclass(frozen=True)
class TermOptions:
    """The composed-query options as given."""

    examples: tuple[str, ...] = ()
    example_ids: tuple[str, ...] = ()
    words: tuple[str, ...] = ()
    not_images: tuple[str, ...] = ()
    not_ids: tuple[str, ...] = ()
    not_words: tuple[str, ...] = ()

    @property
    def given(self) -> bool:
        return any(
            (
                self.examples,
                self.example_ids,
                self.words,
                self.not_images,
                self.not_ids,
                self.not_words,
            )
        )


@dataclass(frozen=True)
class QueryParts:
    """The conditions searched in order, each one's --text word (None: searched by example),
    and the terms (empty: a plain query by IMAGE or --id)."""

    conditions: tuple[str, ...]
    words: tuple[str | None, ...] | None
    terms: tuple[Term, ...]


def named(option: str, value: str, *, optional: bool = False) -> tuple[str | None, str]:
    """(condition, rest) of `CONDITION=REST`; (None, value) where the condition may be left
    out and is. UsageError naming the form otherwise."""
    condition, equals, rest = value.partition("=")
    if not equals:
        if optional:
            return None, value
        raise UsageError(f"{option} takes CONDITION=VALUE, got '{value}'")
    if not rest:
        raise UsageError(f"{option} '{value}' names no value after '='")
    return check_condition(condition), rest


def row_id(option: str, text: str) -> int:
    if not text.isdigit():
        raise UsageError(
            f"{option} takes an indexed image's id (a non-negative integer), got '{text}'"
        )
    return int(text)


def text_words(
    texts: tuple[str, ...], conditions: tuple[str, ...], by_example: bool
) -> dict[str, str]:
    """Each --text's condition and word: `CONDITION=WORD`, or a bare WORD when the -c
    options leave no doubt (as many bare words as -c conditions, and no query image)."""
    words: dict[str, str] = {}
    bare = [t for t in texts if "=" not in t]
    if bare and (by_example or len(bare) != len(conditions) or len(bare) != len(texts)):
        raise UsageError(f"--text '{bare[0]}' asks about no condition: write --text CONDITION=WORD")
    pairs = zip(conditions, bare, strict=True) if bare else (named("--text", t) for t in texts)
    for condition, word in pairs:
        assert condition is not None  # named() without optional always names one
        if condition in words:
            raise UsageError(f"conflicting terms: two --text words under '{condition}'")
        words[condition] = word
    return words


def query_parts(
    conditions: tuple[str, ...],
    texts: tuple[str, ...],
    options: TermOptions,
    image: Path | None,
    image_id: int | None,
    load: ImageLoader,
) -> QueryParts:
    """The conditions, words and terms the options give, all checked but the indexes."""
    from dior_search.search.terms import Term

    by_example = image is not None or image_id is not None or options.given
    words = text_words(texts, conditions, by_example)
    terms: list[Term] = []
    for value in options.examples:
        condition, path = named("--example", value)
        assert condition is not None
        terms.append(Term(condition, image=load(Path(path)), label=Path(path).name))
    for value in options.example_ids:
        condition, text = named("--example-id", value)
        assert condition is not None
        terms.append(Term(condition, id=row_id("--example-id", text)))
    for option, values, positive in (
        ("--word", options.words, True),
        ("--not-word", options.not_words, False),
    ):
        for value in values:
            condition, word = named(option, value)
            assert condition is not None
            terms.append(Term(condition, word=word, positive=positive))
    plain = [c for c in conditions if c not in words]
    if (image is not None or image_id is not None) and options.given:
        if not plain:
            raise UsageError(
                "the query IMAGE or --id is searched under the -c conditions: name one"
            )
        first = plain[0]
        for condition in plain:
            if image is not None:
                terms.append(Term(condition, image=load(image), label=image.name))
            else:
                assert image_id is not None
                terms.append(Term(condition, id=image_id, id_condition=first))
    # The -c conditions as given (a repeated one is the searcher's error), then the others.
    searched = [*conditions]
    for name in [*(t.condition for t in terms), *words]:
        if name not in searched:
            searched.append(name)
    example_conditions = [c for c in searched if c not in words]
    for option, values in (("--not", options.not_images), ("--not-id", options.not_ids)):
        for value in values:
            optional = option == "--not" and Path(value).is_file()
            condition, example = (None, value) if optional else named(option, value, optional=True)
            under = [condition] if condition is not None else example_conditions
            if not under:
                raise UsageError(f"{option} '{value}': name its condition (CONDITION=...)")
            for name in under:
                if option == "--not":
                    example_term = Term(
                        name, image=load(Path(example)), positive=False, label=Path(example).name
                    )
                else:
                    example_term = Term(name, id=row_id(option, example), positive=False)
                terms.append(example_term)
                if name not in searched:
                    searched.append(name)
    if not options.given:
        ordered = (*conditions, *(w for w in words if w not in conditions))
        found_words = tuple(words.get(c) for c in ordered) if words else None
        return QueryParts(ordered, found_words, ())
    if not terms:
        raise UsageError("give an example: --example, --example-id, --word, IMAGE or --id")
    found_words = tuple(words.get(c) for c in searched) if words else None
    return QueryParts(tuple(searched), found_words, tuple(terms))


class ImageLoader:
    """Query images loaded once per path (an image that is an example under several
    conditions is embedded once for all of them)."""

    def __init__(self) -> None:
        self.loaded: dict[Path, Image.Image] = {}

    def __call__(self, path: Path) -> Image.Image:
        from dior_search.data.images import load_image

        if path not in self.loaded:
            self.loaded[path] = load_image(path)
        return self.loaded[path]
