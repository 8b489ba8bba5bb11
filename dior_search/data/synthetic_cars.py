"""The `synthetic_cars` dataset: the reference evaluation's fifth, rendered cars of six models.

Kobs et al.'s "3D cars" set (DML-analysis, ICCV 2021) renders each frame with a car model, a
car colour and a background colour drawn at random; its table gives per frame the model and
both colours as hue, saturation and value. Its download host is gone, so the images and the
table (`synthetic_metadata.csv`) come from the user's own copy. As the paper's `evaluate.py`
does, only the table's first 1,000 rows are evaluated, and the colour labels are CSS colour
names made from the HSV columns (see data.css_colors). The reference pairs rows with images by
position (its sorted file names); here each row names its image by its first column, the
frame number, as in the original archive (`<frame>.png`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from dior_search.data.css_colors import hsv_color_name

TABLE_FILE = "synthetic_metadata.csv"
# The reference evaluates the table's first 1,000 rows (`df[:1000]`).
TABLE_ROWS = 1000
# Condition short name -> the aspect phrase put into the prompt (the reference's aspects).
CONDITIONS = {"model": "car model", "color": "car color", "background": "background color"}
# The table's columns read: the model, and each colour's hue, saturation and value.
HSV_COLUMNS = {
    "color": ("color_hue", "color_sat", "color_val"),
    "background": ("bg_color_hue", "bg_color_sat", "bg_color_val"),
}
COLUMNS = ("model", *HSV_COLUMNS["color"], *HSV_COLUMNS["background"])
HOW_TO_GET = (
    "the original host of the 3D cars set (konstantinkobs/DML-analysis) is gone: put your own "
    f"copy's images (<frame>.png) and its {TABLE_FILE} in this folder (see docs/evaluation.md)"
)


def image_name(frame: str) -> str:
    """The image file of a table row: its frame number, `<frame>.png`. ValueError if the
    frame is not a whole number."""
    number = float(frame)
    if not number.is_integer() or number < 0:
        raise ValueError(f"frame {frame!r} is not a whole number")
    return f"{int(number)}.png"


def row_labels(row: Mapping[str, str]) -> dict[str, str]:
    """A table row's labels: the car model as written, and the two colour names. ValueError
    naming the column where a colour value is not a number in 0..1."""
    labels = {"model": row["model"].strip()}
    for condition, columns in HSV_COLUMNS.items():
        hsv = [unit_number(row, column) for column in columns]
        labels[condition] = hsv_color_name(*hsv)
    return labels


def unit_number(row: Mapping[str, str], column: str) -> float:
    try:
        value = float(row[column])
    except ValueError:
        raise ValueError(f"column {column!r} holds {row[column]!r}, not a number") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"column {column!r} holds {row[column]!r}, not a number in 0..1")
    return value
