"""The Hugging Face hub, reachable or not: decided once, in at most a few seconds.

Without `HF_HUB_OFFLINE`, huggingface_hub retries an unreachable hub five times with growing
waits (about 30 s of warnings) before the loader can say that a model is not cached. A run
that is about to load a model from the hub first tries one connection to the hub's host; if
that fails, the process works offline (`HF_HUB_OFFLINE=1`, set before the model libraries are
imported): a cached model loads as usual, a missing one is one error line at once.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

from dior_search import defaults

DEFAULT_ENDPOINT = "https://huggingface.co"
# How long the hub may take to accept one connection (name lookup included).
PROBE_S = 3.0
BUNDLED = ("tiny",)


def offline_asked() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "yes", "true")


def needs_hub(model: str) -> bool:
    """Whether loading `model` may ask the hub: not the bundled model, not a local folder."""
    return model not in BUNDLED and not Path(model).expanduser().is_dir()


def reachable(endpoint: str, timeout: float = PROBE_S) -> bool:
    """Whether the endpoint's host accepts a TCP connection within `timeout` seconds (the
    name lookup, which a socket timeout does not bound, runs in a thread given as long)."""
    parts = urlsplit(endpoint)
    host = parts.hostname
    if host is None:
        return False
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return False
    answer: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            answer.append(True)
        except OSError:
            answer.append(False)

    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(timeout)
    return bool(answer and answer[0])


def settle_hub_access(models: list[str | None]) -> None:
    """Work offline from here on if a model is to come from the hub and the hub is not
    reachable; nothing if offline was asked, or every model is local."""
    wanted = [m or defaults.DEFAULT_MODEL for m in models]
    if offline_asked() or not any(needs_hub(m) for m in wanted):
        return
    if reachable(os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT)):
        return
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub = sys.modules.get("huggingface_hub.constants")
    if hub is not None:  # imported already: its flag was read then
        hub.HF_HUB_OFFLINE = True  # type: ignore[attr-defined]
