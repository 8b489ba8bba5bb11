"""The HTTP API of `dior-search serve`: in-process with Starlette's TestClient, and on a socket."""

import http.client
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stdout
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image
from serving import (
    CountingEmbedder,
    assert_one_line_error,
    fresh_image,
    png_bytes,
    post_json,
    post_multipart,
    running,
    service_of_files,
    with_settings,
)
from starlette.testclient import TestClient

from dior_search.cli import main
from dior_search.data.decode_budget import default_budget_bytes
from dior_search.data.images import decode_image
from dior_search.search.joined import JoinedIndexes, normalize_weights
from dior_search.serve.app import create_app
from dior_search.serve.service import (
    NotFound,
)

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def client(served):
    with TestClient(create_app(served.service), base_url="http://localhost") as test_client:
        yield test_client


def upload(client, data: bytes) -> str:
    response = client.post("/api/uploads", files={"image": ("q.png", data, "image/png")})
    assert response.status_code == 200, response.text
    return str(response.json()["upload"])


def query(client, **body):
    body.setdefault("collection", "synthetic")
    return client.post("/api/query", json=body)


def test_collections_and_their_conditions(client):
    body = client.get("/api/collections").json()
    assert body["model"]["model"] == "tiny"
    assert body["limits"] == {
        "max_upload_bytes": 20 * MIB,
        "max_pixels": 50_000_000,
        "max_decode_bytes": default_budget_bytes(),
        "timeout_s": 30.0,
        "max_k": 100,
    }
    assert body["collections"] == [
        {
            "name": "synthetic",
            "images": 120,
            "conditions": [
                {
                    "name": "background",
                    "text": "background color",
                    "rows": 120,
                    "answers": "stored",
                },
                {"name": "color", "text": "object color", "rows": 120, "answers": "stored"},
            ],
        }
    ]


