"""The reference code's remaining options in `bench`: Euclidean distance, several layers from
one pass, the InDiReCT baseline, and the leakage column."""

import json

import numpy as np
import pytest
from cli_runs import synthetic_datasets
from test_metrics import pml_metrics

from dior_search.cli import main
from dior_search.evaluation.metrics import leakage
from dior_search.store.reader import IndexReader

N_IMAGES = 48


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    return synthetic_datasets(tmp_path_factory.mktemp("bench_options"), N_IMAGES)


def bench(datasets, indexes, out, *extra):
    args = ["bench", "--dataset", "synthetic", "--datasets-dir", str(datasets)]
    args += ["--indexes", str(indexes), "--device", "cpu", "--json", str(out)]
    assert main([*args, *extra]) == 0
    return json.loads(out.read_text())["synthetic"]


@pytest.mark.slow
def test_euclidean_distance_is_pytorch_metric_learnings_default(datasets, tmp_path):
    """AccuracyCalculator's default k-NN: L2 on the raw vectors (the paper's numbers)."""
    result = bench(
        datasets, tmp_path, tmp_path / "out.json", "--method", "dior", "-c", "color",
        "--distance", "euclidean",
    )  # fmt: skip
    reader = IndexReader(tmp_path / "synthetic" / "tiny" / "color")
    _, raw = reader.all_vectors(raw=True)
    codes = np.unique(reader.labels("color"), return_inverse=True)[1]
    expected = pml_metrics(raw, codes)
    got = result["color"]["dior"]
    assert got["map@r"] == pytest.approx(expected["map@r"], abs=1e-6)
    assert got["precision@1"] == pytest.approx(expected["precision@1"], abs=1e-6)
    cosine = bench(datasets, tmp_path, tmp_path / "cos.json", "--method", "dior", "-c", "color")
    # The raw hidden states' lengths vary: the two distances rank differently.
    assert cosine["color"]["dior"] != got


@pytest.mark.slow
def test_several_layers_score_as_separate_runs(datasets, tmp_path):
    together = bench(
        datasets, tmp_path / "together", tmp_path / "together.json", "--method", "dior",
        "--method", "dior-unconditional", "-c", "color", "-c", "size",
        "--layer", "-1", "--layer", "2",
    )  # fmt: skip
    rows = ["dior layer -1", "dior layer 2", "dior-unconditional layer -1",
            "dior-unconditional layer 2"]  # fmt: skip
    assert sorted(together["color"]) == sorted(rows)
    for layer in ("-1", "2"):
        alone = bench(
            datasets, tmp_path / layer, tmp_path / f"{layer}.json", "--method", "dior",
            "--method", "dior-unconditional", "-c", "color", "-c", "size", "--layer", layer,
        )  # fmt: skip
        for condition in ("color", "size"):
            for method in ("dior", "dior-unconditional"):
                got = together[condition][f"{method} layer {layer}"]
                for metric, value in alone[condition][method].items():
                    assert got[metric] == pytest.approx(value, abs=1e-6), (condition, method)
    assert together["color"]["dior layer -1"] != together["color"]["dior layer 2"]


@pytest.mark.slow
def test_indirect_through_bench(datasets, baseline_model_dirs, tmp_path):
    result = bench(
        datasets, tmp_path, tmp_path / "out.json", "--method", "indirect", "-c", "color",
        "-c", "pattern", "--clip-model", str(baseline_model_dirs["clip"]),
    )  # fmt: skip
    assert set(result) == {"color", "pattern"}
    for metrics in (result["color"]["indirect"], result["pattern"]["indirect"]):
        assert set(metrics) >= {"recall@1", "map@r", "precision@1", "leakage"}
    (folder,) = (tmp_path / "synthetic").iterdir()
    assert folder.name.startswith("indirect-clip-")
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["color", "pattern"]
    manifest = json.loads((folder / "color" / "manifest.json").read_text())
    assert manifest["embedder"]["method"] == "indirect" and manifest["dim"] == 128


@pytest.mark.slow
def test_leakage_column_of_a_labelled_set(datasets, tmp_path, capsys):
    result = bench(datasets, tmp_path, tmp_path / "out.json", "--method", "dior", "-c", "color")
    reader = IndexReader(tmp_path / "synthetic" / "tiny" / "color")
    _, unit = reader.all_vectors()
    labels = {name: reader.labels(name) for name in reader.label_names()}
    assert result["color"]["dior"]["leakage"] == pytest.approx(leakage(unit, labels, "color"))
    table = capsys.readouterr().out
    assert "leak" in table


def test_an_unknown_distance_is_one_line(capsys):
    assert main(["bench", "--distance", "manhattan"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: unknown distance 'manhattan'; valid: cosine, euclidean"
    )
