"""What only the Milvus store has: its URIs, collection names, index types, commits that a
crash interrupts, and a Milvus Lite database that is missing, damaged or in use."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from descriptions import made_up_manifest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from dior_search.cli import main
from dior_search.data.synthetic import write_dataset
from dior_search.errors import IndexStoreError, UsageError
from dior_search.store import milvus
from dior_search.store.milvus import (
    MilvusStore,
    collection_name,
    escape,
    name_parts,
    parse_store_uri,
)
from dior_search.store.milvus.types import parse_spec
from dior_search.store.schema import Row
from dior_search.store.stores import open_store

CONDITIONS = ("color", "background")


@pytest.fixture(scope="module")
def lite_index(tmp_path_factory):
    """40 synthetic images indexed by the tiny model into a Milvus Lite database."""
    root = tmp_path_factory.mktemp("lite")
    write_dataset(root / "datasets" / "synthetic", {"test": 40})
    args = ["index", "--dataset", "synthetic", "--datasets-dir", str(root / "datasets")]
    args += ["--store", f"milvus-lite:{root / 'ix.db'}", "--device", "cpu", "--shard-size", "15"]
    for condition in CONDITIONS:
        args += ["-c", condition]
    assert main(args) == 0
    return root


def query_args(db, *extra):
    return [
        "query",
        "--id",
        "3",
        "-c",
        "color",
        "--dataset",
        "synthetic",
        "--store",
        f"milvus-lite:{db}",
        *extra,
    ]


def one_line_error(capsys, code, fragment, args):
    assert main(args) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]  # after any model-loading progress
    assert last.startswith("error: ") and fragment in last, err


def copy_of(lite_index, tmp_path):
    copy = tmp_path / "copy.db"
    shutil.copytree(lite_index / "ix.db", copy)
    return copy


def collection_folder(db, condition):
    return db / "collections" / f"dior_synthetic__tiny__{condition}"


def test_a_missing_or_damaged_lite_database_is_one_line_and_exit_5(lite_index, tmp_path, capsys):
    one_line_error(capsys, 5, "no Milvus Lite database", query_args(tmp_path / "none.db"))
    (tmp_path / "file.db").write_bytes(os.urandom(300))
    one_line_error(capsys, 5, "not a Milvus Lite database", query_args(tmp_path / "file.db"))
    (tmp_path / "folder.db").mkdir()
    one_line_error(capsys, 5, "not a Milvus Lite database", query_args(tmp_path / "folder.db"))
    # The database's own record of a collection overwritten.
    broken = copy_of(lite_index, tmp_path / "a")
    (collection_folder(broken, "color") / "manifest.json").write_bytes(os.urandom(200))
    one_line_error(capsys, 5, "damaged", query_args(broken))
    # Its data files gone (Milvus Lite itself only logs that): the row count says so.
    lost = copy_of(lite_index, tmp_path / "b")
    for data in collection_folder(lost, "color").rglob("*.parquet"):
        data.unlink()
    one_line_error(capsys, 5, "the database holds 0 of its 40 rows", query_args(lost))
    assert main(query_args(lite_index / "ix.db")) == 0


def test_a_row_changed_behind_the_stores_back_is_exit_5(lite_index, tmp_path, capsys):
    """A row rewritten in the database (its vector rotated: still of unit length, so only
    its check tells), and one whose vector is no unit vector: one line, exit 5."""
    from milvus_lite.server_manager import server_manager_instance
    from pymilvus import MilvusClient

    for number, change in enumerate(
        (lambda v: np.roll(v, 1), lambda v: v * 3.0),
    ):
        db = copy_of(lite_index, tmp_path / str(number))
        client = MilvusClient(str(db))
        name = collection_name("synthetic", "tiny", "color")
        client.load_collection(name)
        (row,) = client.get(name, ids=[7], output_fields=["*"])
        row["vector"] = change(np.asarray(row["vector"], dtype=np.float32)).tolist()
        client.upsert(name, [row])
        client.close()
        server_manager_instance.release_server(str(db))
        fragment = "row 7 is not as it was written" if number == 0 else "row 7's vector has length"
        one_line_error(capsys, 5, fragment, query_args(db))


def test_a_changed_manifest_is_refused(lite_index, tmp_path, capsys):
    db = copy_of(lite_index, tmp_path)
    store = MilvusStore(f"milvus-lite:{db}")
    location = store.find(collection="synthetic")[0].location
    text = store.properties(location.name)[milvus.MANIFEST_KEY]
    tampered = json.loads(text)
    tampered["prompt"] = 'Describe this image in one word regarding shape: "'
    store.conn.call(
        "tamper",
        "alter_collection_properties",
        location.name,
        properties={milvus.MANIFEST_KEY: json.dumps(tampered)},
    )
    store.close()
    one_line_error(capsys, 5, "does not match its checksum", query_args(db, "-c", "background"))


@pytest.mark.slow
def test_a_lite_database_in_use_by_another_process_is_exit_5(lite_index, tmp_path, capsys):
    db = copy_of(lite_index, tmp_path)
    holder = textwrap.dedent(
        f"""
        import logging, sys, time
        logging.disable(logging.CRITICAL)
        from pymilvus import MilvusClient
        client = MilvusClient({str(db)!r})
        client.list_collections()
        print("open", flush=True)
        time.sleep(120)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "open"
        one_line_error(
            capsys, 5, "another process has this Milvus Lite database open", query_args(db)
        )
    finally:
        process.kill()
        process.wait()


