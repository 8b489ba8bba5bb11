"""The wordings of its four aspects that the bundled `tiny` demo model was trained on.

A user names a condition in their own words (`-c color`, `-c "object colour"`, `-c texture`);
a few-MB model only understands the phrasings it saw in training, so it is taught several per
aspect, and the command line warns, listing these, when it is asked anything else. Light on
purpose: the command line reads it without loading a model library.
"""

from __future__ import annotations

# Aspect (the synthetic collection's condition name) -> the phrasings taught for it. The first
# is the synthetic collection's own prompt phrase (data.synthetic.CONDITIONS).
TINY_WORDINGS: dict[str, tuple[str, ...]] = {
    "color": (
        "object color",
        "color",
        "colour",
        "object colour",
        "main color",
        "main colour",
        "shape color",
        "foreground color",
        "color of the object",
    ),
    "background": (
        "background color",
        "background",
        "background colour",
        "backdrop",
        "backdrop color",
        "color of the background",
    ),
    "pattern": (
        "pattern",
        "texture",
        "print",
        "fill",
        "fill pattern",
        "object pattern",
    ),
    "size": (
        "object size",
        "size",
        "object scale",
        "scale",
        "shape size",
        "how big",
    ),
}


def capitalized(wording: str) -> str:
    """The wording with its first letter upper-case, as a sentence would start it (also taught)."""
    return wording[:1].upper() + wording[1:]


def tiny_aspect(wording: str) -> str | None:
    """The aspect a wording names for the tiny model (None: a wording it was not taught).

    A taught wording counts as given or with its first letter capitalised; nothing else does
    (the model reads the text as given: `TEXTURE` or `texture ` are other words to it).

    >>> tiny_aspect("colour"), tiny_aspect("Texture"), tiny_aspect("shape")
    ('color', 'pattern', None)
    """
    for aspect, wordings in TINY_WORDINGS.items():
        if any(wording in (w, capitalized(w)) for w in wordings):
            return aspect
    return None


def known_wordings() -> str:
    """Every taught wording, by aspect, in one line: `color: object color, color, ...; ...`."""
    return "; ".join(f"{aspect}: {', '.join(w)}" for aspect, w in TINY_WORDINGS.items())
