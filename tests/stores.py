"""The stores every store test runs against: the folder store and Milvus Lite (skipped where
pymilvus and milvus-lite are not installed: `pip install 'dior-search[milvus]'`)."""

from pathlib import Path

import pytest

from dior_search.store.backend import IndexStore
from dior_search.store.stores import open_store

STORE_KINDS = ("folder", "milvus-lite")


def store_spec(kind: str, root: Path) -> str | None:
    """The --store value of a store kind under `root` (None: the folder store)."""
    if kind == "folder":
        return None
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    return f"milvus-lite:{root / 'indexes.db'}"


def store_args(kind: str, root: Path) -> list[str]:
    """The CLI options that name the store: --indexes, or --store."""
    spec = store_spec(kind, root)
    return ["--indexes", str(root / "indexes")] if spec is None else ["--store", spec]


def opened(kind: str, root: Path) -> IndexStore:
    """A store of `kind` under `root`, created if new."""
    return open_store(store_spec(kind, root), root / "indexes", create=True)


def milvus_filters_sent(monkeypatch) -> list[str]:
    """The filter expression of every search any Milvus client is asked for from now on."""
    from pymilvus import MilvusClient

    sent: list[str] = []
    search = MilvusClient.search

    def spy(self, *args, **kwargs):
        sent.append(kwargs.get("filter", ""))
        return search(self, *args, **kwargs)

    monkeypatch.setattr(MilvusClient, "search", spy)
    return sent
