"""The installed dior-search version ("0.0.0" when run from a source tree never installed)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dior-search")
except PackageNotFoundError:
    __version__ = "0.0.0"
