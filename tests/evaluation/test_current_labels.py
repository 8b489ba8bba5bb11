"""Labels come from the label table as it is now, for query results and bench; a table that
is empty, malformed or no longer lists indexed images says so in one line."""

import csv
import json
import shutil

import numpy as np
import pytest
from cli_runs import error_line, run_cli

from dior_search.data.collections import open_dataset
from dior_search.data.synthetic import write_dataset
from dior_search.evaluation.bench import current_rows, evaluate_index
from dior_search.evaluation.metrics import retrieval_metrics
from dior_search.store.reader import IndexReader

N_IMAGES = 24


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """24 synthetic images indexed under color, and a pristine copy of their label table."""
    from dior_search.cli import main

    root = tmp_path_factory.mktemp("labels")
    write_dataset(root / "datasets" / "synthetic", {"test": N_IMAGES})
    args = ["index", "--dataset", "synthetic", "--datasets-dir", root / "datasets", "-c"]
    assert main([*map(str, args), "color", "--indexes", str(root / "indexes")]) == 0
    table = root / "datasets" / "synthetic" / "labels.csv"
    shutil.copyfile(table, root / "labels.orig.csv")
    return root


@pytest.fixture
def workspace(indexed):
    yield indexed
    shutil.copyfile(indexed / "labels.orig.csv", indexed / "datasets" / "synthetic" / "labels.csv")


def table_rows(root):
    with (root / "datasets" / "synthetic" / "labels.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def write_rows(root, rows, fields=None):
    path = root / "datasets" / "synthetic" / "labels.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields or list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def query(capsys, root, *extra):
    args = ["query", "--dataset", "synthetic", "-c", "color", "--indexes", root / "indexes"]
    return run_cli(capsys, *args, "--json", *extra)


def bench(capsys, root, *extra):
    args = ["bench", "--dataset", "synthetic", "-c", "color", "--method", "dior"]
    where = ["--datasets-dir", root / "datasets", "--indexes", root / "indexes"]
    return run_cli(capsys, *args, *where, "--device", "cpu", *extra)


def color_index(root):
    return IndexReader(root / "indexes" / "synthetic" / "tiny" / "color")


def test_query_results_and_bench_use_the_labels_as_they_are_now(workspace, capsys, tmp_path):
    rows = table_rows(workspace)
    write_rows(workspace, [{**row, "color": "red"} for row in rows])
    hits = json.loads(query(capsys, workspace, "--id", "3", "-k", "5").out)
    assert [h["labels"]["color"] for h in hits] == ["red"] * 5
    run = bench(capsys, workspace, "--json", tmp_path / "out.json")
    assert run.code == 0, run.err
    metrics = json.loads((tmp_path / "out.json").read_text())["synthetic"]["color"]["dior"]
    assert metrics["recall@1"] == metrics["precision@1"] == metrics["map@r"] == 1.0


def test_images_the_table_no_longer_lists(workspace, capsys, caplog, tmp_path):
    rows = table_rows(workspace)
    kept = rows[: N_IMAGES // 2]
    write_rows(workspace, kept)
    labels = {row["file_name"]: row["color"] for row in kept}
    reader = color_index(workspace)
    _, vectors = reader.all_vectors()
    keep = [path in labels for path in reader.paths()]
    expected = retrieval_metrics(
        vectors[np.array(keep)], [labels[p] for p in reader.paths() if p in labels]
    )
    # A query shows such an image without labels, and says so in one line.
    run = query(capsys, workspace, "--id", "20", "-k", "1")
    assert json.loads(run.out)[0]["labels"] == {}
    assert run.err.splitlines() == [
        "warning: 1 of the results are no longer in the label table of synthetic (shown "
        "without labels; `dior-search index` drops them)"
    ]
    # Metrics of the index as it is leave them out, with a warning.
    collection = open_dataset("synthetic", workspace / "datasets")
    metrics = evaluate_index(reader, current_rows(reader, collection), "color")
    assert {name: metrics[name] for name in expected} == pytest.approx(expected)
    assert "12 of the 24 images indexed in" in caplog.text
    # bench first syncs the index, which drops them: the same metrics.
    run = bench(capsys, workspace, "--json", tmp_path / "out.json")
    assert run.code == 0, run.err
    got = json.loads((tmp_path / "out.json").read_text())["synthetic"]["color"]["dior"]
    assert {name: got[name] for name in metrics} == pytest.approx(metrics)
    assert sorted(color_index(workspace).paths()) == sorted(labels)
    # The next tests find all images indexed again.
    write_rows(workspace, rows)
    args = ["--datasets-dir", workspace / "datasets", "--indexes", workspace / "indexes"]
    assert run_cli(capsys, "index", "--dataset", "synthetic", "-c", "color", *args).code == 0
    assert len(color_index(workspace)) == N_IMAGES


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "has no column 'file_name' (its columns: none)"),
        ("file_name,split,color,background,pattern,size\n", "has no rows: it lists no image"),
        ("file_name,split,color\ntest/00000.png,test,red\n", "has no column 'background'"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "is not UTF-8 text (a binary file?)"),
        ("file_name,split,color,background,pattern,size\ntest/00000.png,test,red\n",
         "a row has fewer fields than the header"),
        ("file_name,split,color,background,pattern,size\n"
         "test/00000.png,train,red,white,solid,small\n", "lists no test image"),
        ("file_name,split,color,background,pattern,size\n"
         "test/00000.png,test,red,white,solid,small\ntest/00000.png,test,red,white,solid,small\n",
         "lists 'test/00000.png' twice"),
    ],
)  # fmt: skip
def test_a_bad_label_table_is_one_line(workspace, capsys, content, message):
    table = workspace / "datasets" / "synthetic" / "labels.csv"
    if isinstance(content, bytes):
        table.write_bytes(content)
    else:
        table.write_text(content)
    args = ["--datasets-dir", workspace / "datasets", "--indexes", workspace / "indexes"]
    index = run_cli(capsys, "index", "--dataset", "synthetic", "-c", "color", *args)
    assert message in error_line(index, 3)
    assert message in error_line(bench(capsys, workspace), 3)
    assert message in error_line(query(capsys, workspace, "--id", "0"), 3)
    assert len(color_index(workspace)) == N_IMAGES  # nothing indexed was lost
