"""Reading image files into RGB PIL images, the one form every embedder takes."""

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dior_search.errors import InputError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
# Files declaring more pixels are refused from their header, before decoding (decompression
# bombs); 12000 x 8000 photos still decode. This check replaces PIL's own, which would warn
# from 89 megapixels on and refuse only from 179.
PIXEL_CAP = 150_000_000
Image.MAX_IMAGE_PIXELS = None
# No supported image file is larger (150 megapixels of uncompressed 16-bit RGB is 900 MB): a
# larger file is refused from its size, never read into memory.
MAX_FILE_BYTES = 1 << 30
# The first bytes of each format the suffixes above name: a file is recognised by these,
# whatever its name.
MAGIC_PREFIXES = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",  # TIFF, little- and big-endian, and BigTIFF
    b"MM\x00*",
    b"II+\x00",
    b"MM\x00+",
)
SNIFF_BYTES = 16
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


class ImageReadError(InputError):
    """An image file that cannot be decoded; `reason` says why, without the file name."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"cannot read image {name}: {reason}")
        self.reason = reason


def load_image(path: Path) -> Image.Image:
    """Open `path` as an RGB image with its EXIF orientation applied; InputError if unreadable."""
    if not path.is_file():
        raise InputError(f"image not found: {path}")
    return decode_image(path, str(path))


def decode_image(source: Path | IO[bytes], name: str) -> Image.Image:
    """Decode an image file or buffer to upright RGB; InputError naming `name` if it fails."""
    try:
        with Image.open(source) as opened:
            width, height = opened.size
            if width * height > PIXEL_CAP:
                cap = PIXEL_CAP // 1_000_000
                raise ImageReadError(name, f"{width}x{height} is over the {cap}-megapixel cap")
            upright = ImageOps.exif_transpose(opened)
            return to_rgb(upright)
    except UnidentifiedImageError:
        raise ImageReadError(name, "not an image, or a format Pillow cannot read") from None
    except (OSError, ValueError) as exc:
        raise ImageReadError(name, str(exc) or type(exc).__name__) from None


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB copy of `image`; transparent pixels are laid on white, as a viewer shows them."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if image.mode in SIXTEEN_BIT_MODES:
        # PIL clips 16-bit values to 8 bits when converting; scale them instead.
        levels = np.asarray(image, dtype=np.int64).clip(0, 65535) >> 8
        return Image.fromarray(levels.astype(np.uint8), mode="L").convert("RGB")
    return image.convert("RGB")


def fit_within(image: Image.Image, max_side: int | None) -> Image.Image:
    """`image` shrunk (Lanczos) to a longer side of at most `max_side`, as the paper's code does."""
    width, height = image.size
    if max_side is None or max(width, height) <= max_side:
        return image
    if width > height:
        size = (max_side, int(max_side * height / width))
    else:
        size = (int(max_side * width / height), max_side)
    return image.resize((max(1, size[0]), max(1, size[1])), Image.Resampling.LANCZOS)


def looks_like_image(head: bytes) -> bool:
    """Whether a file's first bytes are those of a JPEG, PNG, GIF, BMP, TIFF or WebP file."""
    is_webp = head[:4] == b"RIFF" and head[8:12] == b"WEBP"
    return is_webp or any(head.startswith(prefix) for prefix in MAGIC_PREFIXES)


def os_reason(exc: OSError) -> str:
    """What an OSError says went wrong (the errno's meaning), without the file name."""
    return exc.strerror or str(exc) or type(exc).__name__


@dataclass(frozen=True)
class FolderScan:
    """A folder's image files, and every file or folder under it that could not be read."""

    images: list[Path]
    unreadable: list[tuple[Path, str]] = field(default_factory=list)


def scan_images(folder: Path) -> FolderScan:
    """Image files under `folder` (recursively, symbolic links to folders not followed),
    sorted: files with an image suffix, and files of any other name whose first bytes are an
    image's. Sub-folders and files that cannot be read are listed with the reason."""
    if not folder.is_dir():
        raise InputError(f"image folder not found: {folder}")
    images: list[Path] = []
    unreadable: list[tuple[Path, str]] = []

    def record(exc: OSError) -> None:
        unreadable.append((Path(exc.filename or folder), f"cannot read folder: {os_reason(exc)}"))

    for top, folders, names in os.walk(folder, onerror=record):
        folders.sort()
        for name in names:
            path = Path(top) / name
            problem = candidate_problem(path)
            if problem is None:
                images.append(path)
            elif problem:
                unreadable.append((path, problem))
    if unreadable and unreadable[0][0] == folder:
        raise InputError(f"cannot read image folder {folder}: {unreadable[0][1]}")
    return FolderScan(sorted(images), sorted(unreadable))


def candidate_problem(path: Path) -> str | None:
    """None for a file to index; why it cannot be, for an image that cannot be read; "" for
    a file that is not an image (left out without a word)."""
    named_image = path.suffix.lower() in IMAGE_SUFFIXES
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            # FIFOs, sockets and devices are never opened: reading one could block forever.
            return "not a regular file" if named_image else ""
        if named_image:
            return None  # read (and refused if it is no image) when the run reaches it
        with path.open("rb") as handle:
            head = handle.read(SNIFF_BYTES)
    except OSError as exc:
        return f"cannot read: {os_reason(exc)}"
    return None if looks_like_image(head) else ""


def list_images(folder: Path) -> list[Path]:
    """Image files under `folder` (see `scan_images`), sorted."""
    return scan_images(folder).images
