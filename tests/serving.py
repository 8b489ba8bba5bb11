"""Helpers for the serve tests: a live server in a thread, services with other settings,
images to upload, an embedder that counts its calls."""

import dataclasses
import hashlib
import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from descriptions import described, prompt_of
from PIL import Image

from dior_search.data.synthetic import make_item
from dior_search.search.searcher import Searcher
from dior_search.serve.app import make_server
from dior_search.serve.service import SearchService, ServeSettings
from dior_search.store.manifest import Manifest
from dior_search.store.schema import Row
from dior_search.store.writer import IndexWriter


def with_settings(service: SearchService, **changes: Any) -> SearchService:
    """A fresh service (empty caches) over the same indexes and model, other settings."""
    embedder = changes.pop("embedder", service.searcher.load_embedder())
    settings = dataclasses.replace(service.settings, **changes)
    searcher = Searcher(service.searcher.entries, settings.search_options(), embedder)
    return SearchService(searcher, settings)


@contextmanager
def running(service: SearchService) -> Iterator[str]:
    """Serve on a free 127.0.0.1 port in a thread; stopped on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = make_server(service, "127.0.0.1", port)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def post_json(url: str, body: Any, timeout: float = 60) -> tuple[int, Any]:
    """POST a JSON body with the standard library; (status, decoded JSON answer)."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    return send(request, timeout)


def post_multipart(
    url: str, fields: list[tuple[str, str]], image: bytes, timeout: float = 60
) -> tuple[int, Any]:
    """POST a multipart form with an `image` file part and text fields."""
    boundary = "dior-test-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="q.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + image
        + b"\r\n"
    )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        url, data=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"}
    )
    return send(request, timeout)


def send(request: urllib.request.Request, timeout: float) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def fresh_image(index: int) -> tuple[dict[str, str], bytes]:
    """A synthetic image that is not in the index, with its labels."""
    item, image = make_item(0, "extra", index)
    return {"color": item.color, "background": item.background}, png_bytes(image)


def assert_one_line_error(response, status, fragment=""):
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert "\n" not in response.text
    body = response.json()
    assert list(body) == ["error"]
    assert fragment in body["error"]


class CountingEmbedder:
    """The real embedder, counting which condition texts each call embeds."""

    def __init__(self, inner, delay: float = 0.0) -> None:
        self.inner = inner
        self.calls: list[list[str | None]] = []
        self.delay = delay

    @property
    def dim(self) -> int:
        return int(self.inner.dim)

    def describe(self):
        return self.inner.describe()

    def check_size(self, width, height):
        self.inner.check_size(width, height)

    def embed(self, images, conditions, on_progress=None):
        self.calls.append(list(conditions))
        time.sleep(self.delay)
        return self.inner.embed(images, conditions, on_progress)


def service_of_files(directory: Path, root: Path, rows: list[tuple[str, Path]]) -> SearchService:
    """A service (no model) over an index at `directory` of collection `c` under `color`,
    one row per (path under `root`, file whose content hash the row records)."""
    writer = IndexWriter(
        directory,
        Manifest(
            collection={"name": "c", "root": str(root)},
            condition={"name": "color", "text": "color"},
            prompt=prompt_of("color"),
            embedder=described("m", dim=4),
            dim=4,
        ),
    )
    for number, (path, real) in enumerate(rows):
        digest = hashlib.sha256(real.read_bytes()).hexdigest()
        writer.add(np.eye(4, dtype=np.float32)[number], Row(path, digest))
    writer.close()
    return SearchService(Searcher.of_directories([directory]), ServeSettings())
