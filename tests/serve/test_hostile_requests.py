"""The HTTP API under hostile and damaged input: refused images, numbers that are not finite,
deep or big JSON, long inputs echoed in errors, evicted uploads, changed files, slow clients,
and memory that stays within the decode budget."""

import io
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from bad_images import tiny_gif
from PIL import Image
from serving import (
    CountingEmbedder,
    assert_one_line_error,
    fresh_image,
    png_bytes,
    post_multipart,
    running,
    service_of_files,
    with_settings,
)
from starlette.testclient import TestClient

from dior_search.cli import main
from dior_search.serve import protocol
from dior_search.serve.app import MAX_ERROR_CHARS, create_app
from dior_search.serve.service import NotFound

MIB = 1 << 20


@pytest.fixture(scope="module")
def client(served):
    with TestClient(create_app(served.service), base_url="http://localhost") as test_client:
        yield test_client


def query_body(**fields) -> dict:
    return {"collection": "synthetic", "conditions": ["color", "background"], "id": 1, **fields}


# -- images the model refuses ---------------------------------------------------------------


def test_an_image_the_model_refuses_is_400_before_any_model_call(served):
    counting = CountingEmbedder(served.service.searcher.load_embedder())
    service = with_settings(served.service, embedder=counting)
    wide = png_bytes(Image.new("RGB", (10000, 1), "red"))
    with TestClient(create_app(service), base_url="http://localhost") as test_client:
        uploaded = test_client.post("/api/uploads", files={"image": ("w.png", wide, "image/png")})
        one_shot = test_client.post(
            "/api/query",
            data={"collection": "synthetic", "condition": "color"},
            files={"image": ("w.png", wide, "image/png")},
        )
    expected = (
        "the model cannot take this 10000x1 image (shrunk to 700x1): its aspect ratio 700 is "
        "over 200, Qwen-VL's limit"
    )
    for response in (uploaded, one_shot):
        assert_one_line_error(response, 400)
        assert response.json()["error"] == expected
    assert counting.calls == []


# -- numbers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ('"weights": [1e400, 1]', "weights must be positive finite numbers"),
        ('"weights": [NaN, 1]', "weights must be positive finite numbers"),
        ('"weights": [-Infinity, 1]', "weights must be positive finite numbers"),
        ('"weights": [1' + "0" * 400 + ", 1]", "weights must be positive finite numbers"),
        ('"k": 1e400', "k must be an integer"),
        ('"k": 1' + "0" * 30, "k must be between 1 and 100"),
    ],
)
def test_numbers_that_are_not_finite_are_400(client, raw, fragment):
    body = '{"collection": "synthetic", "conditions": ["color", "background"], "id": 1, '
    response = client.post(
        "/api/query", content=body + raw + "}", headers={"content-type": "application/json"}
    )
    assert_one_line_error(response, 400, fragment)


def test_weights_near_the_float_maximum_are_equal_weights(client):
    response = client.post("/api/query", json=query_body(weights=[1e308, 1e308]))
    assert response.status_code == 200, response.text
    assert [c["weight"] for c in response.json()["conditions"]] == [0.5, 0.5]
    huge_id = client.post("/api/query", json=query_body(id=10**30))
    assert_one_line_error(huge_id, 400, "an id must be between 0 and 9223372036854775807")


@pytest.mark.parametrize("weight", ["nan", "inf", "1e400", "-1"])
def test_multipart_weights_must_be_finite(client, served, weight):
    response = client.post(
        "/api/query",
        data={
            "collection": "synthetic",
            "condition": ["color", "background"],
            "weight": [weight, "1"],
        },
        files={"image": ("q.png", served.image(3).read_bytes(), "image/png")},
    )
    assert_one_line_error(response, 400, "weights must be positive finite numbers")


# -- JSON depth and size, long inputs -----------------------------------------------------------


def test_deep_and_big_json_bodies(client):
    deep = client.post(
        "/api/query", content=b"[" * 200_000, headers={"content-type": "application/json"}
    )
    assert_one_line_error(deep, 400, "the JSON body nests too deep")
    big = client.post(
        "/api/query", content=b" " * (2 * MIB), headers={"content-type": "application/json"}
    )
    assert_one_line_error(big, 413, "a JSON body must be at most 1048576 bytes")


def test_error_bodies_are_cut_short(client, served):
    long_name = "x" * 100_000
    long_path = "x" * 10_000  # a URL as long as a client sends
    answers = [
        client.get(f"/api/collections/{long_path}/images"),
        client.post("/api/query", json=query_body(**{long_name: 1})),
        client.post("/api/query", json={**query_body(), "collection": long_name}),
        client.get(f"/api/collections/synthetic/images?limit={long_path}"),
        client.post(
            "/api/query",
            data={"collection": "synthetic", "condition": "color", "k": "9" * 100_000},
            files={"image": ("q.png", served.image(3).read_bytes(), "image/png")},
        ),
    ]
    for response in answers:
        assert response.status_code in (400, 404), response.text[:200]
        error = response.json()["error"]
        assert len(error) <= MAX_ERROR_CHARS and error.endswith("..."), error
        assert "\n" not in response.text


# -- uploads: held by their request, kept as the model sees them, within the budget ---------------


def test_a_one_shot_query_holds_its_own_upload(served):
    """The cache keeps one upload, and while this query's image is embedded another upload
    evicts it: the query still answers with its own image."""
    service = with_settings(served.service, upload_cache_entries=1)
    inner = service.searcher.load_embedder()

    class EvictingEmbedder(CountingEmbedder):
        def embed(self, images, conditions, on_progress=None):
            service.add_upload(fresh_image(60 + len(self.calls))[1])
            return super().embed(images, conditions, on_progress)

    service = with_settings(service, embedder=EvictingEmbedder(inner))
    with TestClient(create_app(service), base_url="http://localhost") as test_client:
        response = test_client.post(
            "/api/query",
            data={"collection": "synthetic", "condition": "color", "k": "3"},
            files={"image": ("q.png", served.image(17).read_bytes(), "image/png")},
        )
    assert response.status_code == 200, response.text
    assert response.json()["hits"][0]["id"] == 17


