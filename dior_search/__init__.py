"""dior-search: conditional image search with DIOR embeddings from vision-language models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dior-search")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
