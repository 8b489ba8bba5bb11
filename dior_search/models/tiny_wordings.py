"""The wordings of its four aspects that the bundled `tiny` demo model was trained on.

A user names a condition in their own words (`-c color`, `-c texture`); a few-MB model only
understands the phrasing it saw in training, so the command line warns, listing these, when it is
asked anything else. Light on purpose: the command line reads it without loading a model library.
"""

from __future__ import annotations

# Aspect (the synthetic collection's condition name) -> the phrasings the committed weights were
# taught (models.tiny_training asks each aspect in the collection's own phrase,
# data.synthetic.CONDITIONS). Teaching it more wordings ("color", "texture", "backdrop", ...)
# is measured in benchmarks/results/tiny_wordings-*.json and is left for a retrained model.
TINY_WORDINGS: dict[str, tuple[str, ...]] = {
    "color": ("object color",),
    "background": ("background color",),
    "pattern": ("pattern",),
    "size": ("object size",),
}


def tiny_aspect(wording: str) -> str | None:
    """The aspect a wording names for the tiny model (None: a wording it was not taught).

    The model reads the text as given: `Pattern` or `pattern ` are other words to it.

    >>> tiny_aspect("object color"), tiny_aspect("pattern"), tiny_aspect("color")
    ('color', 'pattern', None)
    """
    for aspect, wordings in TINY_WORDINGS.items():
        if wording in wordings:
            return aspect
    return None


def known_wordings() -> str:
    """Every taught wording, by aspect, in one line: `color: object color; background: ...`."""
    return "; ".join(f"{aspect}: {', '.join(w)}" for aspect, w in TINY_WORDINGS.items())
