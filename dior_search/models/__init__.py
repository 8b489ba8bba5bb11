"""Models: the embedder interface, its settings, and the model families behind it.

`load_embedder(settings)` builds the embedder a settings object describes: DIOR from a
vision-language model, or a baseline (CLIP, generative, InDiReCT). Heavy modules load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dior_search.models.settings import (
    ClipSettings,
    DiorSettings,
    GenerativeSettings,
    IndirectSettings,
)

if TYPE_CHECKING:
    from dior_search.models.embedder import Embedder
    from dior_search.models.settings import ModelSettings


def load_embedder(settings: ModelSettings) -> Embedder:
    """The embedder these settings describe, its model loaded."""
    if isinstance(settings, DiorSettings):
        from dior_search.models.dior import DiorEmbedder

        return DiorEmbedder(settings)
    if isinstance(settings, ClipSettings):
        from dior_search.models.clip import ClipEmbedder

        return ClipEmbedder(settings)
    if isinstance(settings, IndirectSettings):
        from dior_search.models.indirect import IndirectEmbedder

        return IndirectEmbedder(settings)
    if isinstance(settings, GenerativeSettings):
        from dior_search.models.generative import GenerativeEmbedder

        return GenerativeEmbedder(settings)
    raise TypeError(f"no embedder for {type(settings).__name__}")
