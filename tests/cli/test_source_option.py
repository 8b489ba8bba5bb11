"""`--source` on `index` and `bench`: its own indexes, read back by `query`, its own bench
rows, and a one-line refusal where it cannot apply."""

import json
from contextlib import redirect_stdout
from io import StringIO

import numpy as np
import pytest
from cli_runs import synthetic_datasets
from PIL import Image

from dior_search.cli import main
from dior_search.models.dior import DiorEmbedder
from dior_search.models.settings import DiorSettings
from dior_search.store.reader import IndexReader

N_IMAGES = 24


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    return synthetic_datasets(tmp_path_factory.mktemp("source_option"), N_IMAGES)


def common(datasets, indexes):
    return ["--dataset", "synthetic", "--datasets-dir", str(datasets), "--indexes", str(indexes)]


def stdout_of(args: list[str]) -> str:
    out = StringIO()
    with redirect_stdout(out):
        assert main(args) == 0
    return out.getvalue()


@pytest.mark.slow
def test_each_source_has_its_indexes_and_query_reads_it(datasets, tmp_path):
    indexes = tmp_path / "indexes"
    for source in ("last_input", "first_output"):
        index = ["index", *common(datasets, indexes), "--device", "cpu", "-c", "color"]
        assert main([*index, "--source", source]) == 0
    last = IndexReader(indexes / "synthetic" / "tiny" / "color")
    first = IndexReader(indexes / "synthetic" / "tiny+source-first_output" / "color")
    assert last.manifest.embedder.source == "last_input"
    assert first.manifest.embedder.source == "first_output"
    assert first.manifest.answers == "stored"
    # The stored vectors are first_output's, not the last input's.
    paths = first.paths()
    images = [Image.open(datasets / "synthetic" / p).convert("RGB") for p in paths[:4]]
    settings = DiorSettings(model="tiny", device="cpu", source="first_output")
    condition = first.manifest.condition["text"]
    expected = DiorEmbedder(settings).embed(images, [condition])[:, 0]
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(first.vectors(first.ids[:4]), expected, atol=1e-4)
    units = last.vectors(last.ids[:4])
    assert (np.sum(units * expected, axis=1) < 0.999).all()
    # A query embeds as the index it searches did: the image finds itself at score 1.
    image = str(datasets / "synthetic" / paths[0])
    query = ["query", image, "--dataset", "synthetic", "--indexes", str(indexes), "-c", "color"]
    for model in ("tiny", "tiny+source-first_output"):
        hits = json.loads(stdout_of([*query, "--model", model, "--json"]))
        assert hits[0]["path"] == paths[0]
        assert hits[0]["score"] >= 0.9999


@pytest.mark.slow
def test_bench_with_first_output_gives_its_row(datasets, tmp_path):
    out = tmp_path / "bench.json"
    args = ["bench", *common(datasets, tmp_path / "indexes"), "--device", "cpu"]
    args += ["--method", "dior", "-c", "color", "--source", "first_output", "--json", str(out)]
    table = stdout_of(args)
    assert "dior first_output" in table
    scores = json.loads(out.read_text())["synthetic"]["color"]
    assert list(scores) == ["dior first_output"]
    assert 0.0 <= scores["dior first_output"]["precision@1"] <= 1.0
    assert "answer_accuracy" in scores["dior first_output"]
    # A text query scores by the last input's state: no text precision for these vectors.
    assert "text_precision@10" not in scores["dior first_output"]
    reader = IndexReader(tmp_path / "indexes" / "synthetic" / "tiny+source-first_output" / "color")
    assert reader.manifest.embedder.source == "first_output"


@pytest.mark.parametrize("method", ["clip", "generative", "indirect"])
def test_other_methods_refuse_a_source(method, tmp_path, capsys):
    args = ["bench", "--dataset", "synthetic", "--datasets-dir", str(tmp_path)]
    code = main([*args, "--method", method, "--source", "mean_output"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    said = "applies to the dior and dior-unconditional methods only, not"
    assert f"--source mean_output {said} {method}" in err


def test_an_unknown_source_is_one_line(tmp_path, capsys):
    args = ["index", "--images", str(tmp_path), "-c", "color", "--source", "last"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown --source 'last'; valid: last_input, first_output, mean_output" in err
    assert err.count("\n") == 0


@pytest.mark.slow
def test_a_text_query_on_answer_token_vectors_is_refused(datasets, tmp_path, capsys):
    indexes = tmp_path / "indexes"
    index = ["index", *common(datasets, indexes), "--device", "cpu", "-c", "color"]
    assert main([*index, "--source", "mean_output"]) == 0
    capsys.readouterr()
    query = ["query", "--dataset", "synthetic", "--indexes", str(indexes), "--device", "cpu"]
    assert main([*query, "--text", "red", "-c", "color"]) == 5
    err = capsys.readouterr().err.strip()
    assert "holds mean_output vectors: text queries score by the last input token's" in err
    # Filters read the stored answers alone: they work.
    reader = IndexReader(indexes / "synthetic" / "tiny+source-mean_output" / "color")
    red = [p for p, a in zip(reader.paths(), reader.column("answer"), strict=True) if a == "red"]
    image = str(datasets / "synthetic" / reader.paths()[0])
    where = ["-c", "color", "--where", "color=red", "--json", "-k", "20"]
    hits = json.loads(stdout_of([*query, image, *where]))
    assert red and sorted(hit["path"] for hit in hits) == sorted(red)