def test_page_and_image_listing(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/api/query" in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    listing = client.get("/api/collections/synthetic/images?condition=color&offset=118").json()
    assert listing["total"] == 120 and [i["id"] for i in listing["images"]] == [118, 119]
    assert listing["images"][0]["path"] == "test/00118.png"
    thumbnail = client.get(listing["images"][0]["thumbnail"])
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
    assert (
        Image.open(io.BytesIO(thumbnail.content)).size
        == Image.open(
            io.BytesIO(
                (
                    client.app.state.service.searcher.collections["synthetic"]
                    .conditions["color"]
                    .root
                    / "test/00118.png"
                ).read_bytes()
            )
        ).size
    )


@pytest.mark.parametrize("condition", ["color", "background"])
def test_query_by_id_equals_cli_query_by_id(client, served, condition):
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(
            [
                "query",
                "--id",
                "5",
                "--condition",
                condition,
                "--dataset",
                "synthetic",
                *served.store_args,
                "--json",
            ]
        )
    assert code == 0
    cli = json.loads(out.getvalue())
    api = query(client, conditions=[condition], id=5, k=10).json()
    assert [(h["id"], h["path"], h["labels"]) for h in api["hits"]] == [
        (h["id"], h["path"], h["labels"]) for h in cli
    ]
    assert [h["score"] for h in api["hits"]] == [h["score"] for h in cli]
    assert api["query"]["path"] == "test/00005.png"


def test_upload_query_finds_the_label_and_reranks_without_new_upload(client):
    labels, data = fresh_image(3)
    digest = upload(client, data)
    for condition in ("color", "background", "color"):
        hits = query(client, conditions=[condition], upload=digest).json()["hits"]
        same = sum(h["labels"][condition] == labels[condition] for h in hits)
        assert same >= 8, (condition, [h["labels"] for h in hits])


def test_an_upload_is_embedded_once_per_condition(served):
    counting = CountingEmbedder(served.service.searcher.load_embedder())
    service = with_settings(served.service, embedder=counting)
    with TestClient(create_app(service), base_url="http://localhost") as test_client:
        digest = upload(test_client, fresh_image(4)[1])
        assert upload(test_client, fresh_image(4)[1]) == digest
        query(test_client, conditions=["color"], upload=digest)
        query(test_client, conditions=["color"], upload=digest, k=5)
        both = query(test_client, conditions=["color", "background"], upload=digest)
        query(test_client, conditions=["background"], upload=digest)
    assert counting.calls == [["object color"], ["background color"]]
    assert both.status_code == 200


def test_expired_upload_asks_for_the_image_again(served):
    service = with_settings(served.service, upload_cache_entries=1)
    with TestClient(create_app(service), base_url="http://localhost") as test_client:
        first = upload(test_client, fresh_image(5)[1])
        upload(test_client, fresh_image(6)[1])
        response = query(test_client, conditions=["color"], upload=first)
    assert_one_line_error(response, 404, "upload it again")


def test_one_shot_multipart_query(client, served):
    data = served.image(17).read_bytes()
    response = client.post(
        "/api/query",
        data={"collection": "synthetic", "condition": ["background", "color"], "k": "4"},
        files={"image": ("q.png", data, "image/png")},
    )
    body = response.json()
    assert response.status_code == 200, body
    assert [c["name"] for c in body["conditions"]] == ["background", "color"]
    assert len(body["hits"]) == 4
    assert body["hits"][0]["id"] == 17 and body["hits"][0]["score"] > 0.999


def test_multi_condition_weights(client):
    body = query(client, conditions=["color", "background"], weights=[3, 1], id=8, k=15).json()
    assert body["conditions"] == [
        {"name": "color", "weight": 0.75},
        {"name": "background", "weight": 0.25},
    ]
    scores = [h["score"] for h in body["hits"]]
    assert scores == sorted(scores, reverse=True)
    for hit in body["hits"]:
        expected = 0.75 * hit["scores"]["color"] + 0.25 * hit["scores"]["background"]
        assert hit["score"] == pytest.approx(expected, abs=1e-6)
    heavy_background = query(
        client, conditions=["color", "background"], weights=[1, 9], id=8, k=15
    ).json()
    assert [h["id"] for h in heavy_background["hits"]] != [h["id"] for h in body["hits"]]
    # An id named under another condition is the same image.
    named = query(client, conditions=["background"], id=8, id_condition="color", k=5).json()
    assert named["hits"][0]["id"] == 8


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"collection": "nope", "conditions": ["color"], "id": 1}, 404, "searched: synthetic"),
        ({"conditions": ["size"], "id": 1}, 404, "conditions with an index: background, color"),
        ({"conditions": ["color"], "id": 120}, 404, "ids 0..119"),
        ({"conditions": ["color"], "id": 1, "k": 0}, 400, "k must be between 1 and 100"),
        ({"conditions": ["color"], "id": 1, "k": 101}, 400, "k must be between 1 and 100"),
        ({"conditions": ["color"], "id": 1, "upload": "0" * 64}, 400, "exactly one"),
        ({"conditions": ["color"]}, 400, "exactly one"),
        ({"conditions": [], "id": 1}, 400, "non-empty list"),
        ({"conditions": ["color", "color"], "id": 1}, 400, "repeated"),
        ({"conditions": ["color", "background"], "id": 1, "weights": [1]}, 400, "one weight"),
        ({"conditions": ["color", "background"], "id": 1, "weights": [1, 0]}, 400, "positive"),
        ({"conditions": ["color"], "id": 1, "colour": "x"}, 400, "unknown field 'colour'"),
        ({"conditions": ["color"], "id": -1}, 400, "non-negative"),
        ({"conditions": ["color"], "upload": "../../etc/passwd"}, 400, "64-hex-digit"),
        ({"conditions": ["color"], "upload": "a" * 64}, 404, "upload it again"),
    ],
)
def test_bad_queries_get_one_line_errors(client, body, status, fragment):
    body.setdefault("collection", "synthetic")
    assert_one_line_error(client.post("/api/query", json=body), status, fragment)


