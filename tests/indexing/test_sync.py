"""`index` re-runs follow the collection: what the summary says, --keep-missing, the removal
check (--yes, exit 6), named datasets, distributed runs, and `compact`."""

import io
import json
import shutil
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from cli_runs import deny_listing
from kill_runs import PixelEmbedder, index_command
from PIL import Image
from sync_helpers import folder_state, index_rows

from dior_search.cli import main
from dior_search.data.collections import open_dataset, open_folder
from dior_search.data.synthetic import LABELS_FILE, write_dataset, write_labels
from dior_search.errors import RemovalRefused
from dior_search.indexing.job import IndexSettings
from dior_search.indexing.run import index_collection
from dior_search.store.manifest import Manifest
from dior_search.store.reader import IndexReader


@pytest.fixture
def nine(tmp_path) -> Path:
    write_dataset(tmp_path / "data", {"test": 9})
    return tmp_path / "data" / "test"


def index_args(folder: Path, indexes: Path, *extra: str) -> list[str]:
    """`index` of the folder under "color", as `main` takes it."""
    command = index_command(folder, indexes, ["color"], shard_size=4)
    return [*command[command.index("index") :], *extra]


def directory_of(folder: Path, indexes: Path, embedder: str = "tiny") -> Path:
    return indexes / open_folder(folder).name / embedder / "color"


def query_paths(folder: Path, indexes: Path) -> list[str]:
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(
            [
                "query",
                str(next(folder.glob("*.png"))),
                "--images",
                str(folder),
                "-c",
                "color",
                "--indexes",
                str(indexes),
                "--device",
                "cpu",
                "-k",
                "50",
                "--json",
            ]
        )
    assert code == 0
    return [hit["path"] for hit in json.loads(out.getvalue())]


def pixel_sync(folder: Path, indexes: Path, **settings) -> dict:
    """A sync with the fast pixel embedder; the report's counts by condition."""
    embedder = CountingEmbedder()
    confirm = settings.pop("confirm", lambda removals: True)
    report = index_collection(
        open_folder(folder),
        ["color"],
        embedder,
        IndexSettings(indexes_dir=indexes, shard_size=4, **settings),
        confirm_removal=confirm,
    )
    return {"counts": report.counts["color"], "embedded": embedder.embedded}


class CountingEmbedder(PixelEmbedder):
    def __init__(self) -> None:
        self.embedded = 0

    def embed(self, images, conditions, on_progress=None):
        self.embedded += len(images)
        return super().embed(images, conditions, on_progress)


@pytest.mark.slow
def test_the_issue_scenario(nine, tmp_path, capsys):
    indexes = tmp_path / "indexes"
    assert main(index_args(nine, indexes)) == 0
    (nine / "00000.png").unlink()
    (nine / "00001.png").unlink()
    Image.new("RGB", (50, 40), (10, 200, 30)).save(nine / "00002.png")  # other pixels
    (nine / "00003.png").rename(nine / "renamed.png")
    capsys.readouterr()
    assert main(index_args(nine, indexes)) == 0
    out = capsys.readouterr().out
    assert "color: 0 added, 1 changed, 1 moved, 2 removed, 5 unchanged" in out
    assert sorted(query_paths(nine, indexes)) == sorted(folder_state(nine))
    reader = IndexReader(directory_of(nine, indexes))
    assert sorted(index_rows(reader)) == sorted(folder_state(nine).items())
    # Rows that did not change kept their ids; new rows got new ones.
    ids = dict(zip(reader.paths(), reader.ids.tolist(), strict=True))
    assert ids["00004.png"] == 4 and ids["renamed.png"] >= 9 and ids["00002.png"] >= 9


def test_images_under_a_folder_that_cannot_be_read_keep_their_rows(tmp_path, monkeypatch):
    write_dataset(tmp_path / "data", {"test": 6})
    folder = tmp_path / "data" / "test"
    (folder / "locked").mkdir()
    for name in ("00000.png", "00001.png"):
        (folder / name).rename(folder / "locked" / name)
    indexes = tmp_path / "indexes"
    assert pixel_sync(folder, indexes)["counts"].added == 6
    (directory,) = indexes.glob("*/*/color")
    before = sorted(index_rows(IndexReader(directory)))
    deny_listing(monkeypatch, "locked")
    # The files may well be there: their rows stay, and the folder is listed as skipped.
    counts = pixel_sync(folder, indexes)["counts"]
    assert (counts.removed, counts.unchanged) == (0, 4)
    assert sorted(index_rows(IndexReader(directory))) == before
    monkeypatch.undo()
    (folder / "locked" / "00000.png").unlink()
    counts = pixel_sync(folder, indexes)["counts"]  # readable again: a file gone is removed
    assert (counts.removed, counts.unchanged) == (1, 5)


