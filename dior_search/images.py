"""Reading image files into RGB PIL images, the one form every embedder takes."""

from pathlib import Path
from typing import IO

from PIL import Image, ImageOps, UnidentifiedImageError

from dior_search.errors import InputError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})


def load_image(path: Path) -> Image.Image:
    """Open `path` as an RGB image with its EXIF orientation applied; InputError if unreadable."""
    if not path.is_file():
        raise InputError(f"image not found: {path}")
    return decode_image(path, str(path))


def decode_image(source: Path | IO[bytes], name: str) -> Image.Image:
    """Decode an image file or buffer to upright RGB; InputError naming `name` if it fails."""
    try:
        with Image.open(source) as opened:
            upright = ImageOps.exif_transpose(opened)
            return to_rgb(upright)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError) as exc:
        raise InputError(f"cannot read image {name}: {exc}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB copy of `image`; transparent pixels are laid on white, as a viewer shows them."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


def list_images(folder: Path) -> list[Path]:
    """Image files under `folder` (recursively), sorted, by suffix."""
    if not folder.is_dir():
        raise InputError(f"image folder not found: {folder}")
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
