"""Memory, latency and CPU of `dior-search serve` under floods: tiny files that decode huge,
a herd of thumbnail requests for one large image, and requests full of filters.

    python benchmarks/serve_flood.py [--clients 16] [--rounds 3] [--side 7000] [--max-decode-mb M]
                                     [--big-side 7000] [--filters 20000]

A 35-byte GIF may declare 7000 x 7000 pixels: decoding it takes about 250 MB. The benchmark
indexes a small synthetic collection, starts `dior-search serve` in a subprocess and measures:

1. ordinary queries alone: one-shot multipart queries with a new small image each, one at a
   time (p50 latency);
2. the flood: `--clients` clients each uploading `--rounds` distinct such GIFs, while one
   client keeps sending ordinary queries (p50 latency during the flood), the server's RSS
   sampled every 10 ms;
3. the server's RSS `--idle` seconds after the flood;
4. the thumbnail herd (issue 22): a `--big-side` square uncompressed TIFF (7000: 147 MB) is
   indexed in a folder of its own; `--clients` concurrent cold requests for its thumbnail
   (peak RSS, RSS `--idle` s later), the second view's latency (cached: issue 26 asks under
   50 ms), then the file changed and `--clients` concurrent plus as many sequential requests
   that all answer 404 (peak and settled RSS again);
5. the filter flood: 4 concurrent queries with `--filters` label filters each (refused at
   once now), 4 with the most a query may have, a facets URL of 2,000 filters, and the
   server's CPU seconds in the 5 s after the flood (work left running after its answer).

It prints the figures, writes them to benchmarks/results/serve_flood.json and checks the
acceptance of issues 13 and 22: peak RSS under start + decode budget + upload-cache bound;
RSS after the flood within the cache bound + 200 MB of the start; p50 during the flood at most
3x the p50 alone; the herd's peak under start + decode budget and its settled RSS within 10%
of the RSS before it; no CPU burned after the filter flood. The exit status is 1 if a check
fails.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from results_file import write_results

from dior_search.data.synthetic import make_item

MIB = 1 << 20
CACHE_BYTES = 512 * MIB  # ServeSettings.upload_cache_bytes


def tiny_gif(width: int, height: int, seed: int) -> bytes:
    """35 bytes: a width x height screen with one 1x1 frame; `seed` makes each file distinct."""
    palette = bytes([seed & 255, seed >> 8 & 255, seed >> 16 & 255, 255, 255, 255])
    screen = struct.pack("<HHBBB", width, height, 0x80, 0, 0)
    frame = b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00;"
    return b"GIF89a" + screen + palette + frame


def ordinary_image(number: int) -> bytes:
    _, image = make_item(1, "flood", number)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def multipart(fields: list[tuple[str, str]], image: bytes) -> tuple[bytes, str]:
    boundary = "flood-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="q.png"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + image
        + b"\r\n"
    )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), boundary


def post(url: str, body: bytes, content_type: str) -> tuple[int, float]:
    """(status, seconds) of one POST."""
    request = urllib.request.Request(url, data=body, headers={"content-type": content_type})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        exc.read()
        status = exc.code
    return status, time.perf_counter() - started


def get(url: str) -> tuple[int, float]:
    """(status, seconds) of one GET."""
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        exc.read()
        status = exc.code
    return status, time.perf_counter() - started


def query_once(base: str, number: int) -> float:
    body, boundary = multipart(
        [("collection", "synthetic"), ("condition", "color")], ordinary_image(number)
    )
    status, seconds = post(f"{base}/api/query", body, f"multipart/form-data; boundary={boundary}")
    if status != 200:
        sys.exit(f"an ordinary query failed with {status}")
    return seconds


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class Sampler(threading.Thread):
    """The peak of a process's RSS, sampled every 10 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.running = pid, 0, True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss_bytes(self.pid))
            time.sleep(0.01)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sampled(pid: int, work: Any) -> tuple[Any, int]:
    """`work()`'s result and the process's peak RSS while it ran."""
    sampler = Sampler(pid)
    sampler.start()
    try:
        return work(), sampler.peak
    finally:
        sampler.running = False
        sampler.join()


