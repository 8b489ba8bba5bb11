"""Bad input, damage, interruption and concurrency: nothing indexed is lost, nothing crashes."""

import errno
import json
import os
import pickle
import random
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import kill_runs
import numpy as np
import pytest
from bad_images import EXPECTED_KEPT, write_bad_images
from descriptions import described, prompt_of
from kill_runs import assert_same_index
from PIL import Image

from dior_search.cli import main
from dior_search.data.collections import open_folder, slug
from dior_search.data.images import load_image
from dior_search.data.synthetic import write_dataset
from dior_search.errors import IndexStoreError, ModelError
from dior_search.models.dior import DiorEmbedder
from dior_search.models.settings import DiorSettings
from dior_search.store import files as store_files
from dior_search.store import writer as store_writer
from dior_search.store.manifest import MANIFEST, Manifest
from dior_search.store.reader import IndexReader
from dior_search.store.schema import Row
from dior_search.store.writer import IndexWriter


def new_manifest(dim: int = 16, shard_size: int = 10) -> Manifest:
    return Manifest(
        collection={"name": "c", "root": "/data"},
        condition={"name": "color", "text": "color"},
        prompt=prompt_of("color"),
        embedder=described("m", dim=dim),
        dim=dim,
        shard_size=shard_size,
    )


def small_index(directory: Path, rows: int = 30, shard_size: int = 10) -> np.ndarray:
    vectors = np.random.default_rng(5).normal(size=(rows, 16)).astype(np.float32)
    writer = IndexWriter(directory, new_manifest(16, shard_size))
    for number, vector in enumerate(vectors):
        writer.add(vector, Row(f"{number}.png", f"h{number}"))
    writer.close()
    return vectors


def test_awkward_images_are_converted(tmp_path):
    write_bad_images(tmp_path)
    rotated = load_image(tmp_path / "exif-rotated.jpg")
    assert rotated.size == (40, 80)  # stored 80 wide, 40 high; displayed rotated
    assert load_image(tmp_path / "huge-12000x8000.jpg").size == (12000, 8000)
    sixteen = np.asarray(Image.open(tmp_path / "sixteen-bit.png"), dtype=np.int64)
    np.testing.assert_array_equal(
        np.asarray(load_image(tmp_path / "sixteen-bit.png"))[..., 0], sixteen >> 8
    )
    transparent = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    transparent.save(tmp_path / "clear.png")
    assert load_image(tmp_path / "clear.png").getpixel((0, 0)) == (255, 255, 255)
    for name in ("gray.png", "palette.png", "cmyk.jpg", "animated.gif", "photo.webp"):
        assert load_image(tmp_path / name).mode == "RGB"


@pytest.mark.slow
def test_indexing_a_folder_of_bad_images(tmp_path, capsys):
    folder = tmp_path / "images"
    write_bad_images(folder)
    args = [
        "index",
        "--images",
        str(folder),
        "--condition",
        "color",
        "--indexes",
        str(tmp_path / "indexes"),
        "--model",
        "tiny",
        "--device",
        "cpu",
        "--shard-size",
        "5",
    ]
    assert main(args) == 0
    captured = capsys.readouterr()
    skipped = sorted(name for name, kept in EXPECTED_KEPT.items() if not kept)
    kept = sorted(name for name, kept in EXPECTED_KEPT.items() if kept)
    assert f"{len(skipped)} skipped (listed in" in captured.out
    for name in skipped:
        assert f"skipped {name}:" in captured.err
    embedder_dir = tmp_path / "indexes" / open_folder(folder).name / "tiny"
    listing = (embedder_dir / "skipped.tsv").read_text().splitlines()
    assert listing[0] == "path\treason"
    assert sorted(line.split("\t")[0] for line in listing[1:]) == skipped
    (directory,) = [p for p in embedder_dir.iterdir() if p.is_dir()]
    reader = IndexReader(directory)
    assert sorted(reader.paths()) == kept
    # A re-run tries the bad files again, skips them again and loses nothing.
    assert main(args) == 0
    assert sorted(IndexReader(directory).paths()) == kept


def test_damaged_shard_is_named(tmp_path):
    small_index(tmp_path / "ix")
    shard = tmp_path / "ix" / "shard-00001.faiss"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(
        IndexStoreError, match=r"damaged \(checksum mismatch\): .*shard-00001\.faiss"
    ):
        IndexReader(tmp_path / "ix")
    shard.write_bytes(bytes(data[:100]))
    with pytest.raises(IndexStoreError, match=r"shard-00001\.faiss"):
        IndexReader(tmp_path / "ix")


def test_damaged_index_from_the_command_line(tmp_path, capsys):
    small_index(tmp_path / "ix")
    (tmp_path / "ix" / "shard-00002.parquet").write_bytes(b"garbage")
    assert main(["query", "--id", "3", "--index", str(tmp_path / "ix")]) == 5
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "shard-00002.parquet" in err


def test_missing_shard(tmp_path):
    small_index(tmp_path / "ix")
    (tmp_path / "ix" / "shard-00000.faiss").unlink()
    with pytest.raises(IndexStoreError, match=r"index file missing: .*shard-00000\.faiss"):
        IndexReader(tmp_path / "ix")