def test_keep_missing_and_the_removal_check(tmp_path, capsys):
    write_dataset(tmp_path / "data", {"test": 9})
    folder = tmp_path / "data" / "test"
    indexes = tmp_path / "indexes"
    pixel_sync(folder, indexes)
    directory = directory_of(folder, indexes, "pixels")
    for path in sorted(folder.glob("*.png"))[:6]:
        path.unlink()
    generation = Manifest.read(directory).generation
    with pytest.raises(RemovalRefused) as refused:
        pixel_sync(folder, indexes, confirm=None)
    assert str(refused.value) == (
        "this run would remove 6 of the 9 images indexed under 'color' (their files are "
        "gone); nothing was changed: re-run with --yes to remove them, or --keep-missing to "
        "keep them"
    )
    assert Manifest.read(directory).generation == generation
    kept = pixel_sync(folder, indexes, keep_missing=True, confirm=None)["counts"]
    assert (kept.removed, kept.unchanged) == (0, 3)
    assert len(IndexReader(directory)) == 9
    # Asked on a terminal: a yes removes them.
    asked = []
    removed = pixel_sync(folder, indexes, confirm=lambda r: asked.append(r) or True)["counts"]
    assert [(r.condition, r.removed, r.indexed) for r in asked[0]] == [("color", 6, 9)]
    assert (removed.removed, removed.unchanged) == (6, 3)
    assert len(IndexReader(directory)) == 3


def test_a_moved_folder_is_not_a_removal_and_is_not_embedded_again(tmp_path):
    write_dataset(tmp_path / "data", {"test": 8})
    folder = tmp_path / "data" / "test"
    indexes = tmp_path / "indexes"
    assert pixel_sync(folder, indexes)["embedded"] == 8
    (folder / "album").mkdir()
    for path in sorted(folder.glob("*.png")):
        path.rename(folder / "album" / path.name)
    shutil.copy(folder / "album" / "00000.png", folder / "copy.png")
    # Every indexed path is gone, yet nothing is refused: the contents moved.
    moved = pixel_sync(folder, indexes, confirm=None)
    assert moved["embedded"] == 0
    counts = moved["counts"]
    assert (counts.moved, counts.added, counts.removed, counts.unchanged) == (8, 1, 0, 0)
    reader = IndexReader(directory_of(folder, indexes, "pixels"))
    assert sorted(index_rows(reader)) == sorted(folder_state(folder).items())
    assert reader.deleted == 0  # compacted at the end of the run


def test_a_named_dataset_follows_its_label_table(tmp_path):
    root = tmp_path / "datasets" / "synthetic"
    items = write_dataset(root, {"test": 10})
    write_labels(root / LABELS_FILE, [i for i in items if i.file_name != "test/00004.png"])
    index = IndexSettings(indexes_dir=tmp_path / "indexes", shard_size=4)
    embedder = CountingEmbedder()
    collection = open_dataset("synthetic", tmp_path / "datasets")
    index_collection(collection, ["color"], embedder, index)
    # A row leaves the table, an image file is replaced.
    write_labels(root / LABELS_FILE, [i for i in items if i.file_name not in ("test/00007.png",)])
    Image.new("RGB", (60, 60), (250, 250, 0)).save(root / "test" / "00002.png")
    collection = open_dataset("synthetic", tmp_path / "datasets")
    report = index_collection(collection, ["color"], embedder, index)
    counts = report.counts["color"]
    assert (counts.added, counts.changed, counts.removed, counts.unchanged) == (1, 1, 1, 7)
    reader = IndexReader(report.indexes["color"])
    expected = folder_state(root)
    expected = {p: h for p, h in expected.items() if p not in ("test/00007.png",)}
    assert sorted(index_rows(reader)) == sorted(expected.items())
    labels = dict(zip(reader.paths(), reader.labels("color"), strict=True))
    assert labels["test/00004.png"] == next(i.color for i in items if i.file_name.endswith("4.png"))


@pytest.mark.slow
def test_distributed_parts_then_the_merge_syncs(tmp_path, capsys):
    write_dataset(tmp_path / "data", {"test": 30})
    folder = tmp_path / "data" / "test"
    indexes = tmp_path / "indexes"
    assert main(index_args(folder, indexes)) == 0
    names = sorted(p.name for p in folder.glob("*.png"))
    for name in names[:3]:
        (folder / name).unlink()
    (folder / names[3]).rename(folder / "renamed.png")
    Image.new("RGB", (40, 40), (0, 0, 250)).save(folder / names[4])
    for number in range(4):
        Image.new("RGB", (40, 30), (60 * number, 20, 200)).save(folder / f"new-{number}.png")
    assert main(index_args(folder, indexes, "--part", "1", "--parts", "2")) == 0
    assert main(index_args(folder, indexes, "--part", "0", "--parts", "2")) == 0
    out = capsys.readouterr().out
    assert "all parts complete, merged" in out
    assert "color: 4 added, 1 changed, 1 moved, 3 removed, 25 unchanged" in out
    reader = IndexReader(directory_of(folder, indexes))
    assert sorted(index_rows(reader)) == sorted(folder_state(folder).items())
    # Only removals: no new path for the parts, so part 0 syncs on its own.
    (folder / "renamed.png").unlink()
    assert main(index_args(folder, indexes, "--part", "1", "--parts", "2")) == 0
    assert "color: 0 added, 0 changed, 0 moved, 0 removed" in capsys.readouterr().out
    assert main(index_args(folder, indexes, "--part", "0", "--parts", "2")) == 0
    assert "color: 0 added, 0 changed, 0 moved, 1 removed" in capsys.readouterr().out
    reader = IndexReader(directory_of(folder, indexes))
    assert sorted(index_rows(reader)) == sorted(folder_state(folder).items())