def write_big_tiff(folder: Path, side: int) -> Path:
    """A `side` x `side` RGB TIFF, uncompressed (3 bytes a pixel on disk), beside 3 small images."""
    folder.mkdir()
    for number in range(3):
        _, image = make_item(2, "photos", number)
        image.save(folder / f"small{number}.png")
    row = np.random.default_rng(0).integers(0, 256, (1, side, 3), dtype=np.uint8)
    Image.fromarray(np.repeat(row, side, axis=0)).save(folder / "big.tif")
    return folder / "big.tif"


def thumbnail_herd(base: str, pid: int, big: Path, clients: int, idle: float) -> dict[str, Any]:
    """Cold thumbnail requests for one large image at once, its second view, then requests
    for it after the file changed (all 404)."""
    with urllib.request.urlopen(f"{base}/api/collections") as response:
        names = [c["name"] for c in json.loads(response.read())["collections"]]
    collection = next(name for name in names if name != "synthetic")
    listing = f"{base}/api/collections/{collection}/images?condition=color&limit=200"
    with urllib.request.urlopen(listing) as response:
        images = json.loads(response.read())["images"]
    url = base + next(image["thumbnail"] for image in images if image["path"] == big.name)
    before = rss_bytes(pid)

    def herd() -> list[tuple[int, float]]:
        with ThreadPoolExecutor(clients) as pool:
            return list(pool.map(lambda _: get(url), range(clients)))

    cold, cold_peak = sampled(pid, herd)
    time.sleep(idle)
    cold_settled = rss_bytes(pid)
    second = [get(url)[1] for _ in range(20)]
    data = bytearray(big.read_bytes())
    data[-1000:] = bytes(1000)  # same size, other content: changed since it was indexed
    big.write_bytes(data)
    del data
    changed_before = rss_bytes(pid)

    def changed() -> list[tuple[int, float]]:
        return herd() + [get(url) for _ in range(clients)]

    failed, changed_peak = sampled(pid, changed)
    time.sleep(idle)
    return {
        "file_mib": round(big.stat().st_size / MIB, 1),
        "clients": clients,
        "rss_before_mib": round(before / MIB),
        "cold_statuses": sorted({status for status, _ in cold}),
        "cold_seconds_max": round(max(seconds for _, seconds in cold), 2),
        "cold_peak_rss_mib": round(cold_peak / MIB),
        "cold_settled_rss_mib": round(cold_settled / MIB),
        "second_view_p50_ms": round(1000 * statistics.median(second), 1),
        "second_view_max_ms": round(1000 * max(second), 1),
        "changed_statuses": sorted({status for status, _ in failed}),
        "changed_rss_before_mib": round(changed_before / MIB),
        "changed_peak_rss_mib": round(changed_peak / MIB),
        "changed_settled_rss_mib": round(rss_bytes(pid) / MIB),
    }


