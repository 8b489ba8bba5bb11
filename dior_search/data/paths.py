"""File names as data: how a collection's paths are held, compared and shown.

A path is held as a `str` exactly as `os.fsdecode` makes it from the file system's bytes:
bytes that are not valid UTF-8 become lone surrogates (Python's "surrogateescape"), so every
name the file system allows (tabs, newlines, invalid UTF-8, bidirectional controls) is kept
exactly and `os.fsencode` gives its bytes back. Such a string cannot be encoded as UTF-8
text, so it is stored with care (see `store.shards`) and never printed as it is: `shown`
escapes whatever could break a line, fake another name or fail to print.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

# Escapes of the characters that would break a line or a tab-separated field.
NAMED_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
# Unicode categories never shown raw: controls, format characters (bidirectional overrides,
# zero-width marks), line and paragraph separators, surrogates and unassigned code points.
HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})
# The zero-width joiner is a format character that only joins emoji; it cannot fake a name.
SHOWN_FORMAT_CHARACTERS = frozenset({"\u200d"})


def is_text(name: str) -> bool:
    """Whether `name` is valid Unicode text (no byte that was not UTF-8)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def name_bytes(name: str) -> bytes:
    """The file system's bytes of a name held as `os.fsdecode` holds it."""
    return name.encode("utf-8", "surrogateescape")


def from_bytes(raw: bytes) -> str:
    """A name's bytes as the string this package holds it as (the inverse of `name_bytes`)."""
    return raw.decode("utf-8", "surrogateescape")


def readable(name: str) -> str:
    """`name` as valid text: each byte that was not UTF-8 becomes U+FFFD (lossy)."""
    return name_bytes(name).decode("utf-8", "replace")


def shown(text: str) -> str:
    """`text` safe to print on one line: backslashes, tabs, newlines, controls, bidirectional
    and other invisible characters and bytes that were not UTF-8 become backslash escapes.

    The escaping is reversible (a backslash is doubled), so an escaped name names one file.

    >>> shown("a\\tb\\nc.png"), shown("evil\\u202egnp.exe"), shown(os.fsdecode(b"bad\\xff.png"))
    ('a\\\\tb\\\\nc.png', 'evil\\\\u202egnp.exe', 'bad\\\\xff.png')
    >>> shown("caf\\u00e9 \\U0001F600.png")
    'café 😀.png'
    """
    if text.isprintable() and "\\" not in text:
        return text  # the common case, fast
    return "".join(shown_character(c) for c in text)


def shown_character(character: str) -> str:
    if character in NAMED_ESCAPES:
        return NAMED_ESCAPES[character]
    code = ord(character)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, held by surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    category = unicodedata.category(character)
    if category in HIDDEN_CATEGORIES and character not in SHOWN_FORMAT_CHARACTERS:
        if code < 0x100:
            return f"\\x{code:02x}"
        return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
    return character


def fs_path(path: Path) -> str | None:
    """`path` as text a C library can open (FAISS, Arrow), or None if its name is not UTF-8."""
    text = os.fspath(path)
    return text if is_text(text) else None
