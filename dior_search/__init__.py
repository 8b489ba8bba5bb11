"""dior-search: conditional image search with DIOR embeddings from vision-language models.

The package reads as its pipeline, each layer importing only the layers below it:
data -> models -> store -> indexing / search -> evaluation / serve -> cli
(see docs/architecture.md).
"""


def __getattr__(name: str) -> str:
    # Looked up on first use, not on import: `dior-search` handles Ctrl+C from its first
    # milliseconds, and importing the package must not delay that.
    if name != "__version__":
        raise AttributeError(f"module 'dior_search' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dior-search")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0"
