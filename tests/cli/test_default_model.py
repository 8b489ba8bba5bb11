"""The model a verb uses when none is named: `tiny` for the synthetic set, the paper's elsewhere."""

import pytest

from dior_search import defaults
from dior_search.cli import main
from dior_search.data.synthetic import make_item


@pytest.fixture
def folder(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for index in range(3):
        make_item(0, "test", index)[1].save(images / f"{index}.png")
    return images


def test_a_folder_defaults_to_the_papers_model(folder, tmp_path, capsys):
    """Offline and not cached: one line, exit 4, naming --model and a model for a CPU."""
    args = ["index", "--images", str(folder), "-c", "color", "--indexes", str(tmp_path / "ix")]
    assert main(args) == 4
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"error: cannot load model '{defaults.DEFAULT_MODEL}'")
    assert "--model" in err and defaults.CPU_MODEL in err
    assert not (tmp_path / "ix").exists()


def test_an_explicit_model_gets_no_hint(folder, tmp_path, capsys):
    args = ["index", "--images", str(folder), "-c", "color", "--model", "no-org/no-model"]
    assert main([*args, "--indexes", str(tmp_path / "ix")]) == 4
    err = capsys.readouterr().err
    assert "no-org/no-model" in err and defaults.CPU_MODEL not in err


def test_tiny_on_another_collection_warns_once(folder, tmp_path, capsys):
    args = ["index", "--images", str(folder), "-c", "color", "--model", "tiny", "--device", "cpu"]
    assert main([*args, "--indexes", str(tmp_path / "ix")]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: the tiny model knows only the generated synthetic images") == 1


def test_synthetic_defaults_to_tiny_without_a_warning(tmp_path, capsys):
    args = ["index", "--dataset", "synthetic", "-c", "color", "--device", "cpu"]
    args += ["--datasets-dir", str(tmp_path / "datasets"), "--indexes", str(tmp_path / "ix")]
    from dior_search.data.synthetic import write_dataset

    # A small split written first: the collection lists what labels.csv holds.
    write_dataset(tmp_path / "datasets" / "synthetic", {"test": 4})
    assert main(args) == 0
    assert "warning" not in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "ix" / "synthetic").iterdir()] == ["tiny"]


def test_default_model_rule():
    assert defaults.default_model(["synthetic"]) == "tiny"
    assert defaults.default_model(["synthetic", "deepfashion"]) == defaults.DEFAULT_MODEL
    assert defaults.default_model(["photos-1234abcd"]) == defaults.DEFAULT_MODEL
