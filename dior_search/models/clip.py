"""The CLIP baseline: a CLIP-style model's image embedding, the same for every condition."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from dior_search.data.images import fit_within
from dior_search.errors import ModelError, first_line
from dior_search.models.embedder import EmbedderDescription, ProgressCallback
from dior_search.models.families import processor_size_policy
from dior_search.models.loading import (
    describe_loaded,
    load_model_config,
    resolve_device,
    resolve_dtype,
)
from dior_search.models.settings import ClipSettings


class ClipEmbedder:
    """Image embeddings (vision tower + projection) of any CLIP-style Hub id or local path.

    CLIP takes no condition: each image is embedded once and its vector repeated for every
    condition, so it scores as the condition-blind baseline.
    """

    def __init__(self, settings: ClipSettings) -> None:
        from transformers import AutoImageProcessor, AutoModel
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES as DUAL_ENCODERS,
        )

        self.settings = settings
        self.device = resolve_device(settings.device)
        self.config = load_model_config(settings.model, settings.revision, False)
        self.dtype = resolve_dtype(settings.dtype, self.device, self.config)
        if self.config.model_type not in DUAL_ENCODERS:
            raise ModelError(
                f"{settings.model!r} is a {self.config.model_type} model, not an image-text "
                f"dual encoder; valid model types: {', '.join(DUAL_ENCODERS)}"
            )
        try:
            # The PIL image processor: the torchvision-backed one is not importable everywhere.
            self.image_processor = AutoImageProcessor.from_pretrained(
                settings.model, revision=settings.revision, backend="pil"
            )
            self.model = AutoModel.from_pretrained(
                settings.model, revision=settings.revision, dtype=self.dtype
            )
        except (OSError, ValueError) as exc:
            raise ModelError(
                f"cannot load CLIP model {settings.model!r}: {first_line(exc)}"
            ) from None
        self.model.to(self.device).eval()
        projection = getattr(self.config, "projection_dim", None)
        self._dim: int = projection or self.config.vision_config.hidden_size

    @property
    def dim(self) -> int:
        return self._dim

    def describe(self) -> EmbedderDescription:
        """What makes these embeddings, for the index manifest."""
        policy = {"max_side": self.settings.max_side, **processor_size_policy(self.image_processor)}
        return describe_loaded(
            self.settings,
            self.settings.model,
            self.config,
            self.dtype,
            self.dim,
            image_size_policy=policy,
        )

    def check_size(self, width: int, height: int) -> None:
        """CLIP's processor resizes and crops any image to its square input: none is refused."""

    def embed(
        self,
        images: Sequence[Image.Image],
        conditions: Sequence[str | None],
        on_progress: ProgressCallback | None = None,
    ) -> np.ndarray:
        """Float32 (len(images), len(conditions), dim): one vector per image, repeated."""
        out = np.empty((len(images), self.dim), dtype=np.float32)
        step = self.settings.batch_size
        for start in range(0, len(images), step):
            chunk = images[start : start + step]
            out[start : start + len(chunk)] = self.embed_images(chunk)
            if on_progress is not None:
                on_progress(len(chunk) * len(conditions))
        return np.repeat(out[:, None], len(conditions), axis=1)

    @torch.inference_mode()
    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """The projected image embedding of each image; float32 (len(images), dim)."""
        fitted = [fit_within(image, self.settings.max_side) for image in images]
        pixels = self.image_processor(images=fitted, return_tensors="pt")["pixel_values"]
        features = self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype))
        # transformers 5 returns model outputs holding the projection; older versions a tensor.
        if not isinstance(features, torch.Tensor):
            features = features.pooler_output
        vectors: np.ndarray = features.float().cpu().numpy()
        return vectors
