"""Reading image files into RGB PIL images, the one form every embedder takes.

Every decode (the CLI's and the server's) goes the same way: the header is read first and the
image refused if it declares more pixels than the cap; what decoding will cost in memory is
estimated from the header and reserved in the process's decode budget (`decode_budget`);
the image is then decoded, turned upright and RGB, and shrunk to the embedder's `max_side`
before the reservation is given back, so only the shrunk image outlives the decode.
"""

from __future__ import annotations

import io
import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from dior_search.data.decode_budget import DecodeBudget, OverBudget, process_budget
from dior_search.errors import DiorError, InputError, first_line

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
# The formats read (Pillow's names; its JPEG reader also reads MPO, the JPEG of many phone
# cameras). Others are refused before any plugin of theirs parses the file.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
# Why a file is refused, from its first bytes (data.reading) or by the decoder.
NOT_AN_IMAGE = f"not an image, or not one of {', '.join(FORMATS)}"
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
ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
# Bytes per pixel of Pillow's storage by mode (RGB takes 4, as RGBX); modes not named take 4.
STORAGE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
# Bytes per pixel a format's decoder holds besides the image: WebP's two animation canvases, the
# frame it hands over and its own planes; TIFF's whole-image buffer for the layouts libtiff
# reads at once. A progressive JPEG's coefficients are counted from its header (`jpeg_bytes`).
DECODER_BYTES = {"WEBP": 16, "TIFF": 4}
# Allocator slack, Pillow's block rounding and the decoder's fixed state.
DECODE_SLACK = 4 << 20
TRANSPOSING = frozenset(range(2, 9))


class ImageReadError(InputError):
    """An image file that cannot be decoded; `reason` says why, without the file name."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"cannot read image {name}: {reason}")
        self.reason = reason


class ImageTooLarge(ImageReadError):
    """An image over the pixel cap or the decode budget, refused before decoding."""

    http_status = 413


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says about decoding it: format, mode, size and orientation.

    Only the first frame of an animated image (GIF, WebP, TIFF pages) is ever decoded, so the
    pixels that decoding costs are one frame's: `width x height`.
    """

    format: str
    mode: str
    width: int
    height: int
    # EXIF orientation (1: upright; 2..8: decoding transposes the pixels once more).
    orientation: int = 1
    transparent: bool = False
    # Bytes per pixel the decoder holds besides the image (DECODER_BYTES, or a JPEG's own).
    decoder_bytes: float = 0.0

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def upright_size(self) -> tuple[int, int]:
        turned = self.orientation in (5, 6, 7, 8)
        return (self.height, self.width) if turned else (self.width, self.height)

    def decode_bytes(self, max_side: int | None = None) -> int:
        """An upper bound of the memory `decode_image` holds at once for this image."""
        native = STORAGE_BYTES.get(self.mode, 4)
        per_pixel = native + self.decoder_bytes
        if self.orientation in TRANSPOSING:
            per_pixel += native  # the transposed copy, while the decoded one is still held
        if self.mode in SIXTEEN_BIT_MODES:
            per_pixel += 4 + 1 + 1 + 4  # levels array, 8-bit copy, L image, RGB image
        elif self.mode in ALPHA_MODES or self.transparent:
            per_pixel += 4 + 4 + 1  # RGBA copy, white RGB canvas, the alpha band
        elif self.mode != "RGB":
            per_pixel += 4  # the RGB image
        width, height = self.upright_size
        out_width, out_height = fit_size(width, height, max_side)
        # Lanczos shrinks in two passes through an intermediate of out_width x height.
        shrink = 4 * (out_width * height + out_width * out_height)
        return int(self.pixels * per_pixel) + shrink + DECODE_SLACK


def fit_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """The size `fit_within` shrinks a `width` x `height` image to."""
    if max_side is None or max(width, height) <= max_side:
        return width, height
    if width > height:
        size = (max_side, int(max_side * height / width))
    else:
        size = (int(max_side * width / height), max_side)
    return max(1, size[0]), max(1, size[1])


def fit_within(image: Image.Image, max_side: int | None) -> Image.Image:
    """`image` shrunk (Lanczos) to a longer side of at most `max_side`, as the paper's code does."""
    size = fit_size(image.width, image.height, max_side)
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS)


