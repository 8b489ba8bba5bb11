"""`MilvusParts`: a distributed run on a Milvus store (SharedParts): parts staged in the
collection, published together by the process that completes the run."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dior_search.store.backend import (
    IndexLocation,
)
from dior_search.store.manifest import (
    Database,
    Manifest,
    advance,
)
from dior_search.store.milvus.layout import CLEARED, KIND, PART_KEY, PUBLISHER_KEY
from dior_search.store.milvus.writer import MilvusWriter

if TYPE_CHECKING:
    from dior_search.store.milvus.store import MilvusStore


# A process that claims the publishing of a distributed run's parts waits this long for a
# competing claim before it reads back whose claim stands (Milvus has no locks).
CLAIM_WAIT_S = 2.0


@dataclass(frozen=True)
class MilvusParts:
    """A distributed run on a Milvus store: each part's rows are staged in the collection
    (ids above the manifest's next_row_id), its completion is a collection property, and
    the process that finds every part complete publishes them all in one commit."""

    store: MilvusStore

    @property
    def single_process(self) -> bool:
        """Milvus Lite: one process at a time (parts run one after another)."""
        return self.store.lite

    def staged_writer(self, location: IndexLocation, manifest: Manifest) -> MilvusWriter:
        return MilvusWriter(self.store, self.store.own(location), manifest, staged=True)

    def mark_done(self, location: IndexLocation, part: str, plan: str, rows: int) -> None:
        where = self.store.own(location)
        marker = json.dumps({"plan": plan, "rows": rows})
        self.store.conn.call(
            f"mark {part} of {where.name} done",
            "alter_collection_properties",
            where.name,
            properties={PART_KEY + part: marker},
        )

    def missing(self, location: IndexLocation, parts: Sequence[str], plan: str) -> list[str]:
        where = self.store.own(location)
        if not self.store.exists(where):
            return list(parts)
        found = self.store.properties(where.name)
        done = {
            key.removeprefix(PART_KEY)
            for key, value in found.items()
            if key.startswith(PART_KEY)
            and value != CLEARED
            and json.loads(value).get("plan") == plan
        }
        return [part for part in parts if part not in done]

    def publish(self, location: IndexLocation, plan: str, next_id: int) -> int | None:
        """Publish the staged rows below `next_id`: the rows published, or None where another
        process claimed the publishing."""
        store, where = self.store, self.store.own(location)
        token = uuid.uuid4().hex
        store.conn.call(
            f"publish {where.name}",
            "alter_collection_properties",
            where.name,
            properties={PUBLISHER_KEY: token},
        )
        if not store.lite:
            time.sleep(CLAIM_WAIT_S)
        found = store.properties(where.name)
        if found.get(PUBLISHER_KEY) != token:
            return None
        manifest = store.read_manifest(where)[0]
        markers = [k for k, v in found.items() if k.startswith(PART_KEY) and v != CLEARED]
        rows = sum(int(json.loads(found[k]).get("rows", 0)) for k in markers)
        if manifest.next_row_id < next_id:
            manifest.next_row_id = next_id
            manifest.database = Database(KIND, store.count(where, next_id))
            advance(manifest)
            store.write_manifest(where, manifest)
        store.conn.call(
            f"publish {where.name}",
            "alter_collection_properties",
            where.name,
            properties=dict.fromkeys([*markers, PUBLISHER_KEY], CLEARED),
        )
        return rows
