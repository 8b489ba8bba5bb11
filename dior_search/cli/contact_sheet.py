"""A contact sheet: the query image beside its top hits, each with score and labels."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from PIL import Image, ImageDraw, ImageOps

from dior_search.cli.outputs import write_output
from dior_search.data.paths import shown
from dior_search.data.reading import load_item_image
from dior_search.errors import InputError


class Result(Protocol):
    """A search result as the sheet shows it."""

    @property
    def score(self) -> float: ...

    @property
    def path(self) -> str: ...

    @property
    def labels(self) -> dict[str, str]: ...


THUMB = 160
LINE = 12
CAPTION = 4 * LINE + 6
HEADER = 24
PER_ROW = 6


def thumbnail(image: Image.Image) -> Image.Image:
    return ImageOps.pad(image, (THUMB, THUMB), color=(255, 255, 255))


def tile(
    image: Image.Image | None, lines: Sequence[str], border: tuple[int, int, int]
) -> Image.Image:
    cell = Image.new("RGB", (THUMB + 8, THUMB + CAPTION), "white")
    draw = ImageDraw.Draw(cell)
    draw.rectangle((0, 0, THUMB + 7, THUMB + 7), fill=border)
    if image is None:
        draw.text((12, THUMB // 2), "(missing)", fill="black")
    else:
        cell.paste(thumbnail(image), (4, 4))
    for number, line in enumerate(lines[:4]):
        draw.text((4, THUMB + 10 + LINE * number), line, fill="black")
    return cell


def write_contact_sheet(
    out: Path,
    title: str,
    query: Image.Image | None,
    query_caption: str,
    hits: Sequence[Result],
    root: Path,
) -> None:
    """Write a PNG with the query first, then the hits in rank order."""
    tiles = [tile(query, ["query", shown(query_caption)], (40, 90, 200))]
    for rank, hit in enumerate(hits, start=1):
        try:
            image: Image.Image | None = load_item_image(root, hit.path)
        except InputError:
            image = None
        labels = ", ".join(f"{k}={v}" for k, v in sorted(hit.labels.items()))
        caption = [f"#{rank}  {hit.score:.3f}  {shown(Path(hit.path).name)}"]
        caption += textwrap.wrap(labels, width=27)[:3]
        tiles.append(tile(image, caption, (220, 220, 220)))
    rows = (len(tiles) + PER_ROW - 1) // PER_ROW
    width, height = tiles[0].size
    sheet = Image.new("RGB", (min(len(tiles), PER_ROW) * width, HEADER + rows * height), "white")
    ImageDraw.Draw(sheet).text((6, 6), shown(title), fill="black")
    for number, cell in enumerate(tiles):
        sheet.paste(cell, ((number % PER_ROW) * width, HEADER + (number // PER_ROW) * height))
    write_output(out, "--sheet", lambda tmp: sheet.save(tmp, format="PNG"))
