"""`index` and `query` end to end with the bundled tiny model on the synthetic collection."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import kill_runs
import numpy as np
import pytest
from kill_runs import assert_same_index

from dior_search.cli import main
from dior_search.data.collections import open_folder
from dior_search.data.synthetic import write_dataset
from dior_search.store.manifest import MANIFEST, Manifest
from dior_search.store.reader import IndexReader


@pytest.fixture
def synthetic_index(synthetic_workspace):
    return synthetic_workspace


def query_json(root: Path, *extra: str) -> list[dict]:
    return run_json(
        [
            "query",
            "--dataset",
            "synthetic",
            "--indexes",
            str(root / "indexes"),
            "--device",
            "cpu",
            "--json",
            *extra,
        ]
    )


def run_json(args: list[str]) -> list[dict]:
    from contextlib import redirect_stdout
    from io import StringIO

    out = StringIO()
    with redirect_stdout(out):
        assert main(args) == 0
    return json.loads(out.getvalue())


@pytest.mark.slow
def test_query_finds_itself_and_its_label(synthetic_index):
    image = synthetic_index / "datasets" / "synthetic" / "test" / "00007.png"
    by_color = query_json(synthetic_index, str(image), "--condition", "color")
    assert by_color[0]["path"] == "test/00007.png"
    assert by_color[0]["score"] >= 0.999
    color = by_color[0]["labels"]["color"]
    assert sum(hit["labels"]["color"] == color for hit in by_color[:10]) >= 8

    by_background = query_json(synthetic_index, str(image), "--condition", "background")
    background = by_background[0]["labels"]["background"]
    assert sum(hit["labels"]["background"] == background for hit in by_background[:10]) >= 8
    overlap = {h["id"] for h in by_color[:10]} & {h["id"] for h in by_background[:10]}
    assert len(overlap) <= 5


@pytest.mark.slow
def test_query_by_id_matches_query_by_image(synthetic_index):
    image = synthetic_index / "datasets" / "synthetic" / "test" / "00011.png"
    by_image = query_json(synthetic_index, str(image), "--condition", "pattern", "-k", "5")
    by_id = query_json(
        synthetic_index, "--id", str(by_image[0]["id"]), "--condition", "pattern", "-k", "5"
    )
    assert [h["id"] for h in by_id] == [h["id"] for h in by_image]
    np.testing.assert_allclose(
        [h["score"] for h in by_id], [h["score"] for h in by_image], atol=1e-5
    )


@pytest.mark.slow
def test_manifest_records_what_made_the_index(synthetic_index):
    directory = synthetic_index / "indexes" / "synthetic" / "tiny" / "color"
    manifest = Manifest.read(directory)
    assert manifest.rows == 400
    assert [s.rows for s in manifest.shards] == [150, 150, 100]
    assert manifest.prompt == 'Describe this image in one word regarding object color: "'
    assert manifest.embedder.model == "tiny"
    assert manifest.embedder.weights_fingerprint
    assert manifest.embedder.image_size_policy["max_pixels"] == 112 * 112
    assert manifest.metric == "inner_product"


@pytest.mark.slow
def test_rerun_adds_nothing(synthetic_index, capsys):
    args = [
        "index",
        "--dataset",
        "synthetic",
        "--datasets-dir",
        str(synthetic_index / "datasets"),
        "--indexes",
        str(synthetic_index / "indexes"),
        "--shard-size",
        "150",
        "--condition",
        "color",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    assert "0 added, 0 changed, 0 moved, 0 removed, 400 unchanged" in capsys.readouterr().out
    assert Manifest.read(synthetic_index / "indexes" / "synthetic" / "tiny" / "color").rows == 400


@pytest.mark.slow
def test_contact_sheet(synthetic_index, tmp_path):
    image = synthetic_index / "datasets" / "synthetic" / "test" / "00003.png"
    sheet = tmp_path / "sheet.png"
    query_json(
        synthetic_index, str(image), "--condition", "color", "-k", "4", "--sheet", str(sheet)
    )
    from PIL import Image

    from dior_search.cli.contact_sheet import CAPTION, HEADER, THUMB

    drawn = Image.open(sheet).convert("RGB")
    tile = THUMB + 8
    assert drawn.size == (5 * tile, HEADER + THUMB + CAPTION)
    # The query's tile has the blue border, the hits' tiles grey ones, in rank order.
    assert drawn.getpixel((1, HEADER + 1)) == (40, 90, 200)
    for rank in range(1, 5):
        assert drawn.getpixel((rank * tile + 1, HEADER + 1)) == (220, 220, 220)
    # The first hit is the query image itself: its thumbnail shows the query's pixels.
    query_tile = drawn.crop((4, HEADER + 4, 4 + THUMB, HEADER + 4 + THUMB))
    first_hit = drawn.crop((tile + 4, HEADER + 4, tile + 4 + THUMB, HEADER + 4 + THUMB))
    assert list(query_tile.getdata()) == list(first_hit.getdata())


@pytest.mark.slow
def test_unindexed_condition_lists_the_indexed_ones(synthetic_index, capsys):
    image = synthetic_index / "datasets" / "synthetic" / "test" / "00003.png"
    code = main(
        [
            "query",
            str(image),
            "--dataset",
            "synthetic",
            "--condition",
            "shape",
            "--indexes",
            str(synthetic_index / "indexes"),
        ]
    )
    assert code == 5
    assert capsys.readouterr().err.strip() == (
        "error: no index for condition 'shape' of synthetic; conditions with an index: "
        "background, color, pattern, size, unconditional"
    )


@pytest.mark.slow
def test_another_model_is_refused(synthetic_index, capsys):
    image = synthetic_index / "datasets" / "synthetic" / "test" / "00003.png"
    code = main(
        [
            "query",
            str(image),
            "--dataset",
            "synthetic",
            "--condition",
            "color",
            "--model",
            "other/model",
            "--indexes",
            str(synthetic_index / "indexes"),
        ]
    )
    assert code == 5
    assert "built with model 'other/model'" in capsys.readouterr().err


def test_missing_query_image_is_one_line(tmp_path, capsys):
    code = main(["query", str(tmp_path / "nope.png"), "--index", str(tmp_path)])
    assert code == 3  # README: input error
    err = capsys.readouterr().err.strip()
    assert err == f"error: image not found: {tmp_path / 'nope.png'}"


def index_command(folder: Path, indexes: Path) -> list[str]:
    return kill_runs.index_command(folder, indexes, ["object color"], shard_size=10)


def rows_indexed(directory: Path) -> int:
    try:
        return Manifest.read(directory).rows
    except Exception:
        return 0


@pytest.mark.slow
def test_sigkill_and_resume_index_each_image_once(tmp_path):
    data = tmp_path / "data"
    write_dataset(data, {"test": 90})
    (data / "labels.csv").unlink()
    reference = tmp_path / "reference"
    subprocess.run(index_command(data, reference), check=True, capture_output=True)
    collection = open_folder(data).name
    (reference_dir,) = (reference / collection / "tiny").iterdir()
    expected = IndexReader(reference_dir)

    resumed = tmp_path / "resumed"
    directory = resumed / collection / "tiny" / reference_dir.name
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for kill_after in (15, 42, 71):
        process = subprocess.Popen(
            index_command(data, resumed),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while rows_indexed(directory) < kill_after and process.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert rows_indexed(directory) >= kill_after - 10
    subprocess.run(index_command(data, resumed), check=True, capture_output=True, env=env)

    paths = assert_same_index(IndexReader(directory), expected)
    assert len(paths) == 90
    assert (directory / MANIFEST).is_file()
    assert not [p for p in directory.iterdir() if p.name.endswith(".tmp")]
