"""Collections: where a dataset's images are, what its conditions are, how labels are read.

A spec names a dataset's conditions (short name -> the aspect phrase put into the prompt, as
in the paper) and reads its items: image paths relative to the images folder, with labels.
`--images DIR` makes an unlabelled collection of any folder, under any free-text condition.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dior_search.data.images import list_images
from dior_search.data.synthetic import CONDITIONS as SYNTHETIC_CONDITIONS
from dior_search.data.synthetic import LABELS_FILE, read_labels, write_dataset
from dior_search.errors import InputError, UsageError

# The label tables ship inside the package (the repository's top-level metadata/ links here).
METADATA_DIR = Path(__file__).resolve().parent / "metadata"
UNCONDITIONAL = "unconditional"


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

    def condition_text(self, condition: str) -> str | None:
        """The prompt phrase of a condition (a known short name, or free text as given)."""
        if condition == UNCONDITIONAL:
            return None
        return self.conditions.get(condition, condition)


ItemReader = Callable[[Path, Path], list[Item]]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    conditions: dict[str, str]
    read_items: ItemReader
    how_to_get: str


def read_table(path: Path, delimiter: str) -> list[dict[str, str]]:
    if not path.is_file():
        raise InputError(f"label table not found: {path}")
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter=delimiter))


def require_images(root: Path, name: str) -> None:
    if not root.is_dir() or not any(root.iterdir()):
        spec = DATASETS[name]
        raise InputError(f"no {name} images in {root}: {spec.how_to_get}")


def read_synthetic(root: Path, _metadata: Path) -> list[Item]:
    if not (root / LABELS_FILE).is_file():
        write_dataset(root, {"test": 400})
    return [
        Item(item.file_name, {c: item.label(c) for c in SYNTHETIC_CONDITIONS})
        for item in read_labels(root / LABELS_FILE)
        if item.split == "test"
    ]


def read_deepfashion(root: Path, metadata: Path) -> list[Item]:
    require_images(root, "deepfashion")
    rows = read_table(metadata / "deepfashion.csv", ",")
    # One-hot label strings are compared whole, as the paper does.
    return [
        Item(
            row["file_names"],
            {
                "category": row["clothing_category"].strip(),
                "texture": row["texture"].strip(),
                "fabric": row["fabric"].strip(),
                "fit": row["fit"].strip(),
            },
        )
        for row in rows
    ]


def read_movie_posters(root: Path, metadata: Path) -> list[Item]:
    require_images(root, "movie_posters")
    rows = read_table(metadata / "movie_posters.tsv", "\t")
    return [
        Item(f"{row['imdbID']}.jpg", {"genre": row["Genre"], "country": row["Country"]})
        for row in rows
    ]


def cub_species(file_name: str) -> str:
    """CUB file names are Class_Name_NNNN_NNNNNN.jpg, flat or in class folders."""
    return " ".join(Path(file_name).stem.split("_")[:-2])


def read_cub200(root: Path, _metadata: Path) -> list[Item]:
    require_images(root, "cub200")
    return [
        Item(p.relative_to(root).as_posix(), {"species": cub_species(p.name)})
        for p in list_images(root)
    ]


def read_cars196(root: Path, _metadata: Path) -> list[Item]:
    require_images(root, "cars196")
    images = list_images(root)
    flat = [p for p in images if p.parent == root]
    if flat:
        raise InputError(
            f"cars196 labels come from class folders (<model name>/<image>), but {root} has "
            f"{len(flat)} images at its top level: keep the Kaggle folder layout"
        )
    return [Item(p.relative_to(root).as_posix(), {"model": p.parent.name}) for p in images]


DATASETS: dict[str, DatasetSpec] = {
    "synthetic": DatasetSpec(
        "synthetic",
        SYNTHETIC_CONDITIONS,
        read_synthetic,
        "generated on first use",
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
    ),
    "movie_posters": DatasetSpec(
        "movie_posters",
        {"genre": "movie genre", "country": "movie's production country"},
        read_movie_posters,
        "download Movie_Poster_Dataset.zip and flatten it to {imdbID}.jpg (see README)",
    ),
    "cub200": DatasetSpec(
        "cub200",
        {"species": "bird species"},
        read_cub200,
        "download CUB_200_2011.tgz and keep classes 101-200 (see README)",
    ),
    "cars196": DatasetSpec(
        "cars196",
        {"model": "car model"},
        read_cars196,
        "download Stanford Cars from Kaggle, keeping its test/<model name>/ folders (see README)",
    ),
}


def open_dataset(name: str, datasets_dir: Path, metadata_dir: Path = METADATA_DIR) -> Collection:
    """A named dataset's collection; its images are under `datasets_dir / name`."""
    try:
        spec = DATASETS[name]
    except KeyError:
        raise UsageError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}") from None
    root = datasets_dir / name
    return Collection(name, root.resolve(), spec.read_items(root, metadata_dir), spec.conditions)


def open_folder(folder: Path) -> Collection:
    """Any folder of images, unlabelled, under any free-text condition."""
    root = folder.resolve()
    items = [Item(p.relative_to(root).as_posix()) for p in list_images(root)]
    if not items:
        raise InputError(f"no images in {folder}")
    return Collection(folder_collection_name(folder), root, items, {})


def folder_collection_name(folder: Path) -> str:
    """The folder's name and a hash of its absolute path: two folders never share indexes."""
    root = folder.resolve()
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:8]
    return f"{slug(root.name)}-{digest}"


def slug(text: str, max_length: int = 60) -> str:
    """A file-name-safe form of `text`, with a hash when anything had to be changed."""
    wanted = text.replace("/", "--")
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", wanted).strip("-.")
    if cleaned == wanted and len(cleaned) <= max_length:
        return cleaned
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{cleaned[:max_length]}-{digest}"
