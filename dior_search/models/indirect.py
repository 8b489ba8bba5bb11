"""The InDiReCT baseline (Kobs et al., WACV 2023), as the paper's reference repository runs it.

For each condition, CLIP's text tower embeds a list of texts about it (a template such as
"a photo of a {item} car" filled with 20 to 110 items; see data.indirect_texts), L2-normalised
(X). A projection U (components x d, initialised N(0, 0.1)) is fitted with Adam (lr 0.01) to
minimise the mean angle arccos(x . x_hat) between each text and its reconstruction
x_hat = normalise(normalise(x U^T) U), stopping after 100 steps without improvement; the best
U is kept. An image's embedding under the condition is normalise(normalise(clip_image(x)) U^T):
the image seen only in the directions in which texts about the condition differ.

U is fitted on the CPU in float32 from a fixed seed, so an index and a later run (or a resumed
one) get the same projection.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, replace

import numpy as np
import torch
from PIL import Image

from dior_search import defaults
from dior_search.data.indirect_texts import word_list
from dior_search.errors import ModelError, UsageError, first_line
from dior_search.models.clip import ClipEmbedder
from dior_search.models.embedder import EmbedderDescription, ProgressCallback
from dior_search.models.settings import ClipSettings, IndirectSettings

SEED = 0
# arccos has an infinite slope at +-1: the cosine is kept just inside.
COSINE_LIMIT = 1 - 1e-6


def normalise(vectors: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(vectors, dim=-1)


def reconstruction_angle(texts: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """Mean angle between unit rows x and x_hat = normalise(normalise(x U^T) U)."""
    reconstructed = normalise(normalise(texts @ projection.T) @ projection)
    cosines = (texts * reconstructed).sum(dim=-1).clamp(-COSINE_LIMIT, COSINE_LIMIT)
    return torch.arccos(cosines).mean()


def fit_projection(
    texts: np.ndarray,
    components: int = defaults.INDIRECT_COMPONENTS,
    *,
    seed: int = SEED,
    learning_rate: float = defaults.INDIRECT_LEARNING_RATE,
    patience: int = defaults.INDIRECT_PATIENCE,
    max_steps: int = defaults.INDIRECT_MAX_STEPS,
) -> np.ndarray:
    """U (components x d) fitted to the unit rows of `texts` (n x d); the best U seen."""
    # Gradients are needed even when called under a caller's inference mode. The matrices are
    # small: one thread, where two spend most of their time handing each tiny op over.
    with torch.inference_mode(False), torch.enable_grad(), one_thread():
        x = normalise(torch.as_tensor(texts, dtype=torch.float32))
        generator = torch.Generator().manual_seed(seed)
        projection = torch.normal(0.0, 0.1, (components, x.shape[1]), generator=generator)
        projection.requires_grad_(True)
        optimiser = torch.optim.Adam([projection], lr=learning_rate)
        best, best_projection, since_best = float("inf"), projection.detach().clone(), 0
        for _ in range(max_steps):
            optimiser.zero_grad()
            loss = reconstruction_angle(x, projection)
            if loss.item() < best:
                best, best_projection, since_best = loss.item(), projection.detach().clone(), 0
            else:
                since_best += 1
                if since_best >= patience:
                    break
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
    fitted: np.ndarray = best_projection.numpy()
    return fitted


@contextmanager
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class IndirectEmbedder:
    """InDiReCT embeddings from a CLIP-style model; one projection per condition, fitted once."""

    def __init__(self, settings: IndirectSettings) -> None:
        from transformers import AutoTokenizer

        self.settings = settings
        # CLIP with the same model settings; only `components` is InDiReCT's own.
        self.clip = ClipEmbedder(ClipSettings.from_fields(asdict(settings)))
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(
                settings.model, revision=settings.revision
            )
        except (OSError, ValueError) as exc:
            raise ModelError(
                f"cannot load the text tokenizer of {settings.model!r}: {first_line(exc)}"
            ) from None
        self.max_tokens: int = self.clip.config.text_config.max_position_embeddings
        self.projections: dict[str, np.ndarray] = {}

    @property
    def dim(self) -> int:
        return self.settings.components

    def check_size(self, width: int, height: int) -> None:
        self.clip.check_size(width, height)

    def describe(self) -> EmbedderDescription:
        """What makes these embeddings, for the index manifest."""
        return replace(self.clip.describe(), settings=self.settings, dim=self.dim)

    def embed(
        self,
        images: Sequence[Image.Image],
        conditions: Sequence[str | None],
        on_progress: ProgressCallback | None = None,
    ) -> np.ndarray:
        """Float32 (len(images), len(conditions), components)."""
        projections = [self.projection(condition) for condition in conditions]
        unit = normalise(torch.as_tensor(self.clip.embed(images, [None])[:, 0]))
        out = np.stack(
            [normalise(unit @ torch.as_tensor(u).T).numpy() for u in projections], axis=1
        )
        if on_progress is not None:
            on_progress(len(images) * len(conditions))
        return out.astype(np.float32)

    def projection(self, condition: str | None) -> np.ndarray:
        """The condition's U, fitted on first use."""
        if condition is None:
            raise UsageError("InDiReCT needs a condition: it has no unconditional embedding")
        if condition not in self.projections:
            texts = self.embed_texts(word_list(condition).texts())
            self.projections[condition] = fit_projection(texts, self.settings.components)
        return self.projections[condition]

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """CLIP's projected text embeddings; float32 (len(texts), d)."""
        tokens = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_tokens,
            return_tensors="pt",
        ).to(self.clip.device)
        features = self.clip.model.get_text_features(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        )
        # transformers 5 returns model outputs holding the projection; older versions a tensor.
        if not isinstance(features, torch.Tensor):
            features = features.pooler_output
        vectors: np.ndarray = features.float().cpu().numpy()
        return vectors
