"""The `synthetic` collection: seeded images with four independent labelled attributes.

Each image is a small or large shape in one of six colours, filled solid, with stripes or with
dots, on one of four backgrounds. The shape itself (circle or square) varies but is not a
label: a few-MB vision tower does not learn it (see README). Small and large stay apart in
area as well as in side whatever the shape, and a large object leaves the background in view.
Image sizes vary so batches mix sizes. An image depends only on (seed, split, index), so any
subset can be regenerated.
"""

import csv
import io
import os
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]

COLORS: dict[str, RGB] = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (45, 85, 220),
    "yellow": (235, 210, 45),
    "purple": (140, 60, 180),
    "orange": (240, 135, 30),
}
BACKGROUNDS: dict[str, RGB] = {
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
    "teal": (30, 125, 125),
}
PATTERNS = ("solid", "stripes", "dots")
# The object's side as a share of the image's shorter side.
OBJECT_SIZES: dict[str, tuple[float, float]] = {"small": (0.4, 0.5), "large": (0.7, 0.85)}
SHAPES = ("circle", "square")
IMAGE_SIZES = ((84, 84), (112, 84), (84, 112), (112, 112))

# Condition short name -> the aspect phrase put into the prompt.
CONDITIONS: dict[str, str] = {
    "color": "object color",
    "background": "background color",
    "pattern": "pattern",
    "size": "object size",
}
LABEL_VALUES: dict[str, tuple[str, ...]] = {
    "color": tuple(COLORS),
    "background": tuple(BACKGROUNDS),
    "pattern": PATTERNS,
    "size": tuple(OBJECT_SIZES),
}
SPLIT_SIZES = {"train": 4000, "test": 400}
# The fewest images in which every condition has two images that share a label (one more
# than the most labels a condition has: six colours), and the most a split is made with.
MIN_EVALUABLE_IMAGES = max(len(values) for values in LABEL_VALUES.values()) + 1
MAX_SPLIT_IMAGES = 100_000
LABELS_FILE = "labels.csv"


@dataclass(frozen=True)
class SyntheticItem:
    file_name: str
    split: str
    color: str
    background: str
    pattern: str
    size: str

    def label(self, condition: str) -> str:
        value: str = asdict(self)[condition]
        return value


def item_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(split.encode()), index])


def make_item(seed: int, split: str, index: int) -> tuple[SyntheticItem, Image.Image]:
    """The labels and the image of one item."""
    rng = item_rng(seed, split, index)
    item = SyntheticItem(
        file_name=f"{split}/{index:05d}.png",
        split=split,
        color=str(rng.choice(list(COLORS))),
        background=str(rng.choice(list(BACKGROUNDS))),
        pattern=str(rng.choice(PATTERNS)),
        size=str(rng.choice(list(OBJECT_SIZES))),
    )
    return item, render(item, rng)


def jitter(color: RGB, rng: np.random.Generator, amount: int = 12) -> RGB:
    shifted = np.clip(np.array(color) + rng.integers(-amount, amount + 1, 3), 0, 255)
    return (int(shifted[0]), int(shifted[1]), int(shifted[2]))


