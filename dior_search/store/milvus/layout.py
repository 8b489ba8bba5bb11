"""Where an index of a Milvus store lives: the `--store` value parsed, and one collection
per (collection, embedder, condition) with a name Milvus accepts; the keys of the
collection properties the store keeps (mirrors store.layout of the folder store)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from dior_search.errors import UsageError

LITE = "milvus-lite:"
SERVER_SCHEMES = ("milvus", "http", "https")
TOKEN_VARIABLE = "DIOR_MILVUS_TOKEN"
PREFIX = "dior_"
SEPARATOR = "__"
# Milvus's longest collection name; longer ones keep a prefix and end in a hash.
MAX_NAME = 255
MANIFEST_KEY = "dior_manifest"
PART_KEY = "dior_part_"
PUBLISHER_KEY = "dior_publisher"
# A part's marker or the publisher's claim once a run is published: properties are set to
# this rather than dropped (Milvus servers before 2.5 cannot drop a collection's property).
CLEARED = ""
KIND = "milvus"


@dataclass(frozen=True)
class Target:
    """A parsed `--store` value: what messages show, and how to connect."""

    uri: str
    client_uri: str
    db_name: str = ""
    lite_path: Path | None = None
    token: str = field(default="", repr=False)


def parse_store_uri(spec: str) -> Target:
    """A Milvus `--store` value; UsageError naming the valid forms otherwise."""
    if spec.startswith(LITE):
        path = Path(spec.removeprefix(LITE)).expanduser().absolute()
        if path.suffix != ".db" or not spec.removeprefix(LITE):
            raise UsageError(
                f"--store {spec!r}: a Milvus Lite database is a folder whose name ends in .db "
                "(milvus-lite:PATH.db)"
            )
        return Target(f"{LITE}{path}", str(path), lite_path=path)
    parts = urlsplit(spec)
    if parts.scheme not in SERVER_SCHEMES or not parts.hostname:
        raise UsageError(
            f"--store {spec!r} is not a store: give milvus-lite:PATH.db, milvus://HOST:PORT or "
            "https://HOST[:PORT] (omit --store for the index folders under --indexes)"
        )
    if parts.username or parts.password or parts.query:
        raise UsageError(
            f"--store takes no user, password or query: put the Milvus token in the "
            f"environment variable {TOKEN_VARIABLE}"
        )
    scheme = "http" if parts.scheme == "milvus" else parts.scheme
    port = f":{parts.port}" if parts.port else ""
    address = f"{scheme}://{parts.hostname}{port}"
    shown = f"{parts.scheme}://{parts.hostname}{port}{parts.path.rstrip('/')}"
    return Target(shown, address, parts.path.strip("/"), token=os.environ.get(TOKEN_VARIABLE, ""))


# -- collection names -----------------------------------------------------------------------


def escape(text: str) -> str:
    """Letters and digits as they are, every other character as `_` and its UTF-8 bytes in
    hex: a name Milvus accepts, and a different one for every text.

    >>> escape("color"), escape("object color"), escape("a_b")
    ('color', 'object_20color', 'a_5fb')
    """
    out = []
    for char in text:
        if char.isascii() and char.isalnum():
            out.append(char)
        else:
            out.append("".join(f"_{byte:02x}" for byte in char.encode("utf-8", "surrogatepass")))
    return "".join(out)


def unescape(text: str) -> str:
    data = bytearray()
    position = 0
    while position < len(text):
        if text[position] == "_":
            data.append(int(text[position + 1 : position + 3], 16))
            position += 3
        else:
            data += text[position].encode()
            position += 1
    return data.decode("utf-8", "surrogatepass")


def collection_name(collection: str, embedder: str, condition: str) -> str:
    """The Milvus collection of (collection, embedder folder, condition).

    >>> collection_name("synthetic", "tiny", "color")
    'dior_synthetic__tiny__color'
    """
    name = PREFIX + SEPARATOR.join(escape(part) for part in (collection, embedder, condition))
    if len(name) <= MAX_NAME:
        return name
    # `_h` is no escape (h is no hex digit): a hashed name never equals a readable one.
    digest = hashlib.sha256(name.encode()).hexdigest()
    return f"{PREFIX}_h{digest}_{name.removeprefix(PREFIX)}"[:MAX_NAME]


def name_parts(name: str) -> tuple[str, str, str] | None:
    """(collection, embedder, condition) of a readable collection name (None: hashed, or not
    one of this store's names)."""
    if not name.startswith(PREFIX):
        return None
    body = name.removeprefix(PREFIX)
    parts: list[str] = []
    start = position = 0
    try:
        while position < len(body):
            if body.startswith(SEPARATOR, position):
                parts.append(unescape(body[start:position]))
                position += len(SEPARATOR)
                start = position
            elif body[position] == "_":
                int(body[position + 1 : position + 3], 16)  # an escape, or not this store's
                position += 3
            else:
                position += 1
        parts.append(unescape(body[start:]))
    except (ValueError, UnicodeDecodeError):
        return None
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else None


# -- the connection -------------------------------------------------------------------------
