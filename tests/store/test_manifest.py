"""A damaged manifest is found and named: checksum, schema, prompt, shard files, and serve
leaving a damaged collection out while it serves the others."""

import io
import json
import logging
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from dior_search import models
from dior_search.cli import main
from dior_search.data.synthetic import write_dataset
from dior_search.models.dior import DiorEmbedder
from dior_search.models.settings import DiorSettings
from dior_search.serve.app import create_app
from dior_search.serve.service import SearchService, ServeSettings
from dior_search.store.manifest import MANIFEST, content_checksum


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 synthetic images indexed under color and background, and a folder of 4 images."""
    root = tmp_path_factory.mktemp("manifests")
    write_dataset(root / "datasets" / "synthetic", {"test": 16})
    common = ["--indexes", str(root / "indexes"), "--device", "cpu", "--shard-size", "8"]
    common += ["--model", "tiny"]
    dataset = ["--dataset", "synthetic", "--datasets-dir", str(root / "datasets")]
    assert main(["index", *dataset, *common, "-c", "color", "-c", "background"]) == 0
    folder = root / "folder"
    folder.mkdir()
    for number in range(4):
        shutil.copy(root / "datasets" / "synthetic" / "test" / f"{number:05d}.png", folder)
    assert main(["index", "--images", str(folder), *common, "-c", "color"]) == 0
    return root


@pytest.fixture
def copy(workspace: Path, tmp_path: Path) -> Path:
    """A fresh copy of the workspace's indexes, free to damage."""
    shutil.copytree(workspace / "indexes", tmp_path / "indexes")
    return tmp_path / "indexes"


def color_manifest(indexes: Path) -> Path:
    return indexes / "synthetic" / "tiny" / "color" / MANIFEST


def query(indexes: Path, *args: str) -> tuple[int, str]:
    """`dior-search query` by id under color: (exit code, stdout)."""
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(
            ["query", *args, "-c", "color", "--dataset", "synthetic", "--indexes", str(indexes)]
        )
    return code, out.getvalue()


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: "), err
    return err


def rewrite(path: Path, change, checksum: bool = True) -> None:
    """Change a manifest's parsed fields; its checksum recomputed (as a careful forger would)
    so that the schema and consistency checks are what must catch it."""
    data = json.loads(path.read_text())
    change(data)
    data.pop("checksum", None)
    if checksum:
        data["checksum"] = content_checksum(data)
    path.write_text(json.dumps(data, indent=2))


def test_every_write_records_the_checksum_of_the_content(workspace):
    data = json.loads(color_manifest(workspace / "indexes").read_text())
    stored = data.pop("checksum")
    assert stored == content_checksum(data)
    assert len(stored) == 64


def test_a_changed_value_fails_the_checksum(copy, capsys):
    path = color_manifest(copy)
    path.write_text(path.read_text().replace('"rows": 8', '"rows": 7', 1))
    assert query(copy, "--id", "3")[0] == 5
    assert one_line_error(capsys) == (
        f"error: damaged manifest {path}: its content does not match its checksum; "
        "rebuild the index"
    )


def set_field(path: str, value):
    def change(data):
        *parents, last = path.split(".")
        target = data
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if value is DELETE:
            del target[last]
        else:
            target[int(last) if isinstance(target, list) else last] = value

    return change


DELETE = object()


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("shards.0.rows", -1, "field 'shards[0].rows' must be an integer >= 0, got -1"),
        ("dim", "128", "field 'dim' must be an integer from 1 to 16777216, got '128'"),
        ("dim", 64, "dim 64 differs from the embedder's 128"),
        ("colour", "x", "unknown field 'colour'"),
        ("shards", DELETE, "missing field 'shards'"),
        ("embedder.layer", True, "field 'embedder.layer' must be an integer"),
        ("embedder.template", "nope", "field 'embedder.template' must be one of 'describe'"),
        ("shards.0.faiss_sha256", "zz", "must be a string of 64 hex digits, got 'zz'"),
        ("shards.1.first_id", 0, "shard shard-00001 holds ids 0..15 for 8 rows after ids up to 7"),
        ("normalized", False, "field 'normalized' must be one of True"),
        ("condition.text", "object colnr", "its prompt 'Describe this image in one word"),
        ("prompt", "Describe this image", "is not what template and condition text make"),
    ],
)
def test_schema_and_consistency_are_checked(copy, capsys, field, value, fragment):
    path = color_manifest(copy)
    rewrite(path, set_field(field, value))
    assert query(copy, "--id", "3")[0] == 5
    err = one_line_error(capsys)
    assert err.startswith(f"error: damaged manifest {path}: "), err
    assert fragment in err


