"""Image files of every awkward kind a user's folder can hold, written by one function."""

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# file name -> True if indexing should convert and keep it, False if it should skip it.
EXPECTED_KEPT = {
    "zero-bytes.jpg": False,
    "truncated.jpg": False,
    "truncated.png": False,
    "not-an-image.jpg": False,
    "bomb.png": False,
    "one-pixel.png": True,
    "huge-12000x8000.jpg": True,
    "gray.png": True,
    "palette.png": True,
    "rgba.png": True,
    "cmyk.jpg": True,
    "sixteen-bit.png": True,
    "exif-rotated.jpg": True,
    "animated.gif": True,
    "photo.webp": True,
    "plain.png": True,
    # Decodes, but Qwen-VL's processor refuses aspect ratios over 200: skipped at embedding.
    "sliver-1x400.png": False,
}


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_bad_images(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)

    def noise(height: int, width: int, channels: int = 3) -> Image.Image:
        shape = (height, width, channels) if channels > 1 else (height, width)
        return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))

    (folder / "zero-bytes.jpg").write_bytes(b"")
    noise(64, 64).save(folder / "whole.jpg")
    data = (folder / "whole.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "whole.jpg").unlink()
    noise(64, 64).save(folder / "whole.png")
    data = (folder / "whole.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "whole.png").unlink()
    (folder / "not-an-image.jpg").write_text("this is not an image")
    header = struct.pack(">IIBBBBB", 60_000, 60_000, 8, 2, 0, 0, 0)
    (folder / "bomb.png").write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )
    noise(1, 1).save(folder / "one-pixel.png")
    Image.new("RGB", (12000, 8000), (200, 40, 40)).save(folder / "huge-12000x8000.jpg", quality=40)
    noise(64, 64, 1).save(folder / "gray.png")
    noise(64, 64).convert("P").save(folder / "palette.png")
    noise(64, 64, 4).save(folder / "rgba.png")
    noise(64, 64).convert("CMYK").save(folder / "cmyk.jpg")
    levels = rng.integers(0, 65536, (64, 64), dtype=np.uint16)
    Image.fromarray(levels).save(folder / "sixteen-bit.png")
    rotated = noise(40, 80)
    exif = rotated.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    rotated.save(folder / "exif-rotated.jpg", exif=exif)
    frames = [noise(48, 48) for _ in range(3)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:])
    noise(64, 64).save(folder / "photo.webp")
    noise(64, 64).save(folder / "plain.png")
    noise(1, 400).save(folder / "sliver-1x400.png")


def tiny_gif(width: int, height: int, seed: int = 0) -> bytes:
    """35 bytes: a width x height screen holding one 1x1 frame; it decodes to the whole
    screen. `seed` makes each file distinct."""
    palette = bytes([seed & 255, seed >> 8 & 255, seed >> 16 & 255, 255, 255, 255])
    screen = struct.pack("<HHBBB", width, height, 0x80, 0, 0)
    frame = b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00;"
    return b"GIF89a" + screen + palette + frame