def test_twelve_clients_of_one_shot_queries_all_get_answers(served):
    service = with_settings(served.service, upload_cache_entries=2)
    start = threading.Barrier(12)

    def send(number: int):
        start.wait()
        fields = [("collection", "synthetic"), ("condition", "color"), ("k", "1")]
        return post_multipart(f"{url}/api/query", fields, served.image(number).read_bytes())

    with running(service) as url, ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(send, range(12)))
    assert [status for status, _ in answers] == [200] * 12
    assert [body["hits"][0]["id"] for _, body in answers] == list(range(12))


def test_uploads_are_kept_as_the_model_sees_them(served):
    service = with_settings(served.service)
    upload = service.add_upload(tiny_gif(3000, 2000))
    assert (upload.width, upload.height, upload.size) == (3000, 2000, 35)
    assert upload.image.size == (700, 466)
    assert service.uploads.cost == 4 * 700 * 466


def test_the_decode_budget_bounds_uploads(served):
    service = with_settings(served.service, max_decode_bytes=8 * MIB)
    with TestClient(create_app(service), base_url="http://localhost") as test_client:
        assert test_client.get("/api/collections").json()["limits"]["max_decode_bytes"] == 8 * MIB
        big = png_bytes(Image.new("RGB", (2000, 2000), "white"))
        response = test_client.post("/api/uploads", files={"image": ("b.png", big, "image/png")})
    assert_one_line_error(response, 413, "over the decode budget of 8 MiB")
    assert main(["serve", "--max-decode-mb", "nan"]) == 2


def test_a_flood_of_tiny_huge_gifs_stays_within_the_budget(served, monkeypatch):
    """Eight threads of 35-byte GIFs that decode to 45 MB each: what decodes hold together
    never passes the budget."""
    service = with_settings(served.service, max_decode_bytes=120 * MIB)
    budget, peaks = service.budget, []
    original = budget._take

    def recording_take(cost: int) -> None:
        original(cost)
        peaks.append(budget.in_use)

    monkeypatch.setattr(budget, "_take", recording_take)
    with ThreadPoolExecutor(8) as pool:
        floods = [pool.submit(service.add_upload, tiny_gif(3000, 3000, n)) for n in range(16)]
        uploads = [future.result() for future in floods]
    # The test can fail: 16 decodes of about 60 MB each would take 960 MB at once.
    assert 0 < max(peaks) <= 120 * MIB
    assert budget.in_use == 0
    assert all(upload.image.size == (700, 700) for upload in uploads)


# -- thumbnails ------------------------------------------------------------------------------


def test_thumbnails_follow_the_file_on_disk(tmp_path, monkeypatch):
    root = tmp_path / "images"
    root.mkdir()
    picture = root / "a.png"
    Image.new("RGB", (8, 8), "blue").save(picture)
    original = picture.read_bytes()
    service = service_of_files(tmp_path / "index", root, [("a.png", picture)])
    first = service.thumbnail("c", "color", 0)
    assert Image.open(io.BytesIO(first)).size == (8, 8)

    reads = []
    real_read = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self) or real_read(self))
    assert service.thumbnail("c", "color", 0) == first
    assert reads == []  # same size and modification time: served from the cache, unread

    Image.new("RGB", (8, 8), "green").save(picture)
    with pytest.raises(NotFound, match="changed since it was indexed"):
        service.thumbnail("c", "color", 0)
    picture.write_bytes(original)  # the indexed content again (a new modification time)
    assert service.thumbnail("c", "color", 0) == first
    picture.unlink()
    with pytest.raises(NotFound, match="not on disk"):
        service.thumbnail("c", "color", 0)


# -- slow and idle connections -------------------------------------------------------------------


def read_until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """What the server sends until it closes the connection, and after how long."""
    started = time.monotonic()
    sock.settimeout(limit)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return received, time.monotonic() - started


def test_idle_and_slow_connections_are_closed(served, monkeypatch):
    monkeypatch.setattr(protocol.TimedH11Protocol, "header_timeout_s", 0.5)
    service = with_settings(served.service, timeout_s=1.0)
    with running(service) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as idle:
            assert read_until_closed(idle, 10)[0] == b""

        with socket.create_connection(("127.0.0.1", port)) as trickle:
            trickle.sendall(b"GET /api/collections HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            started, closed = time.monotonic(), False
            while time.monotonic() - started < 10 and not closed:
                try:
                    trickle.sendall(b"X-Slow: 1\r\n")
                    time.sleep(0.1)
                except OSError:
                    closed = True
            if not closed:
                closed = read_until_closed(trickle, 0.5)[0] == b""
            assert closed and time.monotonic() - started < 5

        with socket.create_connection(("127.0.0.1", port)) as slow_body:
            slow_body.sendall(
                b"POST /api/uploads HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                b"Content-Length: 1000\r\n\r\nabc"
            )
            answer, seconds = read_until_closed(slow_body, 10)
            assert answer.startswith(b"HTTP/1.1 504") and seconds < 5, answer

        with socket.create_connection(("127.0.0.1", port)) as keep_alive:
            keep_alive.sendall(b"GET /api/collections HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer, seconds = read_until_closed(keep_alive, 10)
            assert answer.startswith(b"HTTP/1.1 200") and seconds < 5
