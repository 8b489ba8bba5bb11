"""`ServeSettings`: which indexes a server serves with which model, and its limits on requests.

The limits and their checks live here only: `dior-search serve` builds the settings from its
options with `ServeSettings.with_limit_options` (the units its options take: MiB, megapixels,
seconds), a Python caller builds them directly (bytes, pixels); either way the same checks run,
and a message names the `serve` option that sets the limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from dior_search import defaults
from dior_search.errors import UsageError, number_text

if TYPE_CHECKING:
    from dior_search.search.request import SearchOptions

MIB = 1024 * 1024
MEGAPIXEL = 1_000_000
# The smallest decode budget a server runs with: one modest image at a time.
MIN_DECODE_BYTES = MIB

# Each limit a `serve` option sets: settings field -> (option, what one unit of it holds).
LIMIT_OPTIONS: dict[str, tuple[str, int]] = {
    "max_upload_bytes": ("--max-upload-mb", MIB),
    "max_pixels": ("--max-megapixels", MEGAPIXEL),
    "max_decode_bytes": ("--max-decode-mb", MIB),
    "timeout_s": ("--timeout", 1),
    "max_k": ("--max-k", 1),
}
# The whole-number limits, each at least 1 of what it counts.
COUNTED = {
    "max_upload_bytes": "byte",
    "max_pixels": "pixel",
    "max_k": "result",
    "thumbnail_size": "pixel",
}


@dataclass(frozen=True)
class ServeSettings:
    """Which indexes are served with which model, and the limits on requests."""

    indexes_dir: Path = defaults.DEFAULT_INDEXES_DIR
    # `--store`: a database store's URI (None: the index folders under indexes_dir).
    store: str | None = None
    model: str | None = None
    collection: str | None = None
    device: str = "auto"
    dtype: str | None = None
    trust_remote_code: bool = False
    max_upload_bytes: int = defaults.MAX_UPLOAD_BYTES
    max_pixels: int = defaults.MAX_PIXELS
    timeout_s: float = defaults.REQUEST_TIMEOUT_S
    max_k: int = defaults.MAX_SERVED_RESULTS
    # Bytes that the server's decodes in flight (uploads, thumbnails) may hold together
    # (None: the process's default budget, sized for the machine).
    max_decode_bytes: int | None = None
    upload_cache_entries: int = 64
    upload_cache_bytes: int = 512 * MIB
    thumbnail_size: int = 256
    thumbnail_cache_entries: int = 4096
    # A 256 px JPEG is 10-20 KB: 64 MiB holds several thousand.
    thumbnail_cache_bytes: int = 64 * MIB

    def __post_init__(self) -> None:
        for name, counted in COUNTED.items():
            if getattr(self, name) < 1:
                raise UsageError(
                    f"{limit_name(name)} must allow at least 1 {counted}, not {getattr(self, name)}"
                )
        if self.max_decode_bytes is not None and self.max_decode_bytes < MIN_DECODE_BYTES:
            raise UsageError(f"{limit_name('max_decode_bytes')} must be at least 1 MiB")
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise UsageError(
                f"{limit_name('timeout_s')} must be a positive number, "
                f"not {number_text(self.timeout_s)}"
            )

    def with_limit_options(
        self,
        *,
        max_upload_mb: float,
        max_megapixels: float,
        timeout: float,
        max_k: int,
        max_decode_mb: float | None,
    ) -> ServeSettings:
        """These settings with the limits `serve`'s options give in their own units (MiB,
        megapixels, seconds): UsageError naming the option unless each is a positive number."""
        upload = option_value("max_upload_bytes", max_upload_mb)
        pixels = option_value("max_pixels", max_megapixels)
        decode = None if max_decode_mb is None else option_value("max_decode_bytes", max_decode_mb)
        return replace(
            self,
            max_upload_bytes=int(upload),
            max_pixels=int(pixels),
            timeout_s=option_value("timeout_s", timeout),
            max_k=max_k,
            max_decode_bytes=None if decode is None else int(decode),
        )

    def search_options(self) -> SearchOptions:
        # Imported here: `serve` checks its options before numpy and the search code load.
        from dior_search.search.request import SearchOptions

        return SearchOptions(
            device=self.device,
            dtype=self.dtype,
            trust_remote_code=self.trust_remote_code,
            max_k=self.max_k,
        )


def limit_name(field: str) -> str:
    """How a message names a limit: its `serve` option where one sets it (`--max-k`), the
    field's words otherwise (`thumbnail size`)."""
    return LIMIT_OPTIONS[field][0] if field in LIMIT_OPTIONS else field.replace("_", " ")


def option_value(field: str, given: float) -> float:
    """A limit option's value `given` in the field's own unit (bytes, pixels, seconds);
    UsageError naming the option unless `given` is a positive number."""
    option, unit = LIMIT_OPTIONS[field]
    if not (math.isfinite(given) and given > 0):
        raise UsageError(f"{option} must be a positive number, not {number_text(given)}")
    return given * unit
