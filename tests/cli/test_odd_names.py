"""`index` and `query` on names a file system allows and a terminal should not trust: found
again exactly, shown escaped, listed one per line; conditions that map to one folder each."""

import json
import os

import pytest
from cli_runs import TINY, error_line, image_folder, odd, run_cli

from dior_search.data.collections import open_folder, slug
from dior_search.data.paths import shown
from dior_search.store.layout import SKIPPED_FILE, condition_folder
from dior_search.store.manifest import Manifest
from dior_search.store.reader import IndexReader

NAMES = [
    odd(b"bad\xff.png"),
    "tab\tname.png",
    "new\nline.png",
    "evil\u202egnp.png",
    "[red]markup[/red].png",
    "extensionless",
    odd(b"sub\xfe/deep.png"),
    "plain.png",
]


@pytest.fixture(scope="module")
def odd_workspace(tmp_path_factory):
    """A folder (itself not UTF-8) of images under odd names, and two broken files with a tab
    and a newline in their names, indexed into an --indexes folder that is not UTF-8."""
    root = tmp_path_factory.mktemp("odd")
    folder = image_folder(root / odd(b"ph\xf6tos"), NAMES)
    (folder / "broken\tone.png").write_text("not an image")
    (folder / "broken\ntwo.jpg").write_text("not an image")
    indexes = root / odd(b"ind\xffexes")
    return folder, indexes


def index(capsys, folder, indexes, *conditions, extra=()):
    args = ["index", "--images", folder, "--indexes", indexes, *TINY, *extra]
    for condition in conditions:
        args += ["-c", condition]
    return run_cli(capsys, *args)


def directory_of(folder, indexes, condition):
    collection = slug(open_folder(folder).name)
    return indexes / collection / "tiny" / condition_folder(condition)


def test_odd_names_are_indexed_shown_escaped_and_found_again(odd_workspace, capsys):
    folder, indexes = odd_workspace
    run = index(capsys, folder, indexes, "color")
    assert run.code == 0, run.err
    assert "Traceback" not in run.out + run.err
    # Each skipped file is one stderr line, its name escaped.
    skipped = [line for line in run.err.splitlines() if "skipped" in line]
    assert sorted(skipped) == [
        "skipped broken\\ntwo.jpg: not an image, or not one of JPEG, PNG, WEBP, GIF, BMP, TIFF",
        "skipped broken\\tone.png: not an image, or not one of JPEG, PNG, WEBP, GIF, BMP, TIFF",
    ]
    for name in NAMES:
        if name != shown(name):
            assert name not in run.out  # no raw tab, newline, override or undecodable byte
    directory = directory_of(folder, indexes, "color")
    reader = IndexReader(directory)
    assert sorted(reader.paths()) == sorted(NAMES)
    assert Manifest.read(directory).collection["root"] == str(folder)
    # skipped.tsv: one line per file, two fields, names escaped.
    listing = (directory.parent / SKIPPED_FILE).read_text(encoding="utf-8").splitlines()
    assert sorted(line.split("\t")[0] for line in listing) == [
        "broken\\ntwo.jpg",
        "broken\\tone.png",
        "path",
    ]
    assert all(len(line.split("\t")) == 2 for line in listing)
    # Every odd name is found again: by its stored vector and by its file.
    for row_id, path in zip(reader.ids.tolist(), reader.paths(), strict=True):
        by_id = run_cli(capsys, "query", "--id", row_id, "--index", directory, "--json", "-k", "1")
        assert by_id.code == 0, by_id.err
        assert json.loads(by_id.out)[0]["path"] == path
    image = folder / NAMES[0]
    by_image = run_cli(
        capsys, "query", image, "--images", folder, "-c", "color", "--indexes", indexes,
        "--device", "cpu", "-k", "3",
    )  # fmt: skip
    assert by_image.code == 0, by_image.err
    first_row = next(line for line in by_image.out.splitlines() if line.startswith("│ 1 "))
    assert shown(NAMES[0]) in first_row
    assert (
        "[red]markup[/red].png"
        in run_cli(capsys, "query", "--id", 0, "--index", directory, "-k", "20").out
    )


