"""Names as data and folders as they are: odd names stored exactly and shown safely, every
file or folder that cannot be read reported, images recognised by their content."""

import doctest
import errno
import os
import tracemalloc

import numpy as np
import pyarrow.parquet as pq
import pytest
from cli_runs import deny_listing, image_folder, odd
from descriptions import made_up_manifest

from dior_search.data import images as data_images
from dior_search.data import paths as data_paths
from dior_search.data.collections import (
    MAX_CONDITION_CHARS,
    Item,
    check_condition,
    check_conditions,
    open_folder,
)
from dior_search.data.images import MAX_FILE_BYTES, scan_images
from dior_search.data.paths import from_bytes, is_text, name_bytes, shown
from dior_search.data.reading import load_item
from dior_search.errors import InputError, UsageError
from dior_search.store import layout
from dior_search.store.layout import condition_folder
from dior_search.store.reader import IndexReader
from dior_search.store.schema import Row
from dior_search.store.writer import IndexWriter

ODD_NAMES = [
    odd(b"bad\xff.png"),
    odd(b"caf\xc3\xa9 \xf0\x9f\x98\x80.png"),  # valid UTF-8: kept as it is
    "tab\tname.png",
    "new\nline.png",
    "evil\u202egnp.png",
    "back\\slash.png",
    "no-extension",
]


def test_doctests():
    assert doctest.testmod(data_paths).failed == 0
    assert doctest.testmod(layout).failed == 0


def test_shown_is_one_printable_line_that_names_one_file():
    names = [*ODD_NAMES, "a\\tb.png", "zero\u200bwidth", "line\u2028sep", "\x1b[31mred"]
    shown_names = [shown(n) for n in names]
    for text in shown_names:
        assert text.isprintable() and "\n" not in text
        text.encode("utf-8")  # prints on any terminal
    # Reversible escaping: different names are shown differently.
    assert len(set(shown_names)) == len(names)
    assert shown("tab\tname.png") == "tab\\tname.png"
    assert shown("a\\tb.png") == "a\\\\tb.png"
    assert shown("evil\u202egnp.png") == "evil\\u202egnp.png"
    assert shown(odd(b"bad\xff.png")) == "bad\\xff.png"
    assert shown("caf\u00e9 \U0001f600.png") == "caf\u00e9 \U0001f600.png"


def test_names_round_trip_through_bytes():
    for name in ODD_NAMES:
        assert from_bytes(name_bytes(name)) == name
        assert name_bytes(name) == os.fsencode(name)
    assert not is_text(odd(b"bad\xff.png")) and is_text("tab\tname.png")


def test_odd_names_round_trip_through_parquet_and_the_manifest(tmp_path):
    # The index folder's own path and the collection root are not UTF-8 either.
    directory = tmp_path / odd(b"ind\xe9xes") / "ix"
    root = odd(b"/data/ph\xf6tos")
    vectors = np.random.default_rng(0).normal(size=(len(ODD_NAMES), 8)).astype(np.float32)
    writer = IndexWriter(directory, made_up_manifest(dim=8, shard_size=3, root=root))
    for number, (name, vector) in enumerate(zip(ODD_NAMES, vectors, strict=True)):
        writer.add(vector, Row(name, f"hash{number}"))
    writer.close()
    reader = IndexReader(directory)
    assert reader.paths() == ODD_NAMES
    assert reader.manifest.collection["root"] == root
    assert [r.path for r in reader.rows([6, 0])] == [ODD_NAMES[6], ODD_NAMES[0]]
    _, ids = reader.search(vectors[0], 1)
    assert reader.row(int(ids[0, 0])).path == ODD_NAMES[0]
    # pyarrow alone reads a readable `path` and, where needed, the exact bytes (on this
    # thread: see dior_search/data/parquet.py for what Arrow's threads do to a Python file).
    with (directory / "shard-00000.parquet").open("rb") as handle:
        table = pq.ParquetFile(handle, pre_buffer=False).read(use_threads=False)
    assert table.column("path").to_pylist() == ["bad\ufffd.png", ODD_NAMES[1], ODD_NAMES[2]]
    assert table.column("path_bytes").to_pylist() == [b"bad\xff.png", None, None]
    with (directory / "shard-00001.parquet").open("rb") as handle:
        assert "path_bytes" not in pq.read_schema(handle).names  # no odd name: no column