def test_rows_of_an_unpublished_commit_are_invisible_then_removed(tmp_path):
    store = open_store(f"milvus-lite:{tmp_path / 'x.db'}", tmp_path, create=True)
    manifest = made_up_manifest(dim=4, shard_size=100)
    location = store.location("c", manifest.embedder, "color")
    vectors = np.eye(4, dtype=np.float32)
    with store.writer(location, manifest) as writer:
        for number in range(3):
            writer.add(vectors[number], Row(f"{number}.png", f"{number:064x}"))
    # A commit that wrote its rows, deleted one, and died before publishing its manifest.
    store.put(location, [3], [vectors[3]], [Row("3.png", f"{3:064x}")], [None], replace=False)
    store.remove(location, [0])
    with pytest.raises(IndexStoreError, match="holds 2 of its 3 rows"):
        store.reader(location)
    writer = store.writer(location, manifest)  # the next run repairs it
    assert sorted(writer.live_rows()) == [1, 2]
    writer.close()
    reader = store.reader(location)
    assert reader.ids.tolist() == [1, 2]
    _, ids = reader.search(vectors[3], 3)
    assert 3 not in ids.tolist()
    store.close()


@given(st.lists(st.text(min_size=1, max_size=40), min_size=3, max_size=3))
def test_collection_names_are_milvus_names_and_one_per_index(parts):
    name = collection_name(*parts)
    assert len(name) <= 255 and name.replace("_", "a").isalnum() and name.isascii()
    readable = "dior_" + "__".join(escape(part) for part in parts)
    if len(readable) <= 255:
        assert name == readable and name_parts(name) == tuple(parts)
    else:
        assert name_parts(name) is None  # named by a hash: its parts come from its manifest
    other = [parts[0] + "_", *parts[1:]]
    assert collection_name(*other) != name


def test_store_uris():
    assert parse_store_uri("milvus://db.example:19530").client_uri == "http://db.example:19530"
    remote = parse_store_uri("https://db.example/images")
    assert (remote.client_uri, remote.db_name) == ("https://db.example", "images")
    with pytest.raises(UsageError, match="DIOR_MILVUS_TOKEN"):
        parse_store_uri("https://user:secret@db.example")
    with pytest.raises(UsageError, match=r"ends in \.db"):
        parse_store_uri("milvus-lite:/tmp/images")
    with pytest.raises(UsageError, match=r"milvus-lite:PATH\.db"):
        open_store("ftp://db.example", None)


def test_the_token_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("DIOR_MILVUS_TOKEN", "user:secret")
    target = parse_store_uri("milvus://db.example:19530")
    assert target.token == "user:secret" and "secret" not in repr(target)


def test_index_types_lite_would_ignore_are_refused(lite_index, capsys):
    assert str(parse_spec("ivf_sq8:nlist=64", lite=True)) == "IVF_SQ8:nlist=64"
    with pytest.raises(UsageError, match=r"not one Milvus Lite builds \(a Milvus server builds"):
        parse_spec("IVF_PQ", lite=True)
    assert str(parse_spec("DISKANN", lite=False)) == "DISKANN"
    with pytest.raises(UsageError, match="Milvus Lite ignores index parameter 'nlsit'"):
        parse_spec("IVF_FLAT:nlsit=64", lite=True)
    args = ["index", "--dataset", "synthetic", "--datasets-dir", str(lite_index / "datasets")]
    args += ["--store", f"milvus-lite:{lite_index / 'ix.db'}", "-c", "color", "--device", "cpu"]
    one_line_error(capsys, 2, "DISKANN", [*args, "--index-type", "DISKANN"])
    one_line_error(
        capsys,
        2,
        "it takes: none (exact search)",
        [*query_args(lite_index / "ix.db"), "--nprobe", "8"],
    )


def test_auto_grows_out_of_flat_within_the_memory_budget(tmp_path):
    store = open_store(f"milvus-lite:{tmp_path / 'x.db'}", tmp_path, create=True)
    manifest = made_up_manifest(dim=128, shard_size=50, index_spec="auto")
    location = store.location("c", manifest.embedder, "color")
    vectors = np.random.default_rng(2).standard_normal((120, 128)).astype(np.float32)
    # 120 vectors of 128 floats: 62 KiB flat, 77 KiB as HNSW, 49 KiB as IVF_SQ8 lists and codes.
    with store.writer(location, manifest) as writer:
        writer.set_index_type(None, 70 * 1024)
        for number, vector in enumerate(vectors):
            writer.add(vector, Row(f"{number}.png", f"{number:064x}"))
    assert store.built_index(location) == ("IVF_SQ8", {"nlist": "64"})
    reader = store.reader(location, search_params="nprobe=64")
    assert (reader.manifest.index_type, reader.manifest.search_params) == (
        "IVF_SQ8:nlist=64",
        "nprobe=16",
    )
    _, ids = reader.search(vectors[:5], 3)
    assert ids[:, 0].tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(UsageError, match="it takes: nprobe"):
        store.reader(location, search_params="ef=32")
    store.close()