def test_other_format_version(tmp_path):
    small_index(tmp_path / "ix")
    manifest = json.loads((tmp_path / "ix" / MANIFEST).read_text())
    manifest["format_version"] = 99
    (tmp_path / "ix" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(
        IndexStoreError, match="has format version 99; this dior-search reads versions 1 to 2"
    ):
        IndexReader(tmp_path / "ix")
    with pytest.raises(IndexStoreError, match="format version 99"):
        IndexWriter(tmp_path / "ix", new_manifest())


def test_full_disk_keeps_the_previous_state(tmp_path, monkeypatch):
    vectors = small_index(tmp_path / "ix", rows=20)
    before = {p.name: p.read_bytes() for p in (tmp_path / "ix").iterdir() if p.name != "index.lock"}

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store_writer, "write_parquet", no_space)
    writer = IndexWriter(tmp_path / "ix", new_manifest())
    for number in range(20, 29):
        writer.add(np.ones(16, dtype=np.float32), Row(f"{number}.png", f"h{number}"))
    # The tenth row fills the shard, whose write fails.
    expected = (
        r"cannot write shard-00002 .*No space left on device; "
        r"the index keeps its 20 rows written before"
    )
    with pytest.raises(IndexStoreError, match=expected):
        writer.add(np.ones(16, dtype=np.float32), Row("29.png", "h29"))
    writer.abort()
    monkeypatch.undo()
    reader = IndexReader(tmp_path / "ix")
    assert len(reader) == 20
    np.testing.assert_allclose(reader.all_vectors(raw=True)[1], vectors, rtol=1e-5, atol=1e-6)
    assert (tmp_path / "ix" / MANIFEST).read_bytes() == before[MANIFEST]
    # The next run clears the half-written shard and carries on.
    IndexWriter(tmp_path / "ix", new_manifest()).close()
    assert not (tmp_path / "ix" / "shard-00002.faiss").exists()


def test_second_index_run_is_refused(tmp_path, capsys):
    data = tmp_path / "images"
    write_dataset(data, {"test": 4})
    args = [
        "index",
        "--images",
        str(data),
        "--condition",
        "color",
        "--indexes",
        str(tmp_path / "indexes"),
        "--model",
        "tiny",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    (directory,) = (tmp_path / "indexes" / open_folder(data).name / "tiny").iterdir()
    holder = store_files.take_lock(directory)
    try:
        assert main(args) == 5
        assert "another dior-search run is writing" in capsys.readouterr().err
    finally:
        holder.close()
    assert len(IndexReader(directory)) == 4


def test_eight_threads_query_like_one(tmp_path):
    vectors = small_index(tmp_path / "ix", rows=300, shard_size=64)
    reader = IndexReader(tmp_path / "ix")
    queries = vectors[:64] + np.random.default_rng(1).normal(scale=0.5, size=(64, 16)).astype(
        np.float32
    )

    def one(number: int) -> tuple[list[int], list[str]]:
        _, ids = reader.search(queries[number], 10)
        return ids[0].tolist(), [row.path for row in reader.rows(ids[0])]

    serial = [one(n) for n in range(64)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        parallel = list(pool.map(one, range(64)))
    assert parallel == serial


def test_empty_index_and_large_k(tmp_path, capsys):
    IndexWriter(tmp_path / "empty", new_manifest()).close()
    assert main(["query", "--id", "0", "--index", str(tmp_path / "empty")]) == 5
    assert "is empty" in capsys.readouterr().err
    small_index(tmp_path / "ix", rows=7, shard_size=3)
    assert main(["query", "--id", "2", "--index", str(tmp_path / "ix"), "-k", "500", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert sorted(h["id"] for h in hits) == list(range(7))
    assert hits[0]["id"] == 2


def test_unreadable_query_image(tmp_path, capsys):
    small_index(tmp_path / "ix")
    (tmp_path / "q.jpg").write_text("not an image")
    assert main(["query", str(tmp_path / "q.jpg"), "--index", str(tmp_path / "ix")]) == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot read image") and len(err.splitlines()) == 1


def test_remote_code_needs_consent(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "sneaky",
                "auto_map": {"AutoConfig": "configuration_sneaky.SneakyConfig"},
            }
        )
    )
    (tmp_path / "configuration_sneaky.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import PretrainedConfig\n"
        "class SneakyConfig(PretrainedConfig):\n    model_type = 'sneaky'\n"
    )
    with pytest.raises(ModelError, match="--trust-remote-code"):
        DiorEmbedder(DiorSettings(model=str(tmp_path), device="cpu"))
    assert not marker.exists()


def test_nothing_is_unpickled(tmp_path, monkeypatch):
    vectors = small_index(tmp_path / "ix")

    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    reader = IndexReader(tmp_path / "ix")
    _, ids = reader.search(vectors[3], 5)
    assert reader.row(int(ids[0, 0])).path == "3.png"


def index_command(folder: Path, indexes: Path) -> list[str]:
    return kill_runs.index_command(folder, indexes, ["object color", "pattern"], shard_size=7)


@pytest.mark.slow
def test_ten_random_kills_lose_and_duplicate_nothing(tmp_path):
    data = tmp_path / "data"
    write_dataset(data, {"test": 60})
    (data / "labels.csv").unlink()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run(
        index_command(data, tmp_path / "reference"), check=True, env=env, capture_output=True
    )
    collection = open_folder(data).name
    rng = random.Random(20261125)
    for _ in range(10):
        process = subprocess.Popen(
            index_command(data, tmp_path / "killed"),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.5, 6.0))
        process.send_signal(signal.SIGKILL)
        process.wait()
    subprocess.run(
        index_command(data, tmp_path / "killed"), check=True, env=env, capture_output=True
    )
    for condition in (slug("object color"), "pattern"):
        want = IndexReader(tmp_path / "reference" / collection / "tiny" / condition)
        got = IndexReader(tmp_path / "killed" / collection / "tiny" / condition)
        assert len(assert_same_index(got, want)) == 60
