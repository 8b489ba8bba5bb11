"""Collections: where a dataset's images are, what its conditions are, how labels are read.

A spec names a dataset's conditions (short name -> the aspect phrase put into the prompt, as
in the paper) and reads its items: image paths relative to the images folder, with labels.
`--images DIR` makes an unlabelled collection of any folder, under any free-text condition.
"""

from __future__ import annotations

import csv
import errno
import functools
import hashlib
import io
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dior_search.data import synthetic_cars
from dior_search.data.images import os_reason, scan_images
from dior_search.data.paths import is_text, name_bytes
from dior_search.data.synthetic import CONDITIONS as SYNTHETIC_CONDITIONS
from dior_search.data.synthetic import LABELS_FILE, write_dataset
from dior_search.errors import InputError, UsageError

# The label tables ship inside the package (the repository's top-level metadata/ links here).
METADATA_DIR = Path(__file__).resolve().parent / "metadata"
UNCONDITIONAL = "unconditional"
# A condition is a short phrase put into the prompt ("object color"); a longer text only
# costs time and memory per image (a 3,000-word one took 7 GB for 50 images).
MAX_CONDITION_CHARS = 200


@dataclass(frozen=True)
class Item:
    """One image of a collection: its path relative to the collection root, and its labels."""

    path: str
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Collection:
    name: str
    root: Path
    items: list[Item]
    conditions: dict[str, str]
    # Files and folders under the root that could not be read: (path relative to it, reason).
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    def condition_text(self, condition: str) -> str | None:
        """The prompt phrase of a condition (a known short name, or free text as given)."""
        if condition == UNCONDITIONAL:
            return None
        return self.conditions.get(condition, condition)


@dataclass(frozen=True)
class Listing:
    """A dataset's items, and what under its folder could not be read."""

    items: list[Item]
    unreadable: list[tuple[str, str]] = field(default_factory=list)


ItemReader = Callable[[Path, Path], Listing]


class LabelTableError(InputError):
    """A label table that is missing, unreadable, empty or malformed."""


def check_conditions(conditions: Sequence[str]) -> list[str]:
    """The conditions, each checked (see `check_condition`), a repeated one given once."""
    return list(dict.fromkeys(check_condition(c) for c in conditions))


def check_condition(condition: str) -> str:
    """A condition as given, if it is one line of text of 1 to MAX_CONDITION_CHARS
    characters; UsageError saying what is wrong otherwise."""
    if not condition.strip():
        raise UsageError("a condition cannot be empty: give a phrase such as 'object color'")
    if not is_text(condition):
        raise UsageError(f"condition {condition!r} is not valid UTF-8 text")
    if len(condition) > MAX_CONDITION_CHARS:
        raise UsageError(
            f"a condition is at most {MAX_CONDITION_CHARS} characters (a short phrase such as "
            f"'object color'); got {len(condition)}"
        )
    if condition != condition.strip():  # "color " would be an index apart from "color"
        raise UsageError(
            f"condition '{condition}' begins or ends with a space: give it without "
            f"('{condition.strip()}')"
        )
    if not condition.isprintable():
        raise UsageError(
            f"condition {condition!r} holds a control or invisible character: give one line "
            "of plain text"
        )
    return condition


# Image path -> labels, as a label table gives them.
LabelRows = dict[str, dict[str, str]]
LabelTableReader = Callable[[Path, Path], LabelRows]
PathLabeller = Callable[[str], dict[str, str]]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    conditions: dict[str, str]
    read_items: ItemReader
    how_to_get: str
    # Where labels come from now, read without the images: a label table (path -> labels)...
    label_table: LabelTableReader | None = None
    # ... or the image's path itself (its file or folder name).
    path_labels: PathLabeller | None = None