def test_compact_from_the_command_line(tmp_path, capsys):
    write_dataset(tmp_path / "data", {"test": 12})
    folder = tmp_path / "data" / "test"
    indexes = tmp_path / "indexes"
    pixel_sync(folder, indexes, compact_threshold=1.0)
    for path in sorted(folder.glob("*.png"))[:5]:
        path.unlink()
    pixel_sync(folder, indexes, compact_threshold=1.0)  # deletes without compacting
    directory = directory_of(folder, indexes, "pixels")
    assert IndexReader(directory).deleted == 5
    capsys.readouterr()
    assert main(["compact", "--images", str(folder), "--indexes", str(indexes)]) == 0
    out = capsys.readouterr().out
    assert f"{directory}: 5 deleted rows dropped (1 shards rewritten, 1 dropped)" in out
    assert IndexReader(directory).deleted == 0
    assert main(["compact", "--index", str(directory), "--threshold", "0"]) == 0
    assert f"{directory}: nothing to compact" in capsys.readouterr().out
    assert main(["compact", "--index", str(directory), "--threshold", "1.5"]) == 2
    assert "--threshold must be at least 0 and below 1" in capsys.readouterr().err
    assert main(["compact", "--index", str(tmp_path / "nowhere")]) == 5


def test_the_removal_check_from_the_command_line(nine, tmp_path, capsys, monkeypatch):
    indexes = tmp_path / "indexes"
    assert main(index_args(nine, indexes)) == 0
    for path in sorted(nine.glob("*.png"))[:5]:
        path.unlink()
    capsys.readouterr()
    assert main(index_args(nine, indexes)) == 6  # stdin is not a terminal here
    # One line (after the model's loading report), the whole message on it.
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: this run would remove 5 of the 9 images indexed under")
    assert error.endswith("or --keep-missing to keep them")

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Terminal("n\n"))
    assert main(index_args(nine, indexes)) == 6
    assert "color: 5 of the 9 indexed images have no file any more" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", Terminal("y\n"))
    assert main(index_args(nine, indexes)) == 0
    assert "0 added, 0 changed, 0 moved, 5 removed, 4 unchanged" in capsys.readouterr().out


@pytest.mark.parametrize("left", [None, "notes.txt"])
def test_a_collection_that_becomes_empty_syncs_to_an_empty_index(tmp_path, capsys, left):
    """All images removed (or only a .txt left): the index empties, with the removal check
    as usual; a folder without images that has no index yet is still refused (exit 3)."""
    write_dataset(tmp_path / "data", {"test": 4})
    folder = tmp_path / "data" / "test"
    indexes = tmp_path / "indexes"
    assert main(index_args(folder, indexes)) == 0
    for path in folder.glob("*.png"):
        path.unlink()
    if left is not None:
        (folder / left).write_text("not an image")
    capsys.readouterr()
    assert main(index_args(folder, indexes)) == 6  # removing them all needs --yes
    assert len(IndexReader(directory_of(folder, indexes))) == 4
    assert main(index_args(folder, indexes, "--yes")) == 0
    assert "color: 0 added, 0 changed, 0 moved, 4 removed, 0 unchanged" in capsys.readouterr().out
    reader = IndexReader(directory_of(folder, indexes))
    assert len(reader) == 0 and reader.paths() == []
    assert main(index_args(folder, indexes, "--yes")) == 0  # and it stays in sync
    Image.new("RGB", (40, 40), (200, 10, 10)).save(folder / "back.png")
    assert main(index_args(folder, indexes)) == 0
    assert [p for p, _ in index_rows(IndexReader(directory_of(folder, indexes)))] == ["back.png"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(index_args(empty, indexes)) == 3
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: no images in {empty}"
    assert not any(indexes.glob(f"{open_folder(empty).name}*"))


def test_a_link_that_dangles_or_loops_where_a_file_was_is_a_file_gone(tmp_path):
    """The row of a file replaced by a link to nothing, or by a loop of links, is removed
    (as a deleted file's); the other rows stay."""
    write_dataset(tmp_path / "data", {"test": 5})
    folder = tmp_path / "data" / "test"
    indexes = tmp_path / "indexes"
    assert pixel_sync(folder, indexes)["counts"].added == 5
    (folder / "00000.png").unlink()
    (folder / "00000.png").symlink_to(tmp_path / "nowhere.png")
    (folder / "00001.png").unlink()
    (folder / "00001.png").symlink_to(folder / "loop.png")
    (folder / "loop.png").symlink_to(folder / "00001.png")
    collection = open_folder(folder)
    assert collection.unreadable == []
    counts = pixel_sync(folder, indexes)["counts"]
    assert (counts.removed, counts.unchanged) == (2, 3)
    (directory,) = indexes.glob("*/*/color")
    assert sorted(IndexReader(directory).paths()) == ["00002.png", "00003.png", "00004.png"]
