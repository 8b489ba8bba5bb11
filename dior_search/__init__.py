"""dior-search: conditional image search with DIOR embeddings from vision-language models.

The package reads as its pipeline, each layer importing only the layers below it:
data -> models -> store -> indexing / search -> evaluation / serve -> cli
(see docs/architecture.md).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dior-search")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