def test_conditions_are_checked_and_merged():
    assert check_conditions(["color", "object color", "color"]) == ["color", "object color"]
    for bad, message in [
        ("", "cannot be empty"),
        ("   ", "cannot be empty"),
        ("x" * (MAX_CONDITION_CHARS + 1), f"at most {MAX_CONDITION_CHARS} characters"),
        ("object\ncolor", "control or invisible character"),
        ("evil\u202ecolor", "control or invisible character"),
        (odd(b"col\xffor"), "not valid UTF-8"),
    ]:
        with pytest.raises(UsageError, match=message):
            check_condition(bad)
    check_condition("x" * MAX_CONDITION_CHARS)


def test_condition_folders_never_collide():
    conditions = [
        "color",
        "object/color",
        "object--color",
        "object color",
        "object-color",
        "skipped.tsv",
        "manifest.json",
        "Color",
        "a" * 61,
        "a" * 60,
        condition_folder("object color"),  # a plain name that looks hashed
        "..",
        ".",
        "unconditional",
    ]
    folders = [condition_folder(c) for c in conditions]
    assert len(set(folders)) == len(conditions)
    assert folders[0] == "color" and folders[2] == "object--color"
    assert condition_folder("skipped.tsv") != "skipped.tsv"
    for folder in folders:
        assert "/" not in folder and folder not in (".", "..") and len(folder) <= 69


def test_unreadable_sub_folders_and_files_are_reported(tmp_path, monkeypatch):
    folder = image_folder(tmp_path / "images", ["a.png", "locked/b.png", "locked/c.png"])
    deny_listing(monkeypatch, "locked")
    collection = open_folder(folder)
    assert [i.path for i in collection.items] == ["a.png"]
    assert collection.unreadable == [("locked", "cannot read folder: Permission denied")]


def test_the_root_folder_itself_unreadable_is_one_error(tmp_path, monkeypatch):
    folder = image_folder(tmp_path / "images", ["a.png"])

    def scandir(path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(InputError, match=r"cannot read image folder .*: .*Permission denied"):
        open_folder(folder)


def test_images_are_recognised_by_content(tmp_path):
    folder = image_folder(tmp_path / "images", ["photo", "IMG_0001.JPEG", "scan.dat"])
    (folder / "notes.txt").write_text("not an image")
    (folder / "README").write_text("not an image either")
    (folder / "fake.png").write_text("named as an image, it is not")
    os.mkfifo(folder / "pipe.png")
    os.symlink(folder / "gone.png", folder / "dangling.png")
    scan = scan_images(folder)
    names = sorted(p.name for p in scan.images)
    # Extension-less and oddly named images are in; other files out, without a word;
    # a file named as an image is read (and refused) when the run reaches it.
    assert names == ["IMG_0001.JPEG", "fake.png", "photo", "scan.dat"]
    assert sorted((p.name, why) for p, why in scan.unreadable) == [
        ("dangling.png", "cannot read: No such file or directory"),
        ("pipe.png", "not a regular file"),
    ]


def test_a_file_is_sniffed_before_it_is_read_whole(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    with (folder / "huge.png").open("wb") as handle:  # sparse: no disk space used
        handle.truncate(3 << 30)
    with (folder / "large.png").open("wb") as handle:
        handle.truncate(MAX_FILE_BYTES - 1)
    os.mkfifo(folder / "pipe.png")
    tracemalloc.start()
    try:
        huge = load_item(folder, Item("huge.png"))
        large = load_item(folder, Item("large.png"))
        pipe = load_item(folder, Item("pipe.png"))  # must not wait for a writer
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert huge.error == f"{3 << 30} bytes is over the 1024 MiB cap for an image file"
    assert large.error is not None and large.error.startswith("not an image")
    assert pipe.error == "not a regular file"
    assert peak < 16 << 20


def test_the_magic_numbers_match_what_pillow_writes(tmp_path):
    from PIL import Image

    image = Image.new("RGB", (8, 8), (10, 20, 30))
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"):
        path = tmp_path / f"x.{fmt.lower()}"
        image.save(path, format=fmt)
        assert data_images.looks_like_image(path.read_bytes()[:16]), fmt
