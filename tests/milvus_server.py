"""A standalone Milvus server for the tests: the `milvus` package's (2.3.5, the `dev` extra),
started once per test session on a fresh data folder, stopped at its end.

Each test root gets a database of its own (`milvus://127.0.0.1:PORT/tN`), so tests never see
each other's collections. Where the server cannot start the tests that need it are skipped,
unless DIOR_REQUIRE_MILVUS_SERVER=1 (as in CI), where they fail.
"""

import os
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REQUIRE_VARIABLE = "DIOR_REQUIRE_MILVUS_SERVER"
# Startup took about 10-25 s on 2 busy cores; far longer means it will not come up.
START_TIMEOUT_S = 180.0
# Milvus 2.3 allows 64 databases; older test databases are dropped past this many.
KEEP_DATABASES = 24


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    """The running server: its proxy's URI, and a database per test root."""

    def __init__(self) -> None:
        from milvus import MilvusServer  # the `milvus` package: a standalone server

        self.folder = Path(tempfile.mkdtemp(prefix="dior-milvus-server-"))
        self.server = MilvusServer(wait_for_started=False)
        # A fresh data folder every start: a restart on a killed server's folder can crash in
        # its embedded etcd.
        self.server.set_base_dir(str(self.folder / "data"))
        self.port = _free_port()
        self.server.config.set("proxy_port", self.port)
        self.server.start()
        self._wait_until_serving()
        self.databases: dict[Path, str] = {}
        self.made = 0
        from pymilvus import MilvusClient

        self.client = MilvusClient(uri=f"http://127.0.0.1:{self.port}")

    def _wait_until_serving(self) -> None:
        """/healthz says OK, then the proxy's port accepts."""
        health = f"http://127.0.0.1:{self.server.webservice_port}/healthz"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.server.server_proc is None or self.server.server_proc.poll() is not None:
                raise RuntimeError(f"the Milvus server exited; its logs: {self.folder}/data/logs")
            try:
                with urllib.request.urlopen(health, timeout=5) as answer:
                    if b"OK" in answer.read():
                        with socket.create_connection(("127.0.0.1", self.port), timeout=5):
                            return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.25)
        raise RuntimeError(f"the Milvus server did not answer in {START_TIMEOUT_S:.0f} s")

    def uri(self, root: Path) -> str:
        """The store of test root `root`: a database of its own, made on first use."""
        if root not in self.databases:
            self.made += 1
            name = f"t{self.made}"
            self.client.create_database(name)
            self.databases[root] = name
            self._drop_old()
        return f"milvus://127.0.0.1:{self.port}/{self.databases[root]}"

    def _drop_old(self) -> None:
        from pymilvus import MilvusClient

        for root in list(self.databases)[:-KEEP_DATABASES]:
            name = self.databases.pop(root)
            old = MilvusClient(uri=f"http://127.0.0.1:{self.port}", db_name=name)
            for collection in old.list_collections():
                old.drop_collection(collection)
            old.close()
            self.client.drop_database(name)

    def stop(self) -> None:
        self.client.close()
        self.server.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


_server: Server | None = None
_failure: str | None = None


def uri(root: Path) -> str:
    """A database of the session's server for test root `root`, the server started on first
    use; skips (or fails, with DIOR_REQUIRE_MILVUS_SERVER=1) where it cannot run."""
    global _server, _failure
    if _server is None and _failure is None:
        try:
            _server = Server()
        except Exception as exc:  # any reason it cannot run: one line, said once
            _failure = f"the Milvus server cannot run here: {type(exc).__name__}: {exc}"
    if _server is None:
        if os.environ.get(REQUIRE_VARIABLE) == "1":
            pytest.fail(f"{REQUIRE_VARIABLE}=1 but {_failure}")
        pytest.skip(str(_failure))
    return _server.uri(root)


def stop() -> None:
    """Stop the server if this session started one."""
    global _server
    if _server is not None:
        _server.stop()
        _server = None