def read_label_table(path: Path, delimiter: str, columns: Sequence[str]) -> list[dict[str, str]]:
    """A label table's rows, checked: UTF-8 text, every column in `columns`, at least a row.

    Read again only when the file changes (its size or modification time).
    """
    try:
        info = path.stat()
    except OSError as exc:
        if not path.exists():
            raise LabelTableError(f"label table not found: {path}") from None
        raise LabelTableError(f"cannot read label table {path}: {os_reason(exc)}") from None
    return read_label_table_version(path, delimiter, tuple(columns), info.st_mtime_ns, info.st_size)


@functools.lru_cache(maxsize=16)
def read_label_table_version(
    path: Path, delimiter: str, columns: tuple[str, ...], _mtime_ns: int, _size: int
) -> list[dict[str, str]]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise LabelTableError(f"cannot read label table {path}: {os_reason(exc)}") from None
    except UnicodeDecodeError:
        raise LabelTableError(f"label table {path} is not UTF-8 text (a binary file?)") from None
    if "\x00" in text:
        raise LabelTableError(f"label table {path} is not text: it holds NUL bytes")
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise LabelTableError(f"label table {path} is malformed: {exc}") from None
    found = reader.fieldnames or []
    missing = [c for c in columns if c not in found]
    if missing:
        have = ", ".join(repr(c) for c in found) or "none"
        raise LabelTableError(
            f"label table {path} has no column {missing[0]!r} (its columns: {have})"
        )
    if not rows:
        raise LabelTableError(f"label table {path} has no rows: it lists no image")
    for row in rows:
        if any(row.get(c) is None for c in columns):
            raise LabelTableError(f"label table {path}: a row has fewer fields than the header")
    return rows


def rows_by_path(path: Path, rows: Sequence[tuple[str, dict[str, str]]]) -> LabelRows:
    """(image path, labels) rows as a mapping; an empty or repeated image path is refused."""
    table: LabelRows = {}
    for name, labels in rows:
        if not name:
            raise LabelTableError(f"label table {path} has a row without an image file name")
        if name in table:
            raise LabelTableError(f"label table {path} lists {name!r} twice")
        table[name] = labels
    return table


def items_of(table: LabelRows) -> list[Item]:
    return [Item(name, labels) for name, labels in table.items()]


def require_images(root: Path, name: str) -> None:
    try:
        present = root.is_dir() and any(root.iterdir())
    except OSError as exc:
        raise InputError(f"cannot read {name} images in {root}: {os_reason(exc)}") from None
    if not present:
        spec = DATASETS[name]
        raise InputError(f"no {name} images in {root}: {spec.how_to_get}")


def synthetic_labels(root: Path, _metadata: Path) -> LabelRows:
    path = root / LABELS_FILE
    columns = ("file_name", "split", *SYNTHETIC_CONDITIONS)
    rows = read_label_table(path, ",", columns)
    test = [
        (row["file_name"], {c: row[c] for c in SYNTHETIC_CONDITIONS})
        for row in rows
        if row["split"] == "test"
    ]
    if not test:
        raise LabelTableError(f"label table {path} lists no test image (split 'test')")
    return rows_by_path(path, test)


def read_synthetic(root: Path, metadata: Path) -> Listing:
    if not (root / LABELS_FILE).is_file():
        try:
            write_dataset(root, {"test": 400})
        except OSError as exc:
            where = exc.filename or root
            raise InputError(
                f"cannot write the synthetic set to {where}: {os_reason(exc)}"
            ) from None
    return Listing(items_of(synthetic_labels(root, metadata)))


def synthetic_cars_labels(root: Path, _metadata: Path) -> LabelRows:
    """The first `TABLE_ROWS` rows of the user's table, each naming its image by its first
    column (the frame, pandas' `index_col=0` in the reference), colours named from HSV."""
    path = root / synthetic_cars.TABLE_FILE
    rows = read_label_table(path, ",", synthetic_cars.COLUMNS)
    frame = next(iter(rows[0]))
    labelled = []
    # Line 1 is the header.
    for line, row in enumerate(rows[: synthetic_cars.TABLE_ROWS], start=2):
        try:
            labelled.append((synthetic_cars.image_name(row[frame]), synthetic_cars.row_labels(row)))
        except ValueError as exc:
            raise LabelTableError(f"label table {path}, line {line}: {exc}") from None
    return rows_by_path(path, labelled)


