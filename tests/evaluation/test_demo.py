import numpy as np
import pytest
from PIL import Image

from dior_search.cli import main
from dior_search.evaluation.demo import run_demo
from dior_search.models.settings import DiorSettings


@pytest.mark.slow
def test_tiny_model_retrieves_by_every_condition(tmp_path):
    result = run_demo(
        DiorSettings(model="tiny", device="cpu", batch_size=16), tmp_path, n_images=400
    )
    assert result.n_images == 400
    for score in result.scores:
        assert score.recall_at_1 >= 0.90, score
    # The condition matters: unconditional embeddings rank by no single attribute that well.
    assert min(s.unconditional_recall_at_1 for s in result.scores) < 0.90
    color_example = result.examples[0]
    assert color_example.condition == "color"
    assert [item.color for item, _ in color_example.hits].count(color_example.query.color) >= 4


@pytest.mark.slow
def test_demo_command_prints_the_table(tmp_path, capsys):
    assert main(["demo", "--data-dir", str(tmp_path), "--n-images", "60"]) == 0
    out = capsys.readouterr().out
    assert "recall@1" in out
    for condition in ("color", "background", "pattern", "size"):
        assert condition in out


@pytest.mark.parametrize("n_images", ["0", "-1", "6", str(10**30)])
def test_demo_refuses_an_image_count_out_of_range(tmp_path, capsys, n_images):
    from cli_runs import error_line, run_cli

    run = run_cli(capsys, "demo", "--data-dir", tmp_path / "demo", "--n-images", n_images)
    assert "the demo takes 7 to 100000 images (--n-images)" in error_line(run, 2)
    assert not (tmp_path / "demo").exists()


def test_demo_works_in_its_own_folder(tmp_path, capsys, monkeypatch):
    from cli_runs import run_cli

    from dior_search.data.synthetic import write_dataset

    monkeypatch.chdir(tmp_path)
    write_dataset(tmp_path / "datasets" / "synthetic", {"test": 30})
    synthetic = {p: p.read_bytes() for p in (tmp_path / "datasets" / "synthetic").rglob("*")
                 if p.is_file()}  # fmt: skip
    assert run_cli(capsys, "demo", "--n-images", "8", "--device", "cpu").code == 0
    after = {p: p.read_bytes() for p in (tmp_path / "datasets" / "synthetic").rglob("*")
             if p.is_file()}  # fmt: skip
    assert after == synthetic  # `index --dataset synthetic` still sees its 30 images
    assert sorted(p.name for p in (tmp_path / "datasets" / "demo" / "test").iterdir()) == [
        f"{n:05d}.png" for n in range(8)
    ]
    assert not (tmp_path / "datasets" / "demo" / "labels.csv").exists()


def test_demo_rewrites_an_image_that_is_not_the_generated_one(tmp_path):
    from dior_search.data.synthetic import make_item

    first = run_demo(DiorSettings(model="tiny", device="cpu", batch_size=16), tmp_path, n_images=8)
    test = tmp_path / "test"
    (test / "00000.png").write_bytes((test / "00001.png").read_bytes())  # a copy over it
    second = run_demo(DiorSettings(model="tiny", device="cpu", batch_size=16), tmp_path, n_images=8)
    _, image = make_item(0, "test", 0)
    with Image.open(test / "00000.png") as stored:
        assert np.array_equal(np.asarray(stored), np.asarray(image))
    assert second.examples[0].hits == first.examples[0].hits


def test_demo_folder_that_cannot_be_written_is_one_line(tmp_path, capsys, monkeypatch):
    import errno
    import os

    from cli_runs import error_line, run_cli
    from PIL import Image as PILImage

    def refuse(self, fp, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(fp))

    monkeypatch.setattr(PILImage.Image, "save", refuse)
    run = run_cli(capsys, "demo", "--data-dir", tmp_path / "demo", "--n-images", "8")
    line = error_line(run, 7)
    assert line.startswith(f"error: cannot write the demo images to {tmp_path / 'demo'}")
    assert line.endswith(": Permission denied")
