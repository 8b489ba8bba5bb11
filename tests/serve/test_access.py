"""Who may use the server (issue 22, item 1): the Host and Origin of every request, the media
types of POST bodies, the size of headers (item 7), and a clean stop on SIGTERM (issue 26)."""

import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib

import pytest
from serving import assert_one_line_error, fresh_image, running
from starlette.testclient import TestClient

from dior_search.cli import main
from dior_search.data.images import ImageTooLarge, load_image
from dior_search.serve.access import AccessPolicy
from dior_search.serve.app import create_app

QUERY = {"collection": "synthetic", "conditions": ["color"], "id": 1}


@pytest.fixture(scope="module")
def client(served):
    with TestClient(create_app(served.service), base_url="http://localhost") as test_client:
        yield test_client


@pytest.mark.parametrize(
    "host", ["localhost", "localhost:8000", "127.0.0.1:8000", "127.5.6.7", "[::1]:9", "LOCALHOST"]
)
def test_loopback_names_are_answered(client, host):
    response = client.get("/api/collections", headers={"host": host})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "path", ["/api/collections", "/api/thumbnail/synthetic/color/1", "/", "/api/nothing"]
)
@pytest.mark.parametrize("host", ["attacker.test", "attacker.test:8000", "127.0.0.1.evil.test"])
def test_a_foreign_host_is_403(client, path, host):
    """DNS rebinding: a name of the attacker's that resolves to 127.0.0.1 reads nothing."""
    response = client.get(path, headers={"host": host})
    assert_one_line_error(response, 403, f"host {host!r} is not this server's")
    assert "--allow-host" in response.json()["error"]


def test_a_foreign_origin_is_403_and_the_own_origin_is_answered(client):
    foreign = client.post("/api/query", json=QUERY, headers={"origin": "https://attacker.test"})
    assert_one_line_error(foreign, 403, "origin 'https://attacker.test' are refused")
    sandboxed = client.post("/api/query", json=QUERY, headers={"origin": "null"})
    assert_one_line_error(sandboxed, 403, "origin 'null'")
    # Another port of this machine is another origin (another program's page).
    other_port = client.post(
        "/api/query",
        json=QUERY,
        headers={"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:3000"},
    )
    assert_one_line_error(other_port, 403, "origin")
    own = client.post(
        "/api/query",
        json=QUERY,
        headers={"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:8000"},
    )
    assert own.status_code == 200, own.text


def test_allow_host_and_allow_origin_for_a_proxy(served):
    policy = AccessPolicy.of(
        "127.0.0.1", hosts=["Photos.Example.org"], origins=["https://photos.example.org/"]
    )
    app = create_app(served.service, policy)
    with TestClient(app, base_url="http://photos.example.org") as proxied:
        assert proxied.get("/api/collections").status_code == 200
        # The proxy keeps the Host: its origin is then the request's own.
        own = proxied.post(
            "/api/query", json=QUERY, headers={"origin": "https://photos.example.org"}
        )
        assert own.status_code == 200
        assert (
            proxied.get("/api/collections", headers={"host": "other.example.org"}).status_code
            == 403
        )
    with TestClient(app, base_url="http://127.0.0.1:8000") as rewritten:
        # The proxy rewrites the Host to the bound address: the origin must be allowed.
        allowed = rewritten.post(
            "/api/query", json=QUERY, headers={"origin": "https://photos.example.org"}
        )
        assert allowed.status_code == 200
        refused = rewritten.post(
            "/api/query", json=QUERY, headers={"origin": "https://example.org"}
        )
        assert refused.status_code == 403


def test_bound_to_every_address_any_ip_is_answered_but_no_other_name(served):
    app = create_app(served.service, AccessPolicy.of("0.0.0.0"))
    with TestClient(app, base_url="http://192.168.1.5:8000") as lan:
        assert lan.get("/api/collections").status_code == 200
        assert lan.get("/api/collections", headers={"host": "nas.attacker.test"}).status_code == 403


@pytest.mark.parametrize(
    ("option", "value", "fragment"),
    [
        ("--allow-origin", "ftp://x.org", "--allow-origin 'ftp://x.org': write SCHEME://HOST"),
        ("--allow-origin", "https://x.org/page", "write SCHEME://HOST[:PORT]"),
        ("--allow-host", "", "--allow-host '': give a host name"),
    ],
)
def test_bad_allow_options_are_usage_errors(tmp_path, capsys, option, value, fragment):
    assert main(["serve", "--indexes", str(tmp_path), option, value]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and "\n" not in err


# -- media types -----------------------------------------------------------------------------


def test_simple_cross_site_bodies_are_415(client):
    """A page may POST text/plain or a urlencoded form anywhere without asking: refused."""
    body = json.dumps(QUERY)
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {} if content_type is None else {"content-type": content_type}
        response = client.post("/api/query", content=body, headers=headers)
        assert_one_line_error(response, 415, "a query is sent as application/json or multipart")
    _, png = fresh_image(3)
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        response = client.post("/api/uploads", content=png, headers={"content-type": content_type})
        assert_one_line_error(response, 415, "an upload is a multipart form")


def test_media_types_are_case_insensitive(client, served):
    answer = client.post(
        "/api/query",
        content=json.dumps(QUERY),
        headers={"content-type": "Application/JSON; charset=UTF-8"},
    )
    assert answer.status_code == 200, answer.text
    _, png = fresh_image(4)
    boundary = "b0undary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="collection"\r\n\r\n'
            "synthetic\r\n"
            f'--{boundary}\r\nContent-Disposition: form-data; name="condition"\r\n\r\ncolor\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="q.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + png
        + f"\r\n--{boundary}--\r\n".encode()
    )
    one_shot = client.post(
        "/api/query",
        content=body,
        headers={"content-type": f"Multipart/Form-Data; boundary={boundary}"},
    )
    assert one_shot.status_code == 200, one_shot.text
    assert one_shot.json()["query"]["upload"] is None or len(one_shot.json()["hits"]) == 10
    raw = client.post("/api/uploads", content=png, headers={"content-type": "IMAGE/PNG"})
    assert raw.status_code == 200, raw.text