def read_synthetic_cars(root: Path, metadata: Path) -> Listing:
    require_images(root, "synthetic_cars")
    return Listing(items_of(synthetic_cars_labels(root, metadata)))


DEEPFASHION_COLUMNS = {
    "category": "clothing_category",
    "texture": "texture",
    "fabric": "fabric",
    "fit": "fit",
}


def deepfashion_labels(_root: Path, metadata: Path) -> LabelRows:
    path = metadata / "deepfashion.csv"
    rows = read_label_table(path, ",", ("file_names", *DEEPFASHION_COLUMNS.values()))
    # One-hot label strings are compared whole, as the paper does.
    return rows_by_path(
        path,
        [
            (
                row["file_names"],
                {c: row[column].strip() for c, column in DEEPFASHION_COLUMNS.items()},
            )
            for row in rows
        ],
    )


def read_deepfashion(root: Path, metadata: Path) -> Listing:
    require_images(root, "deepfashion")
    return Listing(items_of(deepfashion_labels(root, metadata)))


def movie_poster_labels(_root: Path, metadata: Path) -> LabelRows:
    path = metadata / "movie_posters.tsv"
    rows = read_label_table(path, "\t", ("imdbID", "Genre", "Country"))
    return rows_by_path(
        path,
        [
            (f"{row['imdbID']}.jpg", {"genre": row["Genre"], "country": row["Country"]})
            for row in rows
        ],
    )


def read_movie_posters(root: Path, metadata: Path) -> Listing:
    require_images(root, "movie_posters")
    return Listing(items_of(movie_poster_labels(root, metadata)))


def cub_species(file_name: str) -> str:
    """CUB file names are Class_Name_NNNN_NNNNNN.jpg, flat or in class folders."""
    return " ".join(Path(file_name).stem.split("_")[:-2])


def cub_labels(path: str) -> dict[str, str]:
    return {"species": cub_species(Path(path).name)}


def cars_labels(path: str) -> dict[str, str]:
    return {"model": Path(path).parent.name}


def scan_folder(root: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """The image paths under `root`, relative to it, and what could not be read there. A
    symbolic link that dangles or loops is no file (its rows go, as a deleted file's), where
    a file that cannot be read keeps its rows."""
    scan = scan_images(root)
    names = [p.relative_to(root).as_posix() for p in scan.images]
    unreadable = [
        (p.relative_to(root).as_posix(), why) for p, why in scan.unreadable if not is_gone(p)
    ]
    return names, unreadable


def is_gone(path: Path) -> bool:
    """Whether nothing is at `path` to read: no file, a link to nothing or a loop of links."""
    try:
        path.stat()
    except FileNotFoundError:
        return True
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


def read_cub200(root: Path, _metadata: Path) -> Listing:
    require_images(root, "cub200")
    names, unreadable = scan_folder(root)
    return Listing([Item(name, cub_labels(name)) for name in names], unreadable)


def read_cars196(root: Path, _metadata: Path) -> Listing:
    require_images(root, "cars196")
    names, unreadable = scan_folder(root)
    flat = [name for name in names if "/" not in name]
    if flat:
        raise InputError(
            f"cars196 labels come from class folders (<model name>/<image>), but {root} has "
            f"{len(flat)} images at its top level: keep the Kaggle folder layout"
        )
    return Listing([Item(name, cars_labels(name)) for name in names], unreadable)


DATASETS: dict[str, DatasetSpec] = {
    "synthetic": DatasetSpec(
        "synthetic",
        SYNTHETIC_CONDITIONS,
        read_synthetic,
        "generated on first use",
        label_table=synthetic_labels,
    ),
    "synthetic_cars": DatasetSpec(
        "synthetic_cars",
        synthetic_cars.CONDITIONS,
        read_synthetic_cars,
        synthetic_cars.HOW_TO_GET,
        label_table=synthetic_cars_labels,
    ),
    "deepfashion": DatasetSpec(
        "deepfashion",
        {
            "category": "clothing category",
            "texture": "texture type",
            "fabric": "fabric type",
            "fit": "fit type",
        },
        read_deepfashion,
        "download the In-Shop img.zip and flatten it to {Category}-img_{id}.jpg (see README)",
        label_table=deepfashion_labels,
    ),
    "movie_posters": DatasetSpec(
        "movie_posters",
        {"genre": "movie genre", "country": "movie's production country"},
        read_movie_posters,
        "download Movie_Poster_Dataset.zip and flatten it to {imdbID}.jpg (see README)",
        label_table=movie_poster_labels,
    ),
    "cub200": DatasetSpec(
        "cub200",
        {"species": "bird species"},
        read_cub200,
        "download CUB_200_2011.tgz and keep classes 101-200 (see README)",
        path_labels=cub_labels,
    ),
    "cars196": DatasetSpec(
        "cars196",
        {"model": "car model"},
        read_cars196,
        "download Stanford Cars from Kaggle, keeping its test/<model name>/ folders (see README)",
        path_labels=cars_labels,
    ),
}


def open_dataset(name: str, datasets_dir: Path, metadata_dir: Path = METADATA_DIR) -> Collection:
    """A named dataset's collection; its images are under `datasets_dir / name`."""
    try:
        spec = DATASETS[name]
    except KeyError:
        raise UsageError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}") from None
    root = datasets_dir / name
    listing = spec.read_items(root, metadata_dir)
    return Collection(name, root.resolve(), listing.items, spec.conditions, listing.unreadable)


