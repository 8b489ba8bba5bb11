"""The embedding methods, one table: each method's settings type, how the user's options make
them, and the embedder that loads them.

Every dispatch on a method reads `METHODS`: a manifest's settings rebuilt (`settings_class`),
a verb's options turned into a method's settings, and `load_embedder`. The embedders' modules
(torch, transformers) are imported only when one is loaded.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dior_search.errors import UsageError
from dior_search.models.settings import (
    ClipSettings,
    DiorSettings,
    EmbedderOptions,
    GenerativeSettings,
    IndirectSettings,
    Method,
    ModelSettings,
)

if TYPE_CHECKING:
    from dior_search.models.embedder import Embedder


@dataclass(frozen=True)
class EmbeddingMethod:
    """One method: its settings type, its settings under the user's options, its embedder."""

    settings: type[ModelSettings]
    from_options: Callable[[EmbedderOptions], ModelSettings]
    # "module:Class" of the embedder, built from the settings; imported on first load.
    embedder: str

    @property
    def name(self) -> Method:
        return self.settings.method

    def load(self, settings: ModelSettings) -> Embedder:
        """The embedder of `settings` (of this method), its model loaded."""
        module, _, name = self.embedder.partition(":")
        embedder: Embedder = getattr(importlib.import_module(module), name)(settings)
        return embedder


METHODS: dict[str, EmbeddingMethod] = {
    method.name: method
    for method in (
        EmbeddingMethod(DiorSettings, EmbedderOptions.dior, "dior_search.models.dior:DiorEmbedder"),
        EmbeddingMethod(ClipSettings, EmbedderOptions.clip, "dior_search.models.clip:ClipEmbedder"),
        EmbeddingMethod(
            GenerativeSettings,
            EmbedderOptions.generative,
            "dior_search.models.generative:GenerativeEmbedder",
        ),
        EmbeddingMethod(
            IndirectSettings,
            EmbedderOptions.indirect,
            "dior_search.models.indirect:IndirectEmbedder",
        ),
    )
}


def method_named(name: str) -> EmbeddingMethod:
    """The method called `name`; UsageError, listing the valid ones, where there is none."""
    try:
        return METHODS[name]
    except KeyError:
        valid = ", ".join(METHODS)
        raise UsageError(f"unknown embedding method {name!r}; valid: {valid}") from None


def settings_for(name: str, options: EmbedderOptions) -> ModelSettings:
    """The settings of the method called `name` under the user's `options`."""
    return method_named(name).from_options(options)


def load_embedder(settings: ModelSettings) -> Embedder:
    """The embedder these settings describe, its model loaded."""
    return method_named(settings.method).load(settings)
