"""The stores every store test runs against: the folder store, Milvus Lite (skipped where
pymilvus and milvus-lite are not installed: `pip install 'dior-search[milvus]'`) and a
standalone Milvus server (the `milvus` package of the `dev` extra, started once per session by
tests/milvus_server.py; skipped where it cannot run, failed instead with
DIOR_REQUIRE_MILVUS_SERVER=1, as in CI)."""

from pathlib import Path

import pytest

from dior_search.store.backend import IndexStore
from dior_search.store.stores import open_store

# The Milvus server's variants are slow: its round trips are real network calls.
STORE_KINDS = ("folder", "milvus-lite", pytest.param("milvus-server", marks=pytest.mark.slow))
# The database stores, each compared with the folder store.
DATABASE_KINDS = ("milvus-lite", pytest.param("milvus-server", marks=pytest.mark.slow))


def store_spec(kind: str, root: Path) -> str | None:
    """The --store value of a store kind under `root` (None: the folder store)."""
    if kind == "folder":
        return None
    pytest.importorskip("pymilvus")
    if kind == "milvus-server":
        import milvus_server

        return milvus_server.uri(root)
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