# -- limits and texts ------------------------------------------------------------------------


def png_declaring(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 4))
        + chunk(b"IEND", b"")
    )


def test_a_png_declaring_2_to_the_31_pixels_a_side_is_413(client):
    bomb = png_declaring(2147483647, 2147483647)
    response = client.post("/api/uploads", files={"image": ("b.png", bomb, "image/png")})
    assert_one_line_error(
        response,
        413,
        "the uploaded image is too large: 2147483647x2147483647 = 4611686014132420609 pixels is "
        "over the limit of",
    )


def test_indexing_such_a_png_skips_it_with_the_pixel_limit(tmp_path):
    """`index` reads images through the same header check: the reason, not MemoryError."""
    path = tmp_path / "bomb.png"
    path.write_bytes(png_declaring(2147483647, 2147483647))
    with pytest.raises(ImageTooLarge, match=r"2147483647x2147483647 = .* over the limit of"):
        load_image(path)


def test_an_unreadable_upload_says_so_in_words(client):
    response = client.post("/api/uploads", files={"image": ("x.png", b"GIF89a-nope", "image/png")})
    assert_one_line_error(response, 400, "cannot read the uploaded image: ")


def test_headers_over_16_kib_are_431(client):
    big = client.get("/api/collections", headers={"x-padding": "a" * 17_000})
    assert_one_line_error(big, 431, "over the limit of 16384 bytes")
    many = client.get("/api/collections", headers={f"x-{i}": "a" * 100 for i in range(200)})
    assert_one_line_error(many, 431, "request line and headers")
    url = client.get("/api/collections/synthetic/facets?condition=color" + "&where=a=b" * 2000)
    assert_one_line_error(url, 431, "request line and headers")


def raw_request(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_a_real_server_refuses_foreign_hosts_and_big_headers(served):
    """As `curl -H 'Host: attacker.test' http://127.0.0.1:PORT/api/collections` sends it."""
    with running(served.service) as url:
        port = int(url.rsplit(":", 1)[1])
        foreign = raw_request(
            port,
            b"GET /api/collections HTTP/1.1\r\nHost: attacker.test\r\nConnection: close\r\n\r\n",
        )
        assert foreign.startswith(b"HTTP/1.1 403"), foreign[:200]
        assert b"synthetic" not in foreign
        # 48 KiB of headers in one piece (uvicorn's own limit sees only partial headers).
        padding = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000) for i in range(48))
        big = raw_request(
            port,
            b"GET /api/collections HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            + padding
            + b"\r\n",
        )
        assert big.startswith(b"HTTP/1.1 431"), big[:200]
        ok = raw_request(
            port, b"GET /api/collections HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        assert ok.startswith(b"HTTP/1.1 200")


# -- SIGTERM ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_lets_requests_in_flight_finish_and_exits_0(served, tmp_path):
    """How systemd, Docker and Kubernetes stop a server: one line, exit 0, nothing cut."""
    if served.store_args and served.store_args[0] == "--store":
        pytest.skip("the folder store is enough: the stop does not depend on the store")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dior_search",
            "serve",
            *served.store_args,
            "--port",
            str(port),
            "--device",
            "cpu",
        ],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline
            try:
                probe_connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                probe_connection.request("GET", "/api/collections")
                assert probe_connection.getresponse().status == 200
                probe_connection.close()
                break
            except OSError:
                time.sleep(0.2)
        _, png = fresh_image(5)
        # A request in flight: its headers and half its body sent when SIGTERM comes.
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.sendall(
                b"POST /api/uploads HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(png)
            )
            sock.sendall(png[: len(png) // 2])
            time.sleep(0.5)
            process.send_signal(signal.SIGTERM)
            time.sleep(1.0)
            assert process.poll() is None  # still answering the request in flight
            sock.sendall(png[len(png) // 2 :])
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        assert b'"upload":"' in answer
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, (out, err)
    assert err == ""
    assert out.strip().splitlines()[-1] == "stopped (SIGTERM): requests in flight were answered"