def test_other_bad_requests_get_one_line_errors(client):
    not_json = client.post(
        "/api/query", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_one_line_error(not_json, 400, "JSON")
    assert_one_line_error(client.get("/api/query"), 405)
    assert_one_line_error(client.get("/api/nothing"), 404, "not found")
    not_image = client.post("/api/uploads", files={"image": ("x.png", b"GIF89a-nope", "image/png")})
    assert_one_line_error(not_image, 400, "not an image")
    empty = client.post("/api/uploads", content=b"", headers={"content-type": "image/png"})
    assert_one_line_error(empty, 400, "empty")
    assert_one_line_error(client.get("/api/collections/synthetic/images?limit=x"), 400, "integer")


TRAVERSALS = [
    "/../../../../etc/passwd",
    "//etc/passwd",
    "/etc/passwd",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/..%2F..%2F..%2Fetc%2Fpasswd",
    "/static/../pyproject.toml",
    "/index.html",
    "/dior_search/static/index.html",
    "/api/thumbnail/synthetic/color/../../../../etc/passwd",
    "/api/thumbnail/synthetic/color/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/api/thumbnail/synthetic/color/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/api/thumbnail/synthetic/..%2F..%2Fetc%2Fpasswd/1",
    "/api/thumbnail/synthetic/%2Fetc%2Fpasswd/1",
    "/api/thumbnail/%2Fetc%2Fpasswd/color/1",
    "/api/thumbnail/..%2F..%2F..%2Fetc/color/1",
    "/api/thumbnail/synthetic/../color/1",
    "/api/thumbnail/synthetic/color/%252e%252e%252fetc%252fpasswd",
    "/api/thumbnail/synthetic/color/-1",
    "/api/thumbnail/synthetic/color/120",
    "/api/thumbnail/synthetic/color/1/../../../../etc/passwd",
    "/api/thumbnail/synthetic/color/test%2F00001.png",
    "/api/collections/..%2F..%2Fetc/images",
    "/api/collections/%2Fetc/images",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_path_traversal_is_404(live_url, path):
    """Raw paths over a socket, exactly as sent: no client normalises them first."""
    address = urlsplit(live_url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    assert response.status == 404, (path, body)
    assert b"root:" not in body and b"[project]" not in body
    assert list(json.loads(body)) == ["error"]


def test_thumbnails_come_only_from_index_rows_inside_the_root(tmp_path, served):
    root = tmp_path / "images"
    root.mkdir()
    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8), "red").save(secret)
    (root / "link.png").symlink_to(secret)
    Image.new("RGB", (8, 8), "blue").save(root / "ok.png")
    rows = [("../secret.png", secret), ("link.png", secret), ("ok.png", root / "ok.png")]
    service = service_of_files(tmp_path / "index", root, rows)
    for row_id in (0, 1):
        with pytest.raises(NotFound, match="not on disk"):
            service.thumbnail("c", "color", row_id)
    assert Image.open(io.BytesIO(service.thumbnail("c", "color", 2))).size == (8, 8)
    Image.new("RGB", (8, 8), "green").save(root / "ok.png")  # the cached one is not served
    with pytest.raises(NotFound, match="changed since it was indexed"):
        service.thumbnail("c", "color", 2)


def test_oversize_uploads_get_413(served, client):
    # Declared too large: refused before the body is read.
    big = client.post(
        "/api/uploads",
        content=b"\0" * (20 * MIB + 65 * 1024),
        headers={"content-type": "image/png"},
    )
    assert_one_line_error(big, 413, "over the limit")
    small = with_settings(served.service, max_upload_bytes=10_000, max_pixels=5_000)
    with TestClient(create_app(small), base_url="http://localhost") as test_client:
        # Streamed without a length: refused once the count passes the limit.
        chunks = (b"\0" * 8192 for _ in range(20))
        response = test_client.post(
            "/api/uploads", content=chunks, headers={"content-type": "application/octet-stream"}
        )
        assert_one_line_error(response, 413, "limit")
        # A multipart image within the body allowance but over the upload limit.
        noisy = np.random.default_rng(0).integers(0, 256, (60, 60, 3), dtype=np.uint8)
        data = png_bytes(Image.fromarray(noisy))
        assert 10_000 < len(data) < 64 * 1024
        response = test_client.post("/api/uploads", files={"image": ("n.png", data, "image/png")})
        assert_one_line_error(response, 413, "over the limit of 10000 bytes")
        # Small file, too many pixels.
        flat = png_bytes(Image.new("RGB", (100, 100), "white"))
        response = test_client.post("/api/uploads", files={"image": ("f.png", flat, "image/png")})
        assert_one_line_error(response, 413, "10000 pixels is over the limit of 5000")
        one_shot = test_client.post(
            "/api/query",
            data={"collection": "synthetic", "condition": "color"},
            files={"image": ("f.png", flat, "image/png")},
        )
        assert_one_line_error(one_shot, 413, "pixels")


def test_slow_requests_time_out_with_504(served):
    slow = CountingEmbedder(served.service.searcher.load_embedder(), delay=3.0)
    service = with_settings(served.service, embedder=slow, timeout_s=0.5)
    with TestClient(create_app(service), base_url="http://localhost") as test_client:
        digest = upload(test_client, fresh_image(7)[1])
        started = time.monotonic()
        response = query(test_client, conditions=["color"], upload=digest)
        assert time.monotonic() - started < 2.5
    assert_one_line_error(response, 504, "longer than the limit of 0.5 s")


def expected_hits(served, request):
    """What a query should answer, computed with the library alone, one at a time."""
    searcher = served.service.searcher
    collection = searcher.collection("synthetic")
    conditions = [searcher.condition(collection, c) for c in request["conditions"]]
    joined = JoinedIndexes([searcher.reader(c) for c in conditions])
    if "image" in request:
        image = decode_image(request["image"], "q")
        vectors = searcher.embed(image, [c.text for c in conditions])
    else:
        vectors = joined.stored_query(request["id"])
    weights = normalize_weights(None, len(request["conditions"]))
    return joined.search(vectors, weights, 10)


def test_twenty_concurrent_queries_get_their_own_results(served):
    condition_sets = [["color"], ["background"], ["color", "background"]]
    requests = []
    for number in range(20):
        conditions = condition_sets[number % 3]
        if number % 2:
            requests.append({"conditions": conditions, "id": 6 * number})
        else:
            requests.append({"conditions": conditions, "image": fresh_image(20 + number)[1]})
    expected = [expected_hits(served, r) for r in requests]
    # A fresh service: nothing cached, so the ten uploads are embedded concurrently.
    service = with_settings(served.service)
    start = threading.Barrier(len(requests))

    def send(request):
        start.wait()
        if "image" in request:
            fields = [("collection", "synthetic"), ("k", "10")]
            fields += [("condition", c) for c in request["conditions"]]
            return post_multipart(f"{url}/api/query", fields, request["image"])
        body = {"collection": "synthetic", "conditions": request["conditions"], "id": request["id"]}
        return post_json(f"{url}/api/query", body)

    with running(service) as url, ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(send, requests))
    for request, want, (status, body) in zip(requests, expected, answers, strict=True):
        assert status == 200, body
        assert [c["name"] for c in body["conditions"]] == request["conditions"]
        assert [h["id"] for h in body["hits"]] == [h.id for h in want]
        np.testing.assert_allclose(
            [h["score"] for h in body["hits"]], [h.score for h in want], atol=1e-4
        )