def open_folder(folder: Path) -> Collection:
    """Any folder of images, unlabelled, under any free-text condition. A folder without
    images is an empty collection: its indexes sync to empty (a new index refuses it, see
    indexing.run)."""
    root = folder.resolve()
    names, unreadable = scan_folder(root)
    items = [Item(name) for name in names]
    return Collection(folder_collection_name(folder), root, items, {}, unreadable)


@dataclass(frozen=True)
class LabelSource:
    """A collection's labels as they are now: from its label table, or from its paths."""

    table: Mapping[str, dict[str, str]] | None = None
    from_path: PathLabeller | None = None

    def labels(self, path: str) -> dict[str, str] | None:
        """An image's labels; None when the label table no longer lists it."""
        if self.from_path is not None:
            return self.from_path(path)
        return None if self.table is None else self.table.get(path)


def current_labels(name: str, root: Path, metadata_dir: Path = METADATA_DIR) -> LabelSource | None:
    """The labels of collection `name` (images under `root`) as its label table says now;
    None for a collection without labels (an image folder). Read without the images."""
    spec = DATASETS.get(name)
    if spec is None:
        return None
    if spec.path_labels is not None:
        return LabelSource(from_path=spec.path_labels)
    if spec.label_table is None:
        return None
    return LabelSource(table=spec.label_table(root, metadata_dir))


def folder_collection_name(folder: Path) -> str:
    """The folder's name and a hash of its absolute path: two folders never share indexes."""
    root = folder.resolve()
    digest = hashlib.sha256(name_bytes(str(root))).hexdigest()[:8]
    return f"{slug(root.name)}-{digest}"


def slug(text: str, max_length: int = 60) -> str:
    """A file-name-safe form of `text`, with a hash when anything had to be changed."""
    wanted = text.replace("/", "--")
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", wanted).strip("-.")
    if cleaned == wanted and len(cleaned) <= max_length:
        return cleaned
    return hashed_slug(text, max_length)


def hashed_slug(text: str, max_length: int = 60) -> str:
    """`text` made file-safe, then a hash of the whole text: `object-color-1a2b3c4d`."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text.replace("/", "--")).strip("-.")
    digest = hashlib.sha256(name_bytes(text)).hexdigest()[:8]
    return f"{cleaned[:max_length]}-{digest}"
