"""Reading image files into RGB PIL images, the one form every embedder takes."""

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


def list_images(folder: Path) -> list[Path]:
    """Image files under `folder` (recursively), sorted, by suffix."""
    if not folder.is_dir():
        raise InputError(f"image folder not found: {folder}")
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
