"""The wordings of its four aspects that the bundled `tiny` demo model understands.

A user names a condition in their own words (`-c color`, `-c texture`); a few-MB model only
understands the phrasings it saw in training, so it is taught several per aspect, and the
command line warns, listing these, when it is asked anything else. Light on purpose: the
command line reads it without loading a model library.
"""

from __future__ import annotations

# Aspect (the synthetic collection's condition name) -> the phrasings the committed weights
# understand: each retrieves by its aspect's label about as well as the collection's own phrase
# (the first, data.synthetic.CONDITIONS, which the demo collection's indexes use). Measured in
# benchmarks/results/tiny_wordings-after.json; models.tiny_training.TRAINED_WORDINGS teaches them.
TINY_WORDINGS: dict[str, tuple[str, ...]] = {
    "color": ("object color", "color", "colour", "object colour", "main color"),
    "background": ("background color", "background", "backdrop"),
    "pattern": ("pattern", "texture"),
    "size": ("object size", "size"),
}


def tiny_aspect(wording: str) -> str | None:
    """The aspect a wording names for the tiny model (None: a wording it was not taught).

    The model reads the text as given: `Pattern` or `pattern ` are other words to it.

    >>> tiny_aspect("color"), tiny_aspect("texture"), tiny_aspect("hue")
    ('color', 'pattern', None)
    """
    for aspect, wordings in TINY_WORDINGS.items():
        if wording in wordings:
            return aspect
    return None


def known_wordings() -> str:
    """Every taught wording, by aspect, in one line: `color: object color; background: ...`."""
    return "; ".join(f"{aspect}: {', '.join(w)}" for aspect, w in TINY_WORDINGS.items())
