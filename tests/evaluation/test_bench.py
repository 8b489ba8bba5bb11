"""`bench`: metrics per dataset, condition and method, on indexes built or reused."""

import json

import pytest

from dior_search.cli import main
from dior_search.data.collections import open_dataset
from dior_search.data.synthetic import CONDITIONS

METRICS = {"recall@1", "recall@5", "recall@10", "map@r", "precision@1"}
# k-means clusters against the labels, as the reference evaluation scores them.
CLUSTERING = {"ami", "nmi"}


def bench_args(workspace, *extra):
    return [
        "bench",
        "--dataset",
        "synthetic",
        "--datasets-dir",
        str(workspace / "datasets"),
        "--indexes",
        str(workspace / "indexes"),
        "--device",
        "cpu",
        *extra,
    ]


@pytest.mark.slow
def test_dior_retrieves_every_synthetic_condition(synthetic_workspace, tmp_path, capsys):
    out = tmp_path / "out.json"
    plot = tmp_path / "recall.png"
    args = bench_args(
        synthetic_workspace,
        "--method",
        "dior",
        "--method",
        "dior-unconditional",
        "--json",
        str(out),
        "--plot",
        str(plot),
    )
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert set(result) == {"synthetic"}
    assert set(result["synthetic"]) == set(CONDITIONS)
    answered = {"answer_accuracy", "text_precision@10", "text_precision@10_min"}
    for condition, per_method in result["synthetic"].items():
        assert set(per_method) == {"dior", "dior-unconditional"}
        for method, metrics in per_method.items():
            # Synthetic images have four labels: leakage of the other three is reported; the
            # conditional index stores the model's answers, scored as tags and text search.
            extra = answered if method == "dior" else set()
            assert set(metrics) == {*METRICS, *CLUSTERING, "leakage", *extra}
            assert all(0.0 <= metrics[name] <= 1.0 for name in {*METRICS, *extra})
            assert -1.0 <= metrics["leakage"] <= 1.0
            assert -1.0 <= metrics["ami"] <= metrics["nmi"] <= 1.0
        assert per_method["dior"]["answer_accuracy"] >= 0.90, condition
        assert per_method["dior"]["text_precision@10_min"] >= 0.90, condition
        assert per_method["dior"]["recall@1"] >= 0.90, condition
        # The other labels still drive the tiny model's neighbours (+0.17 to +0.33 measured).
        assert 0.1 < per_method["dior"]["leakage"] < 0.45, condition
        assert per_method["dior"]["recall@10"] >= per_method["dior"]["recall@1"]
    assert plot.stat().st_size > 1000
    table = capsys.readouterr().out
    assert "dior-unconditional" in table and "MAP@R" in table and "text P@10" in table
    assert "AMI" in table and "NMI" in table


@pytest.mark.slow
def test_bench_reuses_the_indexes(synthetic_workspace, capsys):
    """Nothing is embedded again: the indexes of the shared workspace already hold everything."""
    assert main(bench_args(synthetic_workspace, "--method", "dior", "--condition", "color")) == 0
    err = capsys.readouterr().err
    assert "skipped" not in err


@pytest.mark.slow
def test_clip_and_generative_through_bench(baseline_model_dirs, tmp_path):
    out = tmp_path / "out.json"
    args = [
        "bench",
        "--dataset",
        "synthetic",
        "--datasets-dir",
        str(tmp_path / "datasets"),
        "--indexes",
        str(tmp_path / "indexes"),
        "--device",
        "cpu",
        "--condition",
        "color",
        "--method",
        "clip",
        "--clip-model",
        str(baseline_model_dirs["clip"]),
        "--method",
        "generative",
        "--model",
        str(baseline_model_dirs["qwen2_5_vl_untied"]),
        "--text-encoder",
        str(baseline_model_dirs["bert"]),
        "--json",
        str(out),
    ]
    from dior_search.data.synthetic import write_dataset

    write_dataset(tmp_path / "datasets" / "synthetic", {"test": 40})
    assert main(args) == 0
    color = json.loads(out.read_text())["synthetic"]["color"]
    assert set(color) == {"clip", "generative"}
    embedders = sorted(p.name for p in (tmp_path / "indexes" / "synthetic").iterdir())
    assert [name.split("-")[0] for name in embedders] == ["clip", "generative"]
    # CLIP takes no condition: one index serves every condition.
    assert [p.name for p in (tmp_path / "indexes" / "synthetic" / embedders[0]).iterdir()] == [
        "unconditional"
    ]


def test_absent_dataset_is_one_line(tmp_path, capsys):
    code = main(
        ["bench", "--dataset", "deepfashion", "--datasets-dir", str(tmp_path), "--method", "dior"]
    )
    assert code == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"error: no deepfashion images in {tmp_path / 'deepfashion'}")


def test_unknown_method_lists_the_valid_ones(capsys):
    assert main(["bench", "--method", "magic"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: unknown method 'magic'; valid: dior, dior-unconditional, clip, generative, indirect"
    )


def test_deepfashion_labels_are_whole_strings(tmp_path):
    (tmp_path / "deepfashion").mkdir()
    (tmp_path / "deepfashion" / "a.jpg").write_bytes(b"")
    collection = open_dataset("deepfashion", tmp_path)
    assert len(collection.items) == 4000
    first = collection.items[0]
    assert first.path == "Floral_Print_Shirt_Dress-img_00000065.jpg"
    assert first.labels == {
        "category": "41",
        "texture": "1 0 0 0 0 0 0",
        "fabric": "0 0 1 0 0 0",
        "fit": "1 0 0",
    }
    assert collection.condition_text("texture") == "texture type"


@pytest.mark.slow
def test_generative_from_stored_answers_gives_the_generated_numbers(baseline_model_dirs, tmp_path):
    """The generative baseline embedding the answers a DIOR index stores (read with the
    baseline's own positions) scores exactly as generating them again."""
    from dior_search.data.synthetic import write_dataset

    write_dataset(tmp_path / "datasets" / "synthetic", {"test": 48})
    results = {}
    for mode in ("generate", "stored"):
        out = tmp_path / f"{mode}.json"
        args = bench_args(
            tmp_path,
            "--model",
            "tiny",
            "--positions",
            "native",
            "--method",
            "generative",
            "--generative-answers",
            mode,
            "--text-encoder",
            str(baseline_model_dirs["bert"]),
            "--json",
            str(out),
        )
        assert main(args) == 0
        results[mode] = json.loads(out.read_text())["synthetic"]
    assert results["stored"] == results["generate"]
    assert set(results["stored"]) == set(CONDITIONS)
    embedders = sorted(p.name for p in (tmp_path / "indexes" / "synthetic").iterdir())
    # Generating wrote the generative indexes; reusing, the DIOR ones (answers stored).
    assert [name.split("+")[0] for name in embedders] == ["generative-tiny", "tiny"]
