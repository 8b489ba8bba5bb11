"""`--images` over WebDataset shards and Parquet files: the same vectors as the same images as
files, damaged members and rows skipped with their reason, results and thumbnails named by
shard and key."""

import io
import json
import os
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dior_search.cli import main
from dior_search.data.collections import Item
from dior_search.data.paths import is_text
from dior_search.data.reading import load_item, read_item
from dior_search.data.sources import (
    expand_braces,
    open_images,
    parse_member_path,
    source_name,
    split_source_key,
)
from dior_search.data.synthetic import make_item
from dior_search.errors import InputError, UsageError
from dior_search.store.reader import IndexReader

CONDITION = "object color"
N_IMAGES = 10
GARBAGE = b"\x89PNG\r\n\x1a\n this is not an image"


def png_bytes(index: int) -> bytes:
    out = io.BytesIO()
    make_item(0, "test", index)[1].save(out, format="PNG")
    return out.getvalue()


def add_member(shard: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    shard.addfile(info, io.BytesIO(data))


def write_shards(folder, images, bad=True):
    """Two shards in WebDataset's layout: `{key}.png` and `{key}.json` per sample, and one
    sample whose image member is not an image."""
    folder.mkdir(parents=True, exist_ok=True)
    half = len(images) // 2
    for number, chunk in enumerate([images[:half], images[half:]]):
        with tarfile.open(folder / f"{number:05d}.tar", "w") as shard:
            for key, data in chunk:
                add_member(shard, f"{key}.png", data)
                add_member(shard, f"{key}.json", json.dumps({"key": key}).encode())
            if bad and number == 1:
                add_member(shard, "broken.jpg", GARBAGE)
    return folder


def write_parquet(path, images, bad=True):
    """img2dataset's layout: key, jpg (the bytes), caption; a row of garbage and a null row."""
    keys = [key for key, _ in images]
    data = [value for _, value in images]
    if bad:
        keys += ["broken", "empty"]
        data += [GARBAGE, None]
    table = pa.table(
        {
            "key": keys,
            "jpg": pa.array(data, type=pa.binary()),
            "caption": [f"image {key}" for key in keys],
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=4)
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    images = [(f"{index:06d}", png_bytes(index)) for index in range(N_IMAGES)]
    files = root / "files"
    files.mkdir()
    for key, data in images:
        (files / f"{key}.png").write_bytes(data)
    shards = write_shards(root / "shards", images)
    parquet = write_parquet(root / "parquet" / "part-00000.parquet", images)
    return {"files": files, "shards": shards, "parquet": parquet, "images": images}


def index(spec, indexes, *extra):
    args = ["index", "--images", str(spec), "-c", CONDITION, "--indexes", str(indexes)]
    return main([*args, "--model", "tiny", "--device", "cpu", "--shard-size", "4", *extra])


def reader_of(indexes, spec):
    (directory,) = [p for p in (indexes / source_name(spec) / "tiny").iterdir() if p.is_dir()]
    return IndexReader(directory)


def vectors_by_hash(reader):
    _, vectors = reader.all_vectors(raw=True)
    return dict(zip(reader.content_hashes(), vectors, strict=True))


@pytest.fixture(scope="module")
def indexed(sources, tmp_path_factory):
    indexes = tmp_path_factory.mktemp("indexes")
    pattern = sources["shards"] / "{00000..00001}.tar"
    specs = {"files": sources["files"], "shards": pattern, "parquet": sources["parquet"]}
    for spec in specs.values():
        assert index(spec, indexes) == 0
    return indexes, specs


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["shards", "parquet"])
def test_same_vectors_as_the_same_images_as_files(indexed, kind):
    indexes, specs = indexed
    files = vectors_by_hash(reader_of(indexes, specs["files"]))
    got = vectors_by_hash(reader_of(indexes, specs[kind]))
    assert set(got) == set(files) and len(got) == N_IMAGES
    for content_hash, vector in got.items():
        want = files[content_hash]
        cosine = vector @ want / (np.linalg.norm(vector) * np.linalg.norm(want))
        assert cosine >= 0.9999


@pytest.mark.slow
def test_damaged_members_and_rows_are_skipped_with_their_reason(indexed):
    indexes, specs = indexed
    for kind, skipped in {
        "shards": {"00001.tar::broken": "not an image"},
        "parquet": {
            "part-00000.parquet::broken": "not an image",
            "part-00000.parquet::empty": "no image bytes in column 'jpg'",
        },
    }.items():
        listing = indexes / source_name(specs[kind]) / "tiny" / "skipped.tsv"
        lines = listing.read_text().splitlines()[1:]
        reasons = dict(line.split("\t") for line in lines)
        assert set(reasons) == set(skipped)
        for path, reason in skipped.items():
            assert reason in reasons[path]


@pytest.mark.slow
def test_rerun_reads_nothing_new(indexed, capsys):
    indexes, specs = indexed
    capsys.readouterr()
    assert index(specs["shards"], indexes) == 0
    out = capsys.readouterr().out
    assert f"0 added, 0 changed, 0 moved, 0 removed, {N_IMAGES} unchanged" in out
    assert "1 skipped" in out


@pytest.mark.slow
def test_query_results_name_shard_and_key(indexed, capsys):
    indexes, specs = indexed
    capsys.readouterr()
    args = ["query", "--id", "0", "--images", str(specs["shards"]), "-c", CONDITION]
    assert main([*args, "--indexes", str(indexes), "--json", "-k", "3"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits[0]["path"] == "00000.tar::000000"
    assert all(parse_member_path(hit["path"]) is not None for hit in hits)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["shards", "parquet"])
def test_thumbnails_come_from_shards_and_rows(indexed, kind):
    from PIL import Image

    from dior_search.search.searcher import Searcher
    from dior_search.serve.service import SearchService, ServeSettings

    indexes, specs = indexed
    settings = ServeSettings(indexes_dir=indexes, device="cpu")
    name = source_name(specs[kind])
    service = SearchService(Searcher.open(indexes, collection=name), settings)
    for row_id in range(3):
        thumbnail = Image.open(io.BytesIO(service.thumbnail(name, CONDITION, row_id)))
        assert thumbnail.format == "JPEG" and thumbnail.size[0] > 0


def test_brace_patterns_expand_as_webdataset_does():
    assert expand_braces("s/{00000..00002}.tar") == [
        "s/00000.tar",
        "s/00001.tar",
        "s/00002.tar",
    ]
    assert expand_braces("{a,b}/{8..10}.tar") == [
        "a/8.tar",
        "a/9.tar",
        "a/10.tar",
        "b/8.tar",
        "b/9.tar",
        "b/10.tar",
    ]
    with pytest.raises(UsageError, match="unbalanced braces"):
        expand_braces("s/{0..2.tar")


def test_member_paths_split_into_source_and_key():
    assert split_source_key("a/00001.tar::x/000123") == ("a/00001.tar", "x/000123")
    assert split_source_key("p.parquet[thumb]::7") == ("p.parquet[thumb]", "7")
    assert split_source_key("photos/cat.jpg") == ("photos/cat.jpg", None)


def test_a_folder_of_shards_and_a_single_shard(sources):
    folder = open_images(sources["shards"])
    assert [item.path for item in folder.items][:2] == ["00000.tar::000000", "00000.tar::000001"]
    assert len(folder.items) == N_IMAGES + 1
    single = open_images(sources["shards"] / "00001.tar")
    assert single.root == sources["shards"].resolve()
    assert single.items[-1].path == "00001.tar::broken"


def test_a_missing_or_truncated_shard_is_skipped_not_fatal(sources, tmp_path):
    data = (sources["shards"] / "00000.tar").read_bytes()
    (tmp_path / "00000.tar").write_bytes(data[: len(data) // 2])
    collection = open_images(tmp_path / "{00000..00001}.tar")
    loaded = {item.path: load_item(collection.root, item) for item in collection.items}
    errors = {path: item.error for path, item in loaded.items() if item.error}
    good = [path for path, item in loaded.items() if item.error is None]
    assert good and all(path.startswith("00000.tar::") for path in good)
    assert "cannot read shard" in errors.pop("00001.tar")
    assert all("truncated" in e or "damaged shard" in e for e in errors.values()), errors


def test_parquet_rows_are_named_by_key_or_row(tmp_path, sources):
    images = sources["images"][:3]
    unkeyed = tmp_path / "unkeyed.parquet"
    pq.write_table(pa.table({"png": pa.array([d for _, d in images], pa.binary())}), unkeyed)
    collection = open_images(unkeyed)
    assert [item.path for item in collection.items] == [f"unkeyed.parquet::{n}" for n in range(3)]
    assert read_item(collection.root, "unkeyed.parquet::2") == images[2][1]


def test_image_column_chooses_among_binary_columns(tmp_path, sources):
    images = sources["images"][:2]
    path = tmp_path / "two.parquet"
    raw = pa.array([d for _, d in images], pa.binary())
    pq.write_table(pa.table({"key": ["a", "b"], "original": raw, "small": raw}), path)
    with pytest.raises(UsageError, match=r"several binary columns .* --image-column"):
        open_images(path)
    with pytest.raises(UsageError, match="no image-bytes column 'nope'"):
        open_images(path, "nope")
    collection = open_images(path, "small")
    assert [item.path for item in collection.items] == [
        "two.parquet[small]::a",
        "two.parquet[small]::b",
    ]
    assert read_item(collection.root, "two.parquet[small]::b") == images[1][1]
    # An image struct as Hugging Face datasets write it.
    struct = pa.array([{"bytes": d, "path": None} for _, d in images])
    pq.write_table(pa.table({"image": struct}), tmp_path / "hf.parquet")
    assert read_item(tmp_path, "hf.parquet::1") == images[1][1]


def test_image_column_only_for_parquet(sources):
    with pytest.raises(UsageError, match="only to Parquet"):
        open_images(sources["shards"], "jpg")
    with pytest.raises(UsageError, match="only to Parquet"):
        open_images(sources["files"], "jpg")


def test_a_file_that_is_no_source_is_one_line(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    assert index(tmp_path / "notes.txt", tmp_path / "ix") == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a .tar shard or a .parquet file" in err
    with pytest.raises(InputError, match="no file matches"):
        open_images(tmp_path / "{0..3}.tar")


def test_shards_and_parquet_files_named_in_bytes_that_are_not_utf8(sources, tmp_path):
    """A shard or Parquet file (and the folder above it) whose name is not UTF-8 is listed,
    indexed and read back under its exact name (Arrow is given open files, not names)."""
    folder = tmp_path / os.fsdecode(b"sh\xe4rds")
    images = sources["images"]
    write_shards(folder, images, bad=False)
    (folder / "00000.tar").rename(folder / os.fsdecode(b"t\xfcte.tar"))
    (folder / "00001.tar").unlink()
    parquet = folder.parent / os.fsdecode(b"p\xe4rt.parquet")
    write_parquet(tmp_path / "part.parquet", images, bad=False).rename(parquet)
    half = len(images) // 2
    for spec, count in ((folder, half), (parquet, len(images))):
        collection = open_images(spec)
        assert len(collection.items) == count
        for item, (key, data) in zip(collection.items, images, strict=False):
            assert parse_member_path(item.path).key == key
            assert read_item(collection.root, item.path) == data
        indexes = tmp_path / f"indexes-{spec.suffix or 'tar'}"
        assert index(spec, indexes) == 0
        reader = reader_of(indexes, spec)
        assert sorted(reader.paths()) == sorted(item.path for item in collection.items)
        assert not is_text(reader.paths()[0])  # the exact name, bytes that are not UTF-8


def test_one_size_cap_for_files_shard_members_and_parquet_cells(tmp_path, monkeypatch):
    """A shard member over the 1,024 MiB cap is refused from its header, unread (as a file
    of that size is); a Parquet cell over the cap is refused before it is decoded."""
    import tracemalloc

    from dior_search.data import sources as source_module
    from dior_search.data.images import MAX_FILE_BYTES

    huge = MAX_FILE_BYTES + 4096
    header = tarfile.TarInfo("big.png")
    header.size = huge
    shard = tmp_path / "big.tar"
    with shard.open("wb") as handle:  # sparse: the member's bytes take no disk space
        handle.write(header.tobuf(format=tarfile.USTAR_FORMAT))
        handle.truncate(512 + -(-huge // 512) * 512 + 1024)
    with (tmp_path / "big.png").open("wb") as handle:
        handle.truncate(huge)
    why = f"{huge} bytes is over the 1024 MiB cap for an image file"
    tracemalloc.start()
    try:
        assert load_item(tmp_path, open_images(shard).items[0]).error == why
        assert load_item(tmp_path, Item("big.png")).error == why
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20
    monkeypatch.setattr(source_module, "MAX_FILE_BYTES", 1000)
    table = tmp_path / "cells.parquet"
    pq.write_table(pa.table({"key": ["small", "large"], "jpg": [b"x" * 900, b"x" * 1001]}), table)
    with pytest.raises(InputError, match="1001 bytes is over the 0 MiB cap"):
        read_item(tmp_path, "cells.parquet::large")