def webp_header(head: bytes) -> ImageHeader | None:
    """A WebP file's header from its first 30 bytes (None: not a WebP file).

    Pillow's WebP reader allocates the canvas as it opens the file, so the size must be known
    before: it is read here from the first chunk (VP8X, VP8L or VP8), with whether the image
    has alpha and (VP8X) EXIF, which may turn it.
    """
    if head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return None
    chunk, decoder = head[12:16], DECODER_BYTES["WEBP"]
    if chunk == b"VP8X" and len(head) >= 30:
        flags = head[20]
        width = int.from_bytes(head[24:27], "little") + 1
        height = int.from_bytes(head[27:30], "little") + 1
        mode = "RGBA" if flags & 0x10 else "RGB"
        orientation = 6 if flags & 0x08 else 1  # EXIF present: assume it turns the image
        return ImageHeader("WEBP", mode, width, height, orientation, decoder_bytes=decoder)
    if chunk == b"VP8L" and len(head) >= 25 and head[20] == 0x2F:
        bits = struct.unpack("<I", head[21:25])[0]
        mode = "RGBA" if bits >> 28 & 1 else "RGB"
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        return ImageHeader("WEBP", mode, width, height, decoder_bytes=decoder)
    if chunk == b"VP8 " and len(head) >= 30 and head[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", head[26:30])
        return ImageHeader("WEBP", "RGB", width & 0x3FFF, height & 0x3FFF, decoder_bytes=decoder)
    raise ValueError("a WebP file whose first chunk gives no canvas size")


def jpeg_bytes(opened: Image.Image) -> float:
    """Bytes per pixel a progressive JPEG's decoder keeps: every component's coefficients,
    2 bytes each, at its own sampling (0 for a baseline JPEG, decoded row by row)."""
    if not opened.info.get("progressive"):
        return 0.0
    sampling = [(h, v) for _, h, v, _ in getattr(opened, "layer", [])] or [(1, 1)] * 4
    most = max(h for h, _ in sampling) * max(v for _, v in sampling)
    return float(sum(2.0 * h * v / most for h, v in sampling)) + 1.0  # + block-row rounding


def _head(source: bytes | Path, size: int) -> bytes:
    if isinstance(source, bytes):
        return source[:size]
    with source.open("rb") as handle:
        return handle.read(size)


def _open(source: bytes | Path) -> Image.Image:
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    return Image.open(fp, formats=FORMATS)


def exif_of(opened: Image.Image) -> Image.Exif:
    """An opened image's EXIF, read without decoding it: Pillow's PNG reader decodes the
    whole image to look for an EXIF chunk after the pixels (a PNG declaring 2^31 x 2^31
    pixels was a MemoryError, and any large one a decode outside the budget); only one
    before them is read here."""
    if opened.format == "PNG":
        return Image.Image.getexif(opened)
    return opened.getexif()


def read_header(source: bytes | Path, name: str) -> ImageHeader:
    """The header of an image file or its bytes; ImageReadError if it is not a readable image."""
    try:
        webp = webp_header(_head(source, 30))
        if webp is not None:
            return webp
        with _open(source) as opened:
            orientation = exif_of(opened).get(ExifTags.Base.Orientation, 1)
            kind = str(opened.format)
            is_jpeg = kind in ("JPEG", "MPO")
            return ImageHeader(
                format=kind,
                mode=opened.mode,
                width=opened.width,
                height=opened.height,
                orientation=orientation if isinstance(orientation, int) else 1,
                transparent="transparency" in opened.info,
                decoder_bytes=jpeg_bytes(opened) if is_jpeg else DECODER_BYTES.get(kind, 0.0),
            )
    except DiorError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(name, NOT_AN_IMAGE) from None
    except Exception as exc:  # a decoder's parser meets hostile bytes: any error is the file's
        raise ImageReadError(name, first_line(exc)) from None


def check_pixels(header: ImageHeader, max_pixels: int, name: str) -> None:
    """Refuse an image that declares more than `max_pixels` pixels (one frame)."""
    if header.pixels > max_pixels:
        raise ImageTooLarge(
            name,
            f"{header.width}x{header.height} = {header.pixels} pixels is over the limit of "
            f"{max_pixels} pixels",
        )


def decode_image(
    source: bytes | Path,
    name: str,
    *,
    max_side: int | None = None,
    max_pixels: int = PIXEL_CAP,
    budget: DecodeBudget | None = None,
    deadline: float | None = None,
) -> Image.Image:
    """Decode an image file or its bytes to upright RGB shrunk to `max_side` (None: full size).

    The header is checked against `max_pixels` and the decode's memory reserved in `budget`
    (the process's by default, waiting until `deadline`) before any pixel is decoded.
    InputError naming `name` if it cannot be read or is too large.
    """
    if isinstance(source, Path):
        # Read once: the bytes decoded are the bytes whose header was checked.
        try:
            source = source.read_bytes()
        except OSError as exc:
            raise ImageReadError(name, exc.strerror or str(exc)) from None
    header = read_header(source, name)
    check_pixels(header, max_pixels, name)
    budget = budget or process_budget()
    try:
        with budget.reserve(header.decode_bytes(max_side), deadline):
            return fit_within(_decode(source), max_side)
    except OverBudget as exc:
        raise ImageTooLarge(name, str(exc)) from None
    except DiorError:
        raise
    except Exception as exc:  # truncated data, a decoder's own refusal: the file's fault
        raise ImageReadError(name, first_line(exc) or type(exc).__name__) from None


def _decode(source: bytes | Path) -> Image.Image:
    with _open(source) as opened:
        opened.load()
        if opened.getexif().get(ExifTags.Base.Orientation, 1) in TRANSPOSING:
            ImageOps.exif_transpose(opened, in_place=True)
        return to_rgb(opened)


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` as RGB (itself if it is); transparent pixels are laid on white, as a viewer
    shows them."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if image.mode in SIXTEEN_BIT_MODES:
        # PIL clips 16-bit values to 8 bits when converting; scale them instead.
        levels = np.asarray(image)
        if levels.dtype != np.uint16:
            levels = levels.clip(0, 65535)
        eight_bit = (levels >> 8).astype(np.uint8)
        del levels
        return Image.fromarray(eight_bit).convert("RGB")
    return image.convert("RGB")


def load_image(path: Path, max_side: int | None = None) -> Image.Image:
    """Open `path` as upright RGB (shrunk to `max_side`); InputError if missing or unreadable."""
    if not path.is_file():
        raise InputError(f"image not found: {path}")
    return decode_image(path, str(path), max_side=max_side)


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
