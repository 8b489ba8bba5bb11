"""`export`: the files other tools read, and an embedded vector database answering as `query`."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dior_search.cli import main
from dior_search.store.export import METADATA_KEY, export_index
from dior_search.store.reader import IndexReader

COLOR_INDEX = ("indexes", "synthetic", "tiny", "color")


def color_reader(workspace):
    return IndexReader(workspace.joinpath(*COLOR_INDEX))


def export_cli(workspace, out, *extra):
    args = ["export", str(out), "--dataset", "synthetic", "--indexes", str(workspace / "indexes")]
    return main([*args, *extra])


@pytest.fixture(scope="module")
def exported(synthetic_workspace, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    assert export_cli(synthetic_workspace, out / "parquet", "-c", "color", "-c", "size") == 0
    assert export_cli(synthetic_workspace, out / "npy", "-c", "color", "--format", "npy") == 0
    return out


@pytest.mark.slow
def test_parquet_holds_rows_labels_and_raw_vectors(synthetic_workspace, exported):
    reader = color_reader(synthetic_workspace)
    table = pq.read_table(exported / "parquet" / "color.parquet")
    assert table.column_names == [
        "id",
        "path",
        "content_hash",
        "label_background",
        "label_color",
        "label_pattern",
        "label_size",
        "answer",
        "answer_logprob",
        "log_partition",
        "vector",
    ]
    vector_type = table.schema.field("vector").type
    assert pa.types.is_fixed_size_list(vector_type) and vector_type.list_size == 128
    assert vector_type.value_type == pa.float32()
    assert table.column("id").to_pylist() == reader.ids.tolist()
    assert table.column("path").to_pylist() == reader.paths()
    assert table.column("label_color").to_pylist() == reader.labels("color")
    assert table.column("answer").to_pylist() == reader.column("answer")
    _, raw = reader.all_vectors(raw=True)
    vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(vectors, raw)
    described = json.loads(table.schema.metadata[METADATA_KEY])
    assert described["condition"] == {"name": "color", "text": "object color"}
    assert described["embedder"]["model"] == "tiny"
    assert (exported / "parquet" / "size.parquet").is_file()


@pytest.mark.slow
def test_npy_matrix_and_its_table(exported):
    matrix = np.load(exported / "npy" / "color.npy")
    table = pq.read_table(exported / "npy" / "color.parquet")
    assert "vector" not in table.column_names and matrix.dtype == np.float32
    with_vectors = pq.read_table(exported / "parquet" / "color.parquet")
    assert table.column("id").equals(with_vectors.column("id"))
    np.testing.assert_array_equal(
        matrix, np.stack(with_vectors.column("vector").to_numpy(zero_copy_only=False))
    )


@pytest.mark.slow
def test_duckdb_and_pandas_read_the_export(exported):
    import duckdb
    import pandas as pd

    path = exported / "parquet" / "color.parquet"
    ((count, dim),) = duckdb.sql(
        f"SELECT count(*), max(len(vector)) FROM read_parquet('{path}') WHERE label_color = 'red'"
    ).fetchall()
    frame = pd.read_parquet(path)
    assert count == int((frame["label_color"] == "red").sum()) > 0
    assert dim == 128 and len(frame["vector"].iloc[0]) == 128


@pytest.mark.slow
def test_lancedb_gives_the_same_top_10_as_query(synthetic_workspace, exported, tmp_path, capsys):
    """The export loaded into LanceDB, searched by cosine (its `_distance` is 1 - cos), ranks
    20 queries' top 10 exactly as `dior-search query --id` does."""
    import lancedb

    table = pq.read_table(exported / "parquet" / "color.parquet")
    database = lancedb.connect(tmp_path / "lance")
    lance = database.create_table("color", data=table)
    ids, vectors = table.column("id").to_pylist(), table.column("vector").to_pylist()
    by_id = dict(zip(ids, vectors, strict=True))
    indexes = str(synthetic_workspace / "indexes")
    for query_id in range(0, 400, 20):
        found = (
            lance.search(by_id[query_id])
            .distance_type("cosine")
            .limit(10)
            .select(["id"])
            .to_arrow()
        )
        capsys.readouterr()
        args = ["query", "--id", str(query_id), "--dataset", "synthetic", "-c", "color"]
        assert main([*args, "--indexes", indexes, "--json", "-k", "10"]) == 0
        hits = json.loads(capsys.readouterr().out)
        assert found.column("id").to_pylist() == [hit["id"] for hit in hits], query_id
        np.testing.assert_allclose(
            1 - np.asarray(found.column("_distance")), [hit["score"] for hit in hits], atol=1e-5
        )


