"""`synthetic_cars`, the reference's fifth dataset: colour labels named from the table's HSV
columns by the reference rule, only the table's first rows, images named by their frame."""

import colorsys
import csv
import json

import pytest
from cli_runs import TINY, error_line, run_cli
from PIL import Image

from dior_search.data import synthetic_cars
from dior_search.data.collections import LabelTableError, open_dataset
from dior_search.data.css_colors import CSS3_COLORS, hsv_color_name, hsv_to_rgb, nearest_css21
from dior_search.errors import InputError


def hsv_for(rgb):
    """Table values (hue, saturation, value) that the reference maps to exactly `rgb`."""
    hue, saturation, value = colorsys.rgb_to_hsv(*((channel + 0.5) / 255 for channel in rgb))
    return (hue - 0.5) % 1, 2 * saturation, 2 * value


# (table hue, saturation, value) -> the reference's name, each derived by hand below.
BRANCHES = {
    # Exact CSS 3 names: where two names share a triplet the later one wins (dimgrey, not
    # dimgray; darkslategrey), as in webcolors 1.5's reversed table.
    "black": ((0.3, 0.7, 0.0), "black"),
    "exact, later spelling": (hsv_for((105, 105, 105)), "dimgrey"),
    "exact, later spelling 2": (hsv_for((47, 79, 79)), "darkslategrey"),
    # No exact name: the nearest CSS 2.1 colour. Hue 0.5 shifts to 0 (red); saturation and
    # value halve to 0.5: (127, 63, 63), nearest maroon (128, 0, 0) at 1 + 2 x 63^2.
    "nearest, shifted red": ((0.5, 1.0, 1.0), "maroon"),
    # Hue 0 shifts to 0.5 (cyan): (63, 127, 127), nearest teal (0, 128, 128) at 63^2 + 2.
    "nearest, shifted cyan": ((0.0, 1.0, 1.0), "teal"),
    # A tie: (64, 64, 64) is 3 x 64^2 from the eight colours whose channels are 0 or 128
    # (black, green, gray, maroon, navy, olive, purple, teal): the last in the table wins.
    "nearest, tie": (hsv_for((64, 64, 64)), "teal"),
}


@pytest.mark.parametrize("branch", BRANCHES)
def test_colour_names_follow_the_reference_rule(branch):
    hsv, name = BRANCHES[branch]
    assert hsv_color_name(*hsv) == name


def test_each_branch_is_the_one_named():
    assert hsv_to_rgb(*BRANCHES["exact, later spelling"][0]) == (105, 105, 105)
    assert hsv_to_rgb(*BRANCHES["nearest, shifted red"][0]) == (127, 63, 63)
    assert hsv_to_rgb(*BRANCHES["nearest, shifted cyan"][0]) == (63, 127, 127)
    assert hsv_to_rgb(*BRANCHES["nearest, tie"][0]) == (64, 64, 64)
    nearest = [BRANCHES[b][1] for b in BRANCHES if b.startswith("nearest")]
    assert all(CSS3_COLORS[name] != (127, 63, 63) for name in nearest)
    assert (64, 64, 64) not in CSS3_COLORS.values()
    assert nearest_css21((60, 60, 60)) == "black" and nearest_css21((70, 70, 70)) == "gray"
    assert len(CSS3_COLORS) == 147 and len(set(CSS3_COLORS.values())) == 138


COLUMNS = ["frame", *synthetic_cars.COLUMNS]


def write_cars(folder, rows, images=True):
    """A table (frame first, as the original) and a small image per row, coloured by it."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / synthetic_cars.TABLE_FILE).open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    for frame, _, hue, saturation, value, *_ in rows if images else []:
        rgb = hsv_to_rgb(float(hue), float(saturation), float(value))
        Image.new("RGB", (40 + 8 * (int(frame) % 3), 40), rgb).save(folder / f"{frame}.png")


def table_rows():
    hsv = [BRANCHES[b][0] for b in BRANCHES]
    rows = []
    for frame in range(12):
        color = hsv[frame % len(hsv)]
        background = hsv[(frame + 2) % len(hsv)]
        rows.append([frame, f"model {frame % 3}", *color, *background])
    return rows


def test_dataset_reads_the_first_rows_and_names_their_colours(tmp_path, monkeypatch):
    rows = table_rows()
    write_cars(tmp_path / "synthetic_cars", rows)
    monkeypatch.setattr(synthetic_cars, "TABLE_ROWS", 9)
    collection = open_dataset("synthetic_cars", tmp_path)
    assert collection.conditions == {
        "model": "car model",
        "color": "car color",
        "background": "background color",
    }
    names = [BRANCHES[b][1] for b in BRANCHES]
    expected = [
        (
            f"{frame}.png",
            {
                "model": f"model {frame % 3}",
                "color": names[frame % len(names)],
                "background": names[(frame + 2) % len(names)],
            },
        )
        for frame in range(9)
    ]
    assert [(item.path, item.labels) for item in collection.items] == expected


def test_bad_tables_and_missing_images_are_one_line(tmp_path):
    with pytest.raises(InputError, match=r"host .* is gone"):
        open_dataset("synthetic_cars", tmp_path)
    rows = table_rows()
    write_cars(tmp_path / "synthetic_cars", rows)
    rows[3][3] = "bright"
    write_cars(tmp_path / "synthetic_cars", rows, images=False)
    with pytest.raises(LabelTableError, match=r"line 5: column 'color_sat' holds 'bright'"):
        open_dataset("synthetic_cars", tmp_path)
    rows[3][3] = "1.5"
    write_cars(tmp_path / "synthetic_cars", rows, images=False)
    with pytest.raises(LabelTableError, match=r"line 5: .* not a number in 0\.\.1"):
        open_dataset("synthetic_cars", tmp_path)
    (tmp_path / "synthetic_cars" / synthetic_cars.TABLE_FILE).unlink()
    with pytest.raises(LabelTableError, match="label table not found"):
        open_dataset("synthetic_cars", tmp_path)


@pytest.mark.slow
def test_bench_reports_every_aspect(tmp_path, capsys):
    write_cars(tmp_path / "datasets" / "synthetic_cars", table_rows())
    out = tmp_path / "out.json"
    args = ["bench", "--dataset", "synthetic_cars", "--method", "dior", *TINY]
    args += ["--datasets-dir", tmp_path / "datasets", "--indexes", tmp_path / "indexes"]
    run = run_cli(capsys, *args, "--json", out)
    assert run.code == 0, run.err
    result = json.loads(out.read_text())["synthetic_cars"]
    assert set(result) == {"model", "color", "background"}
    for metrics in result.values():
        assert {"map@r", "precision@1", "ami", "nmi"} <= set(metrics["dior"])
    assert "AMI" in run.out and "synthetic_cars" in run.out
    # An aspect the dataset does not have: one line, usage exit code.
    bad = run_cli(capsys, *args, "-c", "wheels")
    assert "valid: model, color, background" in error_line(bad, 2)
