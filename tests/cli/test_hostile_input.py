"""The command line with hostile input: brackets (rich markup) in condition names, file names,
folder names and error messages are printed as typed; numbers that are not finite, images the
model refuses and huge declared sizes are one-line errors with their exit codes."""

import json
import shutil
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import pytest
from bad_images import tiny_gif
from PIL import Image
from rich.console import Console

from dior_search.cli import main
from dior_search.cli.progress import progress_bar
from dior_search.data.synthetic import write_dataset
from dior_search.models.dior import DiorEmbedder


@pytest.fixture(scope="module")
def bracketed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder `[red]imgs` (its collection is `red-imgs-<hash>`) holding `[red]b.png`,
    `[/x].png` (in a folder `[`) and an unreadable `[/bad].png`."""
    root = tmp_path_factory.mktemp("brackets")
    write_dataset(root / "synthetic", {"test": 3})
    folder = root / "[red]imgs"
    (folder / "[").mkdir(parents=True)
    shutil.copy(root / "synthetic" / "test" / "00000.png", folder / "[red]b.png")
    shutil.copy(root / "synthetic" / "test" / "00001.png", folder / "[" / "x].png")
    (folder / "[" / "bad].png").write_text("not an image")
    return root


def run(args: list[str], capsys) -> tuple[int, str, str]:
    out = StringIO()
    with redirect_stdout(out):
        code = main(args)
    captured = capsys.readouterr()
    return code, out.getvalue() + captured.out, captured.err


def one_line_error(err: str) -> str:
    # Loaded in this process, transformers shows its weight-loading bar (a fresh `dior-search`
    # process turns it off before importing transformers).
    lines = [line for line in err.strip().splitlines() if "Loading weights" not in line]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


def test_brackets_are_printed_as_typed(bracketed, capsys):
    folder = bracketed / "[red]imgs"
    indexes = ["--indexes", str(bracketed / "indexes")]
    code, out, err = run(
        ["index", "--images", str(folder), "-c", "[/x]", "--model", "tiny", *indexes], capsys
    )
    assert code == 0, err
    assert "[/x]: 2 added, 0 changed" in out
    assert "skipped [/bad].png: not an image, or not one of JPEG, PNG" in err

    query = ["query", "--images", str(folder), *indexes]
    code, out, err = run([*query, str(folder / "[red]b.png"), "-c", "[/x]"], capsys)
    assert code == 0, err
    assert "under '[/x]'" in out and "[red]b.png" in out and "[/x].png" in out

    code, out, err = run([*query, "--id", "0", "-c", "[/y]"], capsys)
    assert code == 5
    assert "no index for condition '[/y]' of red-imgs-" in one_line_error(err)

    code, out, err = run([*query, str(folder / "[" / "bad].png"), "-c", "[/x]"], capsys)
    assert code == 3
    assert one_line_error(err) == (
        f"error: cannot read image {folder / '[/bad].png'}: not an image, or not one of JPEG, "
        "PNG, WEBP, GIF, BMP, TIFF"
    )


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("numbers")
    write_dataset(root / "datasets" / "synthetic", {"test": 12})
    args = ["index", "--dataset", "synthetic", "--datasets-dir", str(root / "datasets")]
    assert main([*args, "--indexes", str(root / "indexes"), "-c", "color", "-c", "background"]) == 0
    return root


def query_args(root: Path) -> list[str]:
    return ["query", "--dataset", "synthetic", "--indexes", str(root / "indexes")]


@pytest.mark.parametrize(
    ("weights", "shown"),
    [
        (["nan", "1"], "[nan, 1.0]"),
        (["1e400", "1"], "[inf, 1.0]"),
        (["-inf", "1"], "[-inf, 1.0]"),
        (["0", "1"], "[0.0, 1.0]"),
    ],
)
def test_weights_must_be_positive_finite_numbers(indexed, capsys, weights, shown):
    args = [*query_args(indexed), "--id", "1", "-c", "color", "-c", "background"]
    code, _, err = run([*args, "-w", weights[0], "-w", weights[1]], capsys)
    assert code == 2
    assert one_line_error(err) == f"error: weights must be positive finite numbers, got {shown}"


def test_weights_near_the_float_maximum_are_equal_weights(indexed, capsys):
    args = [*query_args(indexed), "--id", "1", "-c", "color", "-c", "background", "--json"]
    code, huge, _ = run([*args, "-w", "1e308", "-w", "1e308"], capsys)
    assert code == 0
    code, equal, _ = run(args, capsys)
    assert json.loads(huge) == json.loads(equal)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--id", "99999999999999999999"], "an id must be between 0 and 9223372036854775807"),
        (["--id", "1", "-k", "0"], "k must be between 1 and 1000000"),
    ],
)
def test_numbers_out_of_range(indexed, capsys, extra, message):
    code, _, err = run([*query_args(indexed), "-c", "color", *extra], capsys)
    assert code == 2
    assert one_line_error(err) == f"error: {message}"


def test_an_image_the_model_refuses_is_exit_3_before_any_model_call(
    indexed, tmp_path, capsys, monkeypatch
):
    def no_forward_pass(self, *args, **kwargs):
        raise AssertionError("the model ran")

    monkeypatch.setattr(DiorEmbedder, "embed", no_forward_pass)
    wide = tmp_path / "wide.png"
    Image.new("RGB", (10000, 1), "red").save(wide)
    code, _, err = run([*query_args(indexed), str(wide), "-c", "color"], capsys)
    assert code == 3
    assert one_line_error(err) == (
        "error: the model cannot take this 10000x1 image (shrunk to 700x1): its aspect ratio "
        "700 is over 200, Qwen-VL's limit"
    )


def test_a_tiny_file_that_declares_a_huge_image(indexed, tmp_path, capsys):
    """Over the 150-megapixel cap: refused from its header; under it, decoded and shrunk."""
    bomb = tmp_path / "bomb.gif"
    bomb.write_bytes(tiny_gif(20000, 20000))
    code, _, err = run([*query_args(indexed), str(bomb), "-c", "color"], capsys)
    assert code == 3
    assert one_line_error(err) == (
        f"error: cannot read image {bomb}: 20000x20000 = 400000000 pixels is over the limit of "
        "150000000 pixels"
    )
    screen = tmp_path / "screen.gif"
    screen.write_bytes(tiny_gif(7000, 7000))
    code, out, err = run([*query_args(indexed), str(screen), "-c", "color", "--json"], capsys)
    assert code == 0, err
    assert len(json.loads(out)) == 10


def test_progress_labels_are_printed_as_typed():
    out = StringIO()
    with progress_bar("indexing [red]x", "img", Console(file=out, width=100)) as bar:
        bar.start(2)
        bar.advance(2)
    assert out.getvalue().startswith("indexing [red]x ━")