def test_a_fixed_file_leaves_skipped_tsv(tmp_path, capsys):
    folder = image_folder(tmp_path / "images", ["a.png", "b.png"])
    (folder / "bad.png").write_text("broken")
    assert index(capsys, folder, tmp_path / "indexes", "color").code == 0
    listing = directory_of(folder, tmp_path / "indexes", "color").parent / SKIPPED_FILE
    assert listing.read_text().splitlines()[1:] == [
        "bad.png\tnot an image, or not one of JPEG, PNG, WEBP, GIF, BMP, TIFF"
    ]
    (folder / "bad.png").write_bytes((folder / "a.png").read_bytes()[:-1] + b"\x00")
    (folder / "bad.png").write_bytes((folder / "b.png").read_bytes())
    run = index(capsys, folder, tmp_path / "indexes", "color")
    assert run.code == 0 and "0 skipped" in run.out
    assert not listing.exists()


def test_conditions_that_would_share_a_folder_do_not(tmp_path, capsys):
    folder = image_folder(tmp_path / "images", ["a.png", "b.png", "c.png"])
    indexes = tmp_path / "indexes"
    assert index(capsys, folder, indexes, "object/color").code == 0
    # Never indexed under the other spelling: no index, not the other one's results.
    query = ["query", "--id", 0, "--images", folder, "--indexes", indexes, "-c"]
    line = error_line(run_cli(capsys, *query, "object--color"), 5)
    assert "no index for condition 'object--color'" in line
    assert index(capsys, folder, indexes, "object--color").code == 0
    first = directory_of(folder, indexes, "object/color")
    second = directory_of(folder, indexes, "object--color")
    assert first != second
    assert Manifest.read(first).condition["name"] == "object/color"
    assert Manifest.read(second).condition["name"] == "object--color"
    assert Manifest.read(second).prompt.endswith('regarding object--color: "')


def test_repeated_conditions_are_merged_and_a_file_name_is_a_condition(tmp_path, capsys):
    folder = image_folder(tmp_path / "images", ["a.png", "b.png"])
    (folder / "bad.png").write_text("broken")  # so that skipped.tsv is written
    indexes = tmp_path / "indexes"
    run = index(capsys, folder, indexes, "color", "color", SKIPPED_FILE)
    assert run.code == 0, run.err
    embedder = directory_of(folder, indexes, "color").parent
    assert (embedder / SKIPPED_FILE).is_file()
    assert sorted(p.name for p in embedder.iterdir() if p.is_dir()) == sorted(
        ["color", condition_folder(SKIPPED_FILE)]
    )
    assert len(IndexReader(embedder / "color")) == 2


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ("", "a condition cannot be empty"),
        ("  ", "a condition cannot be empty"),
        ("word " * 600, "a condition is at most 200 characters"),
        ("object\ncolor", "one line of plain text"),
        (odd(b"col\xffor"), "is not valid UTF-8 text"),
    ],
)
def test_empty_long_and_odd_conditions_are_refused(tmp_path, capsys, condition, message):
    folder = image_folder(tmp_path / "images", ["a.png"])
    line = error_line(index(capsys, folder, tmp_path / "indexes", condition), 2)
    assert message in line
    assert not (tmp_path / "indexes").exists()  # refused before anything was written
    query = ["query", "--id", "0", "--images", folder, "-c", condition]
    assert message in error_line(run_cli(capsys, *query, "--indexes", tmp_path), 2)


def test_a_folder_and_indexes_path_that_are_not_utf8(tmp_path, capsys):
    folder = image_folder(tmp_path / odd(b"\xff\xfe"), ["a.png", "b.png"])
    indexes = tmp_path / odd(b"out\x80")
    assert index(capsys, folder, indexes, "color").code == 0
    reader = IndexReader(directory_of(folder, indexes, "color"))
    assert sorted(reader.paths()) == ["a.png", "b.png"]
    assert os.fsencode(reader.manifest.collection["root"]).endswith(b"/\xff\xfe")


def test_odd_names_through_the_http_api(odd_workspace, capsys):
    from starlette.testclient import TestClient

    from dior_search.serve.app import create_app
    from dior_search.serve.service import SearchService, ServeSettings

    folder, indexes = odd_workspace
    assert index(capsys, folder, indexes, "color").code in (0,)
    service = SearchService.open(ServeSettings(indexes_dir=indexes, device="cpu"))
    with TestClient(create_app(service), base_url="http://localhost") as client:
        (collection,) = client.get("/api/collections").json()["collections"]
        page = client.get(f"/api/collections/{collection['name']}/images?limit=50")
        assert page.status_code == 200
        assert sorted(image["path"] for image in page.json()["images"]) == sorted(NAMES)
        thumbnail = client.get(page.json()["images"][0]["thumbnail"])
        assert thumbnail.status_code == 200 and thumbnail.content[:2] == b"\xff\xd8"