def test_accelerate_launch_needs_a_milvus_server(lite_index, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    args = ["index", "--dataset", "synthetic", "--datasets-dir", str(lite_index / "datasets")]
    args += ["--store", f"milvus-lite:{tmp_path / 'x.db'}", "-c", "color", "--device", "cpu"]
    one_line_error(capsys, 2, "a distributed run needs a Milvus server", args)


def test_without_pymilvus_the_store_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pymilvus", None)
    with pytest.raises(UsageError, match=r"pip install 'dior-search\[milvus\]'"):
        open_store("milvus-lite:/tmp/x.db", None)


def test_export_and_compact_take_the_store(lite_index, tmp_path, capsys):
    import pyarrow.parquet as pq

    store = ["--store", f"milvus-lite:{lite_index / 'ix.db'}"]
    assert main(["export", str(tmp_path / "out"), "--dataset", "synthetic", *store]) == 0
    table = pq.read_table(tmp_path / "out" / "color.parquet")
    assert table.num_rows == 40 and table.column("id").to_pylist() == list(range(40))
    assert {"path", "content_hash", "label_color", "label_background", "vector"} <= set(
        table.column_names
    )
    reader = MilvusStore(f"milvus-lite:{lite_index / 'ix.db'}")
    location = next(e.location for e in reader.find() if e.condition == "color")
    opened_reader = reader.reader(location)
    raw = np.asarray(table.column("vector").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(
        raw / np.linalg.norm(raw, axis=1, keepdims=True),
        opened_reader.vectors(range(40)),
        atol=1e-6,
    )
    reader.close()
    capsys.readouterr()
    assert main(["compact", "--dataset", "synthetic", *store]) == 0
    assert capsys.readouterr().out.count("nothing to compact") == 2


def test_bench_scores_alike_on_both_stores(lite_index, tmp_path):
    scores = {}
    for name, store in (
        ("folder", ["--indexes", str(tmp_path / "indexes")]),
        ("milvus-lite", ["--store", f"milvus-lite:{tmp_path / 'bench.db'}"]),
    ):
        args = ["bench", "--dataset", "synthetic", "--datasets-dir", str(lite_index / "datasets")]
        args += ["--method", "dior", "-c", "color", "--device", "cpu", *store]
        assert main([*args, "--json", str(tmp_path / f"{name}.json")]) == 0
        scores[name] = json.loads((tmp_path / f"{name}.json").read_text())
    got, want = (scores[name]["synthetic"]["color"]["dior"] for name in ("milvus-lite", "folder"))
    assert got == pytest.approx(want, abs=1e-6)


def test_an_unreachable_server_is_one_line_and_exit_5(capsys):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = ["query", "--id", "1", "-c", "color", "--dataset", "synthetic"]
    one_line_error(
        capsys,
        5,
        f"cannot open milvus://127.0.0.1:{port}",
        [*args, "--store", f"milvus://127.0.0.1:{port}"],
    )


def test_doctests():
    import doctest

    from dior_search.store.milvus import layout, rows, types

    for module in (layout, rows, types):
        assert doctest.testmod(module).failed == 0
    assert doctest.testmod(layout).attempted > 0


def test_odd_names_are_kept_exactly(tmp_path, capsys):
    from cli_runs import TINY, image_folder, odd, run_cli

    names = [odd(b"bad\xff.png"), "tab\tname.png", "evil\u202egnp.png", "plain.png"]
    folder = image_folder(tmp_path / odd(b"ph\xf6tos"), names)
    store = ["--store", f"milvus-lite:{tmp_path / 'odd.db'}"]
    args = ["index", "--images", folder, *TINY, *store, "-c", "object/color"]
    assert run_cli(capsys, *args).code == 0
    again = run_cli(capsys, *args)
    assert again.code == 0 and "0 added, 0 changed, 0 moved, 0 removed, 4 unchanged" in again.out
    opened_store = MilvusStore(store[1])
    (entry,) = opened_store.find()
    assert entry.condition == "object/color"
    reader = opened_store.reader(entry.location)
    assert sorted(reader.paths()) == sorted(names)
    assert sorted(r.path for r in reader.rows(reader.ids)) == sorted(names)
    opened_store.close()
    query = ["query", "--id", 0, "--images", folder, "-c", "object/color", "--json", *store]
    found = run_cli(capsys, *query)
    assert found.code == 0, found.err
    assert json.loads(found.out)[0]["path"] == reader.paths()[0]
