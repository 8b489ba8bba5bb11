"""The Milvus store: each index is one collection of a Milvus server or of a Milvus Lite
database (pip install 'dior-search[milvus]').

    --store milvus://HOST:PORT[/DATABASE]       a Milvus server (token: $DIOR_MILVUS_TOKEN)
    --store https://HOST[:PORT][/DATABASE]      a Milvus server over TLS (Zilliz Cloud, ...)
    --store milvus-lite:PATH.db                 Milvus Lite: a server inside this process,
                                                its data in the folder PATH.db

Layout (layout.py): one collection per (collection, embedder, condition),
`dior_<collection>__<embedder>__<condition>`, where every character but an ASCII letter or
digit is `_` and its UTF-8 bytes in hex (so two indexes never share a name; a name longer
than Milvus allows starts with a hash of it).
Fields (rows.py): `id` (INT64 primary key, the same ids as the folder store gives), `vector`
(the unit vector; inner product, so scores are cosine similarities), `path`, `content_hash`,
`norm`, and the row's other columns (`label_<name>`, ...) as dynamic fields, which filters
can name. The collection's property `dior_manifest` holds the manifest, verified on every
open exactly as a folder's manifest.json (checksum, field table, prompt) and checked against
the model; checks.py checks the rows themselves.

Commits (writer.py): the rows added are inserted with ids from the manifest's `next_row_id`
on, the rows deleted are deleted, then the manifest property is replaced (generation + 1,
`next_row_id` past the new ids, the live row count). Readers (reader.py) answer only ids
below their manifest's `next_row_id`, so rows of a commit in progress stay invisible until
it is published (Milvus has no snapshots: a deletion shows at once); a writer removes rows
above `next_row_id` that an interrupted commit left, and a reader refuses an index whose row
count is not its manifest's (data the database lost). Compaction and durability are the
database's own. Distributed runs: parts.py.

The package mirrors the folder store file by file: store.py (store.folder), layout.py
(store.layout), rows.py (store.shards), reader.py, writer.py, types.py (store.index_types);
connection.py and checks.py are the database's own.
"""

from dior_search.store.milvus.layout import (
    LITE,
    MANIFEST_KEY,
    Target,
    collection_name,
    escape,
    name_parts,
    parse_store_uri,
)
from dior_search.store.milvus.parts import MilvusParts
from dior_search.store.milvus.reader import MilvusReader
from dior_search.store.milvus.rows import fields_expression, string_literal
from dior_search.store.milvus.store import MilvusStore
from dior_search.store.milvus.writer import MilvusWriter

__all__ = [
    "LITE",
    "MANIFEST_KEY",
    "MilvusParts",
    "MilvusReader",
    "MilvusStore",
    "MilvusWriter",
    "Target",
    "collection_name",
    "escape",
    "fields_expression",
    "name_parts",
    "parse_store_uri",
    "string_literal",
]