@pytest.mark.slow
def test_new_table_columns_flow_through(tmp_path, monkeypatch):
    """A column a later version adds to the index's tables (captions, say) is exported too."""
    from dior_search.store import writer

    original = writer.write_parquet

    def with_caption(path, ids, norms, rows, answers=None):
        original(path, ids, norms, rows, answers)
        table = pq.read_table(path)
        captions = pa.array([f"caption {i}" for i in ids.tolist()], type=pa.string())
        pq.write_table(table.append_column("caption", captions), path)

    monkeypatch.setattr(writer, "write_parquet", with_caption)
    from dior_search.data.synthetic import write_dataset

    write_dataset(tmp_path / "datasets" / "synthetic", {"test": 6})
    args = ["index", "--dataset", "synthetic", "-c", "color", "--device", "cpu"]
    args += ["--datasets-dir", str(tmp_path / "datasets"), "--indexes", str(tmp_path / "ix")]
    assert main(args) == 0
    done = export_index(IndexReader(tmp_path / "ix" / "synthetic" / "tiny" / "color"), tmp_path)
    table = pq.read_table(done.files[0])
    assert table.column("caption").to_pylist() == [f"caption {i}" for i in range(6)]
    assert "norm" not in table.column_names


@pytest.mark.slow
def test_items_of_shards_get_source_and_key_columns(tmp_path):
    import io
    import tarfile

    from dior_search.data.synthetic import make_item

    with tarfile.open(tmp_path / "00000.tar", "w") as shard:
        for index in range(3):
            data = io.BytesIO()
            make_item(0, "test", index)[1].save(data, format="PNG")
            info = tarfile.TarInfo(f"sample{index}.png")
            info.size = len(data.getvalue())
            shard.addfile(info, io.BytesIO(data.getvalue()))
    args = ["--images", str(tmp_path / "00000.tar"), "-c", "color", "--indexes", str(tmp_path)]
    assert main(["index", *args, "--model", "tiny", "--device", "cpu"]) == 0
    assert main(["export", str(tmp_path / "out"), *args]) == 0
    table = pq.read_table(tmp_path / "out" / "color.parquet")
    assert table.column("source").to_pylist() == ["00000.tar"] * 3
    assert table.column("key").to_pylist() == ["sample0", "sample1", "sample2"]
    assert table.column("path").to_pylist()[0] == "00000.tar::sample0"


def test_an_unknown_format_is_one_line(tmp_path, capsys):
    assert export_cli(tmp_path, tmp_path / "out", "--format", "csv") == 2
    assert capsys.readouterr().err.strip() == "error: unknown format 'csv'; valid: parquet, npy"


@pytest.mark.slow
def test_an_unknown_condition_is_one_line(synthetic_workspace, tmp_path, capsys):
    assert export_cli(synthetic_workspace, tmp_path, "-c", "nosuch") == 5
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("error: no index for condition 'nosuch' of synthetic; conditions")


def test_a_collection_without_indexes_is_exit_5(tmp_path, capsys):
    args = ["export", str(tmp_path / "out"), "--dataset", "cub200", "--indexes", str(tmp_path)]
    assert main(args) == 5
    assert "no indexes of collection 'cub200'" in capsys.readouterr().err
