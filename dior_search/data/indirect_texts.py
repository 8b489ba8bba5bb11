"""Word lists of the InDiReCT baseline: per condition, a template and the items it is filled with.

The paper's datasets use the reference repository's lists (`metadata/indirect_texts.json`, MIT
licence, `metadata/LICENSE-reference-repo`), keyed there by its dataset and aspect names;
cars196 uses its car-model list (written for the synthetic cars set). The lists for our
generated `synthetic` set are this project's own. A condition is looked up by its prompt
phrase, which is what an embedder is given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache

from dior_search.data.collections import METADATA_DIR
from dior_search.errors import UsageError

REFERENCE_LISTS = METADATA_DIR / "indirect_texts.json"
# Prompt phrase -> (the reference's dataset, aspect).
REFERENCE_ASPECTS = {
    "clothing category": ("deepfashion", "clothing_category"),
    "texture type": ("deepfashion", "texture"),
    "fabric type": ("deepfashion", "fabric"),
    "fit type": ("deepfashion", "fit"),
    "movie genre": ("movie_posters", "genre"),
    "movie's production country": ("movie_posters", "country"),
    "bird species": ("cub200", "bird_species"),
    "car model": ("synthetic_cars", "car_model"),
    "car color": ("synthetic_cars", "car_color"),
}
COLOR_NAMES = [
    "red", "green", "blue", "yellow", "purple", "orange", "pink", "brown", "black", "white",
    "gray", "teal", "cyan", "magenta", "navy", "beige", "gold", "silver", "maroon", "olive",
    "lime", "violet", "turquoise", "lavender",
]  # fmt: skip
SYNTHETIC_LISTS = {
    "object color": ("a photo of a {item} shape", COLOR_NAMES),
    "background color": ("a photo of a shape on a {item} background", COLOR_NAMES),
    "pattern": (
        "a photo of a shape with a {item} pattern",
        [
            "solid", "striped", "dotted", "checkered", "plaid", "floral", "zigzag", "wavy",
            "spotted", "plain", "gradient", "grid", "paisley", "camouflage", "polka dot",
            "speckled", "marbled", "herringbone", "hatched", "mottled",
        ],
    ),
    "object size": (
        "a photo of a {item} shape",
        [
            "small", "large", "tiny", "huge", "medium", "big", "little", "giant", "miniature",
            "enormous", "compact", "massive", "petite", "oversized", "minute", "vast",
        ],
    ),
}  # fmt: skip


@dataclass(frozen=True)
class WordList:
    """A condition's texts: `template` filled with each item."""

    template: str
    items: tuple[str, ...]

    def texts(self) -> list[str]:
        return [self.template.format(item=item) for item in self.items]


@cache
def reference_lists() -> dict[tuple[str, str], WordList]:
    """The reference repository's lists by (dataset, aspect)."""
    raw = json.loads(REFERENCE_LISTS.read_text(encoding="utf-8"))
    return {
        (dataset, aspect): WordList(str(entry["template"]), tuple(map(str, entry["items"])))
        for dataset, aspects in raw.items()
        for aspect, entry in aspects.items()
    }


def word_list(condition_text: str | None) -> WordList:
    """The word list of a condition's prompt phrase; UsageError naming those that have one."""
    if condition_text in SYNTHETIC_LISTS:
        template, items = SYNTHETIC_LISTS[condition_text]
        return WordList(template, tuple(items))
    if condition_text in REFERENCE_ASPECTS:
        return reference_lists()[REFERENCE_ASPECTS[condition_text]]
    known = ", ".join(sorted([*SYNTHETIC_LISTS, *REFERENCE_ASPECTS]))
    raise UsageError(
        f"no InDiReCT word list for condition {condition_text!r}; conditions with one: {known}"
    )
