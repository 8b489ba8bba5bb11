"""Several hidden layers of one DIOR forward pass, each as an embedder of its own.

`DiorEmbedder(settings, layers=[-1, -8])` reads every listed layer from each forward pass.
`LayerView` presents one of those layers as an ordinary embedder (its description names its
layer, so its vectors go to that layer's index); `LayerStack` is what an indexing job runs
for all of them at once: given the conditions once per layer, it runs the model once and
returns every layer's vectors side by side.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from dior_search.models.answers import Answer
from dior_search.models.dior import DiorEmbedder, one_layer
from dior_search.models.embedder import EmbedderDescription, ProgressCallback


class LayerView:
    """One layer of a several-layer DIOR embedder, as an embedder."""

    def __init__(self, embedder: DiorEmbedder, layer: int) -> None:
        self.embedder = embedder
        self.layer = layer
        self.position = embedder.layers.index(layer)

    @property
    def dim(self) -> int:
        return self.embedder.dim

    def check_size(self, width: int, height: int) -> None:
        self.embedder.check_size(width, height)

    def describe(self) -> EmbedderDescription:
        return self.embedder.describe(self.layer)

    def embed(
        self,
        images: Sequence[Image.Image],
        conditions: Sequence[str | None],
        on_progress: ProgressCallback | None = None,
    ) -> np.ndarray:
        layers = self.embedder.embed_layers(images, conditions, on_progress)
        return np.ascontiguousarray(layers[:, :, self.position])

    def embed_with_answers(
        self,
        images: Sequence[Image.Image],
        conditions: Sequence[str | None],
        on_progress: ProgressCallback | None = None,
    ) -> tuple[np.ndarray, list[list[Answer | None]]]:
        """`embed`, and the answers where this layer is the last (else None)."""
        found = self.embedder.embed_layers_with_answers(images, conditions, on_progress)
        return one_layer(self.position, self.embedder.answer_position, *found)


class LayerStack:
    """All layers of a several-layer DIOR embedder at once, for one indexing job whose targets
    are each layer's conditions in turn (layer-major)."""

    def __init__(self, embedder: DiorEmbedder) -> None:
        self.embedder = embedder
        self.views = [LayerView(embedder, layer) for layer in embedder.layers]

    @property
    def dim(self) -> int:
        return self.embedder.dim

    def check_size(self, width: int, height: int) -> None:
        self.embedder.check_size(width, height)

    def describe(self) -> EmbedderDescription:
        return self.views[0].describe()

    def embed(
        self,
        images: Sequence[Image.Image],
        conditions: Sequence[str | None],
        on_progress: ProgressCallback | None = None,
    ) -> np.ndarray:
        """`conditions` are the same conditions once per layer; float32
        (n_images, n_layers * n_conditions, dim), layer-major as the conditions."""
        layers = self.embedder.embed_layers(images, self._once(conditions), on_progress)
        return self._stacked(layers)

    def embed_with_answers(
        self,
        images: Sequence[Image.Image],
        conditions: Sequence[str | None],
        on_progress: ProgressCallback | None = None,
    ) -> tuple[np.ndarray, list[list[Answer | None]]]:
        """`embed`, and the answers of the last layer's conditions (None for the others)."""
        once = self._once(conditions)
        layers, answers = self.embedder.embed_layers_with_answers(images, once, on_progress)
        last = self.embedder.answer_position
        stacked: list[list[Answer | None]] = [
            [
                row[column] if position == last else None
                for position in range(len(self.views))
                for column in range(len(once))
            ]
            for row in answers
        ]
        return self._stacked(layers), stacked

    def _once(self, conditions: Sequence[str | None]) -> list[str | None]:
        """The conditions of one layer, checked to repeat once per layer."""
        n_layers = len(self.views)
        per_layer = len(conditions) // n_layers
        once = list(conditions[:per_layer])
        if per_layer * n_layers != len(conditions) or list(conditions) != once * n_layers:
            raise ValueError("a layer stack embeds the same conditions once per layer")
        return once

    def _stacked(self, layers: np.ndarray) -> np.ndarray:
        """(n_images, n_conditions, n_layers, dim) as (n_images, n_layers * n_conditions, dim)."""
        n_images, n_conditions = layers.shape[:2]
        stacked = layers.transpose(0, 2, 1, 3).reshape(
            n_images, n_conditions * len(self.views), self.dim
        )
        return np.ascontiguousarray(stacked)