def test_serve_help_and_nothing_to_serve(tmp_path, capsys):
    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--port" in out and "--max-upload-mb" in out
    assert main(["serve", "--indexes", str(tmp_path)]) == 5
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: no DIOR indexes in {tmp_path}: run `dior-search index` first, or give the "
        "folder that holds them: --indexes DIR or $DIOR_SEARCH_INDEXES"
    )


@pytest.mark.slow
def test_serve_command_serves(served, tmp_path):
    """The real verb in a subprocess: loads the model, answers, stops on SIGTERM."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    store = list(served.store_args)
    if store[0] == "--store":
        # Milvus Lite serves one process: the server gets a copy of the database.
        copy = tmp_path / "copy.db"
        shutil.copytree(served.root / "indexes.db", copy)
        store = ["--store", f"milvus-lite:{copy}"]
    command = [sys.executable, "-m", "dior_search", "serve", *store]
    process = subprocess.Popen(
        [*command, "--port", str(port), "--device", "cpu"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                connection.request("GET", "/api/collections")
                body = json.loads(connection.getresponse().read())
                connection.close()
                break
            except OSError:
                time.sleep(0.2)
        assert [c["name"] for c in body["collections"]] == ["synthetic"]
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    assert f"at http://127.0.0.1:{port}/" in output