def render(item: SyntheticItem, rng: np.random.Generator) -> Image.Image:
    width, height = IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
    image = Image.new("RGB", (width, height), jitter(BACKGROUNDS[item.background], rng))

    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    side = int(rng.uniform(*OBJECT_SIZES[item.size]) * min(width, height))
    left = int(rng.integers(2, width - side - 1))
    top = int(rng.integers(2, height - side - 1))
    box = (left, top, left + side, top + side)
    mask = Image.new("L", (width, height), 0)
    draw_mask = ImageDraw.Draw(mask)
    if shape == "circle":
        draw_mask.ellipse(box, fill=255)
    else:
        draw_mask.rectangle(box, fill=255)

    fill_color = jitter(COLORS[item.color], rng)
    fill = Image.new("RGB", (width, height), fill_color)
    shade = tuple(int(c * 0.45) for c in fill_color)
    draw_fill = ImageDraw.Draw(fill)
    period = 8
    if item.pattern == "stripes":
        for offset in range(-height, width, period):
            draw_fill.line([(offset, 0), (offset + height, height)], fill=shade, width=3)
    elif item.pattern == "dots":
        for y in range(period // 2, height, period):
            for x in range(period // 2, width, period):
                draw_fill.ellipse((x - 2, y - 2, x + 2, y + 2), fill=shade)
    image.paste(fill, mask=mask)

    noise = rng.normal(0.0, 4.0, (height, width, 3))
    pixels = np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def iter_split(
    split: str, count: int, seed: int = 0
) -> Iterator[tuple[SyntheticItem, Image.Image]]:
    """Items 0..count-1 of a split, generated in memory."""
    for index in range(count):
        yield make_item(seed, split, index)


def write_dataset(
    root: Path, splits: dict[str, int] | None = None, seed: int = 0, labels: bool = True
) -> list[SyntheticItem]:
    """Write the images (and `labels.csv`, if `labels`) under `root`.

    An existing image file is kept only if it holds exactly the generated pixels: a file that
    was replaced or damaged is written again, so the labels always describe the images.
    """
    items: list[SyntheticItem] = []
    for split, count in (splits or SPLIT_SIZES).items():
        (root / split).mkdir(parents=True, exist_ok=True)
        for item, image in iter_split(split, count, seed):
            path = root / item.file_name
            if not holds_image(path, image):
                tmp = path.with_name(f".{path.name}.tmp")
                image.save(tmp, format="PNG")
                os.replace(tmp, path)
            items.append(item)
    if labels:
        write_labels(root / LABELS_FILE, items)
    return items


def holds_image(path: Path, image: Image.Image) -> bool:
    """Whether `path` is a PNG file of exactly `image`'s pixels."""
    try:
        with Image.open(path) as stored:
            if stored.format != "PNG" or stored.size != image.size or stored.mode != image.mode:
                return False
            return bool(np.array_equal(np.asarray(stored), np.asarray(image)))
    except (OSError, ValueError):
        return False


def write_labels(path: Path, items: list[SyntheticItem]) -> None:
    fields = list(asdict(items[0]))
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(asdict(item) for item in items)
    os.replace(tmp, path)


# How each copy is altered, in turn: what `--distinct` must still see as the same picture.
COPY_KINDS = ("jpeg", "resize", "crop")


def copy_kind(file_name: str) -> str:
    """Which alteration made a copy written by write_copies (its number picks it, in turn)."""
    return COPY_KINDS[int(Path(file_name).name[:5]) % len(COPY_KINDS)]


def write_copies(root: Path, count: int) -> list[str]:
    """Copies of the first `count` test images under `root` (a written dataset): re-encoded as
    JPEG at quality 70, resized to 80 % or cropped to the central 90 %, in turn, saved beside
    their originals as `NAME-copy.png` and listed in labels.csv with the originals' labels.
    Returns the copies' file names."""
    table = root / LABELS_FILE
    with table.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    originals = [r for r in rows if r["split"] == "test" and "-copy" not in r["file_name"]]
    added = []
    for row in originals[:count]:
        name = row["file_name"].replace(".png", "-copy.png")
        with Image.open(root / row["file_name"]) as opened:
            image = opened.convert("RGB")
        width, height = image.size
        kind = copy_kind(row["file_name"])
        if kind == "jpeg":
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=70)
            image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
        elif kind == "resize":
            image = image.resize((int(width * 0.8), int(height * 0.8)))
        else:
            dx, dy = width // 20, height // 20
            image = image.crop((dx, dy, width - dx, height - dy))
        image.save(root / name)
        added.append({**row, "file_name": name})
    kept = [r for r in rows if r["file_name"] not in {a["file_name"] for a in added}]
    tmp = table.with_name(f".{table.name}.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept + added)
    os.replace(tmp, table)
    return [a["file_name"] for a in added]