def filter_flood(base: str, pid: int, filters: int) -> dict[str, Any]:
    """Queries holding many label filters, 4 at once; the server's CPU after they end."""

    def query_with(count: int) -> tuple[int, float]:
        where = [f"label:color=v{i}" for i in range(count)]
        body = {"collection": "synthetic", "conditions": ["color"], "id": 1, "where": where}
        return post(f"{base}/api/query", json.dumps(body).encode(), "application/json")

    with ThreadPoolExecutor(4) as pool:
        flood = list(pool.map(lambda _: query_with(filters), range(4)))
        at_cap = list(pool.map(lambda _: query_with(64), range(4)))
    facets = f"{base}/api/collections/synthetic/facets?condition=color&" + "&".join(
        f"where=label:color=v{i}" for i in range(2000)
    )
    facets_status, facets_seconds = get(facets)
    cpu_before = cpu_seconds(pid)
    time.sleep(5.0)
    return {
        "filters": filters,
        "body_kib": round(
            len(json.dumps({"where": [f"label:color=v{i}" for i in range(filters)]})) / 1024
        ),
        "flood_statuses": sorted({status for status, _ in flood}),
        "flood_seconds_max": round(max(seconds for _, seconds in flood), 3),
        "at_cap_statuses": sorted({status for status, _ in at_cap}),
        "at_cap_seconds_max": round(max(seconds for _, seconds in at_cap), 3),
        "facets_url_kib": round(len(facets) / 1024),
        "facets_status": facets_status,
        "facets_seconds": round(facets_seconds, 3),
        "server_cpu_seconds_in_5_s_after": round(cpu_seconds(pid) - cpu_before, 2),
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(root: Path, port: int, max_decode_mb: float | None) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "dior_search", "serve", "--indexes", str(root / "indexes")]
    command += ["--port", str(port), "--device", "cpu"]
    if max_decode_mb is not None:
        command += ["--max-decode-mb", str(max_decode_mb)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"the server stopped: {server.stdout.read() if server.stdout else ''}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/collections", timeout=5):
                return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    sys.exit("the server did not start")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--side", type=int, default=7000, help="Side of the GIFs' screen.")
    parser.add_argument("--queries", type=int, default=30, help="Ordinary queries alone.")
    parser.add_argument("--idle", type=float, default=10.0, help="Seconds before the last RSS.")
    parser.add_argument("--images", type=int, default=40, help="Images in the index.")
    parser.add_argument("--max-decode-mb", type=float, default=None)
    parser.add_argument("--big-side", type=int, default=7000, help="Side of the herd's TIFF.")
    parser.add_argument("--filters", type=int, default=20_000, help="Filters of the flood.")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        from dior_search.data.synthetic import write_dataset

        write_dataset(root / "datasets" / "synthetic", {"test": args.images})
        index = [sys.executable, "-m", "dior_search", "index", "--dataset", "synthetic"]
        index += ["--datasets-dir", str(root / "datasets"), "--indexes", str(root / "indexes")]
        subprocess.run([*index, "-c", "color", "--device", "cpu"], check=True, capture_output=True)
        big = write_big_tiff(root / "photos", args.big_side)
        photos = [sys.executable, "-m", "dior_search", "index", "--images", str(root / "photos")]
        photos += ["--indexes", str(root / "indexes"), "-c", "color", "--device", "cpu"]
        indexed = subprocess.run([*photos, "--model", "tiny"], capture_output=True, text=True)
        if indexed.returncode != 0:
            sys.exit(f"indexing the large image failed: {indexed.stderr.strip()}")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = start_server(root, port, args.max_decode_mb)
        try:
            with urllib.request.urlopen(f"{base}/api/collections") as response:
                budget = int(json.loads(response.read())["limits"]["max_decode_bytes"])
            for number in range(5):  # warm-up: readers opened, first forward passes done
                query_once(base, 10_000 + number)
            # Half of the ordinary queries alone before the flood, half after it: the machine's
            # other load drifts, and this keeps the drift out of the ratio.
            alone = [query_once(base, number) for number in range(args.queries // 2)]
            start_rss = rss_bytes(server.pid)

            sampler = Sampler(server.pid)
            sampler.start()
            flood_done = threading.Event()
            during: list[float] = []

            def ordinary_client() -> None:
                number = 1000
                while not flood_done.is_set():
                    during.append(query_once(base, number))
                    number += 1

            def flood_client(client: int) -> list[int]:
                statuses = []
                for round_ in range(args.rounds):
                    gif = tiny_gif(args.side, args.side, client * args.rounds + round_)
                    statuses.append(post(f"{base}/api/uploads", gif, "image/gif")[0])
                return statuses

            started = time.perf_counter()
            querier = threading.Thread(target=ordinary_client)
            querier.start()
            with ThreadPoolExecutor(args.clients) as pool:
                statuses = [s for got in pool.map(flood_client, range(args.clients)) for s in got]
            flood_seconds = time.perf_counter() - started
            flood_done.set()
            querier.join()
            sampler.running = False
            sampler.join()
            time.sleep(args.idle)
            after_rss = rss_bytes(server.pid)
            alone += [query_once(base, 500 + n) for n in range(args.queries - len(alone))]
            herd = thumbnail_herd(base, server.pid, big, args.clients, args.idle)
            flood = filter_flood(base, server.pid, args.filters)
        finally:
            server.terminate()
            server.wait(timeout=30)

    p50_alone = statistics.median(alone)
    p50_during = statistics.median(during) if during else float("nan")
    peak_bound = start_rss + budget + CACHE_BYTES
    after_bound = start_rss + CACHE_BYTES + 200 * MIB
    counts = {status: statuses.count(status) for status in sorted(set(statuses))}
    print(f"flood: {args.clients} clients x {args.rounds} rounds of {len(tiny_gif(1, 1, 0))}-byte")
    print(f"  {args.side}x{args.side} GIFs in {flood_seconds:.1f} s; answers {counts}")
    print(f"decode budget {budget / MIB:.0f} MiB, upload cache bound {CACHE_BYTES / MIB:.0f} MiB")
    print(f"RSS at start            {start_rss / MIB:8.0f} MiB")
    print(f"RSS peak in the flood   {sampler.peak / MIB:8.0f} MiB  (bound {peak_bound / MIB:.0f})")
    after = f"RSS {args.idle:g} s after the flood"
    print(f"{after:<24}{after_rss / MIB:8.0f} MiB  (bound {after_bound / MIB:.0f})")
    print(f"ordinary query p50 alone        {1000 * p50_alone:7.1f} ms ({len(alone)} queries)")
    print(f"ordinary query p50 in the flood {1000 * p50_during:7.1f} ms ({len(during)} queries)")
    ratio = p50_during / p50_alone
    print(f"thumbnail herd: {herd}")
    print(f"filter flood:   {flood}")
    herd_bound = herd["rss_before_mib"] + budget / MIB
    checks = {
        "peak RSS under start + budget + cache bound": sampler.peak <= peak_bound,
        "RSS after the flood within cache bound + 200 MB of start": after_rss <= after_bound,
        f"p50 in the flood / alone = {ratio:.2f} <= 3": ratio <= 3,
        "thumbnail herd: all 200, peak under RSS before + decode budget": (
            herd["cold_statuses"] == [200] and herd["cold_peak_rss_mib"] <= herd_bound
        ),
        "thumbnail herd: RSS after within 10% of before": (
            herd["cold_settled_rss_mib"] <= 1.1 * herd["rss_before_mib"]
        ),
        "changed file: all 404, RSS after within 10% of before": (
            herd["changed_statuses"] == [404]
            and herd["changed_settled_rss_mib"] <= 1.1 * herd["changed_rss_before_mib"]
        ),
        "second view of a thumbnail p50 under 50 ms": herd["second_view_p50_ms"] < 50,
        "filter flood refused (400), under 1 s of CPU after it": (
            flood["flood_statuses"] == [400] and flood["server_cpu_seconds_in_5_s_after"] < 1
        ),
    }
    for name, passed in checks.items():
        print(f"{'PASS' if passed else 'FAIL'}  {name}")
    write_results(
        "serve_flood",
        {
            "gif_flood": {
                "clients": args.clients,
                "rounds": args.rounds,
                "side": args.side,
                "answers": {str(k): v for k, v in counts.items()},
                "seconds": round(flood_seconds, 1),
                "decode_budget_mib": round(budget / MIB),
                "rss_start_mib": round(start_rss / MIB),
                "rss_peak_mib": round(sampler.peak / MIB),
                "rss_settled_mib": round(after_rss / MIB),
                "idle_seconds": args.idle,
                "p50_alone_ms": round(1000 * p50_alone, 1),
                "p50_during_ms": round(1000 * p50_during, 1),
            },
            "thumbnail_herd": herd,
            "filter_flood": flood,
            "checks": checks,
        },
    )
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
