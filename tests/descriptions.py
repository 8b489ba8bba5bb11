"""Embedder descriptions for tests that write vectors without a model."""

from dior_search.models.embedder import EmbedderDescription
from dior_search.models.prompts import build_prompt
from dior_search.models.settings import DiorSettings


def described(model: str = "m", dim: int = 16) -> EmbedderDescription:
    """What a manifest records for vectors made up by a test (no model loaded)."""
    return EmbedderDescription(
        settings=DiorSettings(model=model),
        model_type="test",
        commit=None,
        weights_fingerprint="test",
        dtype="float32",
        dim=dim,
    )


def prompt_of(text: str | None) -> str:
    """The prompt a manifest of `described()` vectors records for a condition text."""
    return build_prompt("describe", text)


def made_up_manifest(dim: int = 16, shard_size: int = 10, root: str = "/data", **fields):
    """The manifest of an index of made-up vectors: collection "c", condition "color"."""
    from dior_search.store.manifest import Manifest

    return Manifest(
        collection={"name": "c", "root": root},
        condition={"name": "color", "text": "color"},
        prompt=prompt_of("color"),
        embedder=described("m", dim),
        dim=dim,
        shard_size=shard_size,
        **fields,
    )