def test_a_manifest_without_checksum_is_still_checked(copy, capsys):
    """Manifests written before the checksum existed are read, with every other check."""
    path = color_manifest(copy)
    rewrite(path, lambda data: None, checksum=False)
    code, out = query(copy, "--id", "3", "--json")
    assert code == 0 and json.loads(out)[0]["id"] == 3
    rewrite(path, set_field("condition.text", "object colnr"), checksum=False)
    assert query(copy, "--id", "3")[0] == 5
    assert "its prompt" in one_line_error(capsys)


def test_shard_files_must_hold_what_the_manifest_says(copy, capsys):
    path = color_manifest(copy)

    def shorter_first_shard(data):
        data["shards"][0]["rows"] = 7
        data["shards"][0]["last_id"] = 6

    rewrite(path, shorter_first_shard)
    assert query(copy, "--id", "3")[0] == 5
    assert "shard-00000 holds 8 vectors of dimension 128 and 8 rows; its manifest says 7" in (
        one_line_error(capsys)
    )


def test_a_query_under_a_sound_condition_ignores_a_damaged_one(copy, capsys):
    background = copy / "synthetic" / "tiny" / "background" / MANIFEST
    background.write_text("{")
    code, out = query(copy, "--id", "3", "--json")
    assert code == 0 and json.loads(out)[0]["id"] == 3
    args = ["query", "--id", "3", "-c", "background", "--dataset", "synthetic"]
    assert main([*args, "--indexes", str(copy)]) == 5
    assert one_line_error(capsys).startswith(f"error: damaged manifest {background}: not JSON")


@pytest.fixture(scope="module")
def tiny_embedder() -> DiorEmbedder:
    return DiorEmbedder(DiorSettings(model="tiny", device="cpu"))


def test_serve_leaves_a_damaged_collection_out_and_serves_the_others(
    copy, tiny_embedder, monkeypatch, caplog
):
    monkeypatch.setattr(models, "load_embedder", lambda settings: tiny_embedder)
    path = color_manifest(copy)
    rewrite(path, set_field("shards.0.rows", "eight"))
    with caplog.at_level(logging.WARNING):
        service = SearchService.open(ServeSettings(indexes_dir=copy, device="cpu"))
    assert [r.getMessage() for r in caplog.records if "not serving" in r.getMessage()] == [
        f"not serving {path.parent}: damaged manifest {path}: field 'shards[0].rows' must be "
        "an integer >= 0, got 'eight'; rebuild the index"
    ]
    with TestClient(create_app(service), base_url="http://localhost") as client:
        served = client.get("/api/collections").json()["collections"]
        by_name = {c["name"]: [x["name"] for x in c["conditions"]] for c in served}
        assert by_name["synthetic"] == ["background"]
        assert len(by_name) == 2  # the image folder's collection too
        folder = next(name for name in by_name if name != "synthetic")
        ok = client.post(
            "/api/query", json={"collection": folder, "conditions": ["color"], "id": 1}
        )
        assert ok.status_code == 200 and ok.json()["hits"][0]["id"] == 1
        damaged = client.post(
            "/api/query", json={"collection": "synthetic", "conditions": ["color"], "id": 1}
        )
        assert damaged.status_code == 404
        assert damaged.json()["error"].startswith("damaged manifest")


def mutants(original: bytes):
    for position in range(len(original)):
        for mask in (0x01, 0x04):
            mutated = bytearray(original)
            mutated[position] ^= mask
            yield position, mask, bytes(mutated)


@pytest.mark.slow
def test_every_single_byte_flip_is_answered_right_or_refused(copy, tiny_embedder, monkeypatch):
    """Every 0x01 and 0x04 flip of every byte of a real manifest: the same answer as before,
    or exit 5 with one line; never a traceback, never another answer. Mutants that are
    accepted are also queried with an image, which embeds the condition's prompt."""
    monkeypatch.setattr(models, "load_embedder", lambda settings: tiny_embedder)
    path = color_manifest(copy)
    original = path.read_bytes()
    image = str(copy.parent / "query.png")
    shutil.copy(Path(json.loads(original)["collection"]["root"]) / "test" / "00003.png", image)
    by_id, by_image = query(copy, "--id", "3", "--json"), query(copy, image, "--json")
    assert by_id[0] == 0 and by_image[0] == 0
    wrong = []
    for position, mask, mutated in mutants(original):
        path.write_bytes(mutated)
        err = io.StringIO()
        try:
            with redirect_stderr(err):
                answer = query(copy, "--id", "3", "--json")
                if answer[0] == 0:
                    answer = query(copy, image, "--json")
        except Exception as exc:  # a traceback: the test fails
            wrong.append((position, mask, repr(exc)))
            continue
        lines = err.getvalue().strip().splitlines()
        ok = (answer[0] == 0 and answer[1] == by_image[1]) or (
            answer[0] == 5 and len(lines) == 1 and lines[0].startswith("error: ")
        )
        if not ok:
            wrong.append((position, mask, answer, lines))
    path.write_bytes(original)
    assert wrong == [], wrong[:5]
