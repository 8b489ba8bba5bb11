"""The connection to a Milvus server or Milvus Lite database: every client failure one line
(IndexStoreError); the limits of one request."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from dior_search.errors import IndexStoreError, first_line
from dior_search.store.milvus.layout import LITE, Target

log = logging.getLogger(__name__)

# Rows per query of an iterator, ids per delete or get, results per search (Milvus's limit).
ITERATE_BATCH = 16_384
ID_BATCH = 4096
MAX_LIMIT = 16_384
# Bytes of vectors per insert request (gRPC messages are bounded).
INSERT_BYTES = 16 << 20
# Milvus Lite's servers opened by this process, by database folder: released with the last.
_lite_users: Counter[Path] = Counter()
_lite_lock = threading.Lock()


def quiet_client_logs() -> None:
    """pymilvus and Milvus Lite (and the gRPC server it runs in this process) log every
    failure with a traceback, also those they recover from; the store turns each failure into
    one line (IndexStoreError), so their logs are kept to criticals."""
    for name in ("pymilvus", "milvus_lite", "grpc._server"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


class Connection:
    """A MilvusClient whose failures are one-line IndexStoreErrors naming the store."""

    def __init__(self, target: Target, create: bool) -> None:
        quiet_client_logs()
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException

        self.target = target
        self.errors: tuple[type[BaseException], ...] = (MilvusException, ConnectionError)
        if target.lite_path is not None:
            check_lite_folder(target.lite_path, create)
        try:
            self.client = MilvusClient(
                uri=target.client_uri, token=target.token, db_name=target.db_name
            )
        except self.errors as exc:
            raise IndexStoreError(open_failure(target, exc)) from None

    def call(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """`client.<method>(...)`; IndexStoreError saying what could not be done."""
        try:
            return getattr(self.client, method)(*args, **kwargs)
        except self.errors as exc:
            raise IndexStoreError(f"{self.target.uri}: cannot {what}: {reason(exc)}") from None

    def close(self) -> None:
        with contextlib.suppress(*self.errors):
            self.client.close()


def reason(exc: BaseException) -> str:
    """A client error's message without its code and class name."""
    message = getattr(exc, "message", None) or str(exc)
    return first_line(Exception(message))


def check_lite_folder(path: Path, create: bool) -> None:
    """A Milvus Lite database folder to open: there (or creatable), and a database."""
    if path.exists() and not path.is_dir():
        raise IndexStoreError(
            f"{path} is not a Milvus Lite database (a file, where a database is a folder); "
            "move it away or name another .db"
        )
    if not path.exists():
        if not create:
            raise IndexStoreError(
                f"no Milvus Lite database {path}: run `dior-search index --store "
                f"{LITE}{path}` first"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not create and not ((path / "collections").is_dir() or (path / "LOCK").exists()):
        raise IndexStoreError(f"{path} is a folder but not a Milvus Lite database")


def open_failure(target: Target, exc: BaseException) -> str:
    """Why a store could not be opened, as one line."""
    path = target.lite_path
    if path is not None and lite_locked(path):
        return (
            f"{target.uri}: another process has this Milvus Lite database open (Milvus Lite "
            "serves one process at a time; several processes need a Milvus server)"
        )
    return f"cannot open {target.uri}: {reason(exc)}"


def lite_locked(path: Path) -> bool:
    """Whether another process holds Milvus Lite's lock on the database folder."""
    lock = path / "LOCK"
    if not lock.is_file():
        return False
    with lock.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


# -- the store ------------------------------------------------------------------------------
