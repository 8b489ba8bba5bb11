"""`MilvusParts`: a distributed run on a Milvus store (SharedParts): parts staged in the
collection, published together by the process that completes the run."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dior_search.store.backend import IndexLocation, IndexState, PartPlan
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

    def state(self, location: IndexLocation) -> IndexState:
        """The paths and contents of an index's published rows, and its next id."""
        if self.store.manifest_at(location) is None:
            return IndexState(frozenset(), frozenset(), 0)
        reader = self.store.reader(location)
        return IndexState(
            frozenset(reader.paths()), frozenset(reader.content_hashes()), reader.manifest.next_id
        )

    def unfinished(self, location: IndexLocation) -> str | None:
        return None  # staged rows stay invisible: a run in one process removes them

    def resume(
        self,
        location: IndexLocation,
        manifest: Manifest,
        index_type: str | None,
        memory_budget: int | None,
    ) -> int | None:
        return None  # a publishing is one commit of the manifest: nothing to finish

    def staged_writer(
        self, location: IndexLocation, manifest: Manifest, plan: PartPlan
    ) -> MilvusWriter:
        return MilvusWriter(self.store, self.store.own(location), manifest, staged=True)

    def is_done(self, location: IndexLocation, plan: PartPlan) -> bool:
        return not self.missing_names(location, [plan.name], plan.digest)

    def mark_done(self, location: IndexLocation, plan: PartPlan, rows: int) -> None:
        where = self.store.own(location)
        marker = json.dumps({"plan": plan.digest, "rows": rows})
        self.store.conn.call(
            f"mark {plan.name} of {where.name} done",
            "alter_collection_properties",
            where.name,
            properties={PART_KEY + plan.name: marker},
        )

    def missing(self, location: IndexLocation, plan: PartPlan) -> list[int]:
        names = plan.names
        return [names.index(m) for m in self.missing_names(location, names, plan.digest)]

    def missing_names(self, location: IndexLocation, parts: Sequence[str], plan: str) -> list[str]:
        """The parts of `parts` not marked done under the plan digest `plan`."""
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

    def publish(
        self,
        location: IndexLocation,
        plan: PartPlan,
        manifest: Manifest,
        index_type: str | None,
        memory_budget: int | None,
    ) -> int | None:
        """Publish the staged rows below plan.end_id: the rows published, or None where
        another process claimed the publishing (the index type is set by the sync after)."""
        store, where = self.store, self.store.own(location)
        next_id = plan.end_id
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
        stored = store.read_manifest(where)[0]
        markers = [k for k, v in found.items() if k.startswith(PART_KEY) and v != CLEARED]
        rows = sum(int(json.loads(found[k]).get("rows", 0)) for k in markers)
        if stored.next_row_id < next_id:
            stored.next_row_id = next_id
            stored.database = Database(KIND, store.count(where, next_id))
            advance(stored)
            store.write_manifest(where, stored)
        store.conn.call(
            f"publish {where.name}",
            "alter_collection_properties",
            where.name,
            properties=dict.fromkeys([*markers, PUBLISHER_KEY], CLEARED),
        )
        return rows
