"""The DIOR embedder: the last input token's hidden state of a vision-language model.

Each (image, condition) row is prompted with the chosen template in the model's chat template
(generation prompt added); nothing is generated. Rows are right-padded in a batch and read at
their own last real token, so a batched embedding equals the one-at-a-time embedding.

An image's prompts differ only in their last few tokens, so by default the shared prefix (chat
header, image, prompt text up to the condition) runs once per image with its KV cache kept, and
all condition suffixes then run as one batch against it. Layers after the chosen one are never
run, and the base model has no LM head.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from PIL import Image

from dior_search.data.images import fit_within
from dior_search.errors import ModelError, UsageError, first_line
from dior_search.models.embedder import EmbedderDescription, ProgressCallback
from dior_search.models.families import (
    InputBuilder,
    PrefixReuseUnsupported,
    SplitBatch,
    last_token_index,
    load_input_builder,
)
from dior_search.models.loading import (
    describe_loaded,
    load_model_config,
    resolve_device,
    resolve_dtype,
    resolve_model_source,
)
from dior_search.models.prompts import build_prompt
from dior_search.models.settings import DiorSettings

log = logging.getLogger(__name__)


class DiorEmbedder:
    """DIOR embeddings from a Hugging Face vision-language model (Hub id or local path)."""

    def __init__(self, settings: DiorSettings) -> None:
        from transformers import AutoModel

        self.settings = settings
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        source = resolve_model_source(settings.model)
        self.config = load_model_config(source, settings.revision, settings.trust_remote_code)
        self.inputs: InputBuilder = load_input_builder(
            self.config,
            source,
            revision=settings.revision,
            trust_remote_code=settings.trust_remote_code,
            position_scheme=settings.position_scheme,
            max_pixels=settings.max_pixels,
        )
        try:
            # The base model: no LM head, so no vocabulary-sized logits are ever computed.
            self.model = AutoModel.from_pretrained(
                source,
                revision=settings.revision,
                dtype=self.dtype,
                trust_remote_code=settings.trust_remote_code,
            )
        except (OSError, ValueError) as exc:
            raise ModelError(
                f"cannot load model weights of {source!r}: {first_line(exc)}"
            ) from None
        self.source = source
        text_config = self.config.get_text_config()
        self.n_layers: int = text_config.num_hidden_layers
        self._dim: int = text_config.hidden_size
        if not -(self.n_layers + 1) <= settings.layer <= self.n_layers:
            raise UsageError(
                f"layer {settings.layer} out of range: this model has hidden states "
                f"0..{self.n_layers} (or -{self.n_layers + 1}..-1)"
            )
        layer = settings.layer % (self.n_layers + 1)
        if layer == 0:
            # Before any layer the last token has seen nothing: every image would get the
            # same vector.
            raise UsageError(
                f"layer {settings.layer} is the embedding layer, where the last token's state "
                f"is the same for every image: use 1..{self.n_layers} (or -{self.n_layers}..-1)"
            )
        # Where the layers after the chosen one can be dropped, the model's last hidden state is
        # the embedding; otherwise every hidden state is returned and the chosen one read.
        stops_early = layer == self.n_layers or keep_first_layers(self.model, layer)
        self._hidden_index: int | None = None if stops_early else layer
        self.model.to(self.device).eval()
        self._prefix_reuse = settings.prefix_reuse
        if self._prefix_reuse and "cache" not in inspect.signature(self.model.forward).parameters:
            self._stop_prefix_reuse(f"{type(self.model).__name__}.forward takes no KV cache")

    @property
    def dim(self) -> int:
        return self._dim

    def describe(self) -> EmbedderDescription:
        """What makes these embeddings, for the index manifest."""
        policy = {"max_side": self.settings.max_side, **self.inputs.size_policy()}
        return describe_loaded(
            self.settings, self.source, self.config, self.dtype, self.dim, image_size_policy=policy
        )

    def embed(
        self,
        images: Sequence[Image.Image],
        conditions: Sequence[str | None],
        on_progress: ProgressCallback | None = None,
    ) -> np.ndarray:
        """Embed every image under every condition: float32 (n_images, n_conditions, dim)."""
        prompts = [build_prompt(self.settings.template, c) for c in conditions]
        images = [fit_within(image, self.settings.max_side) for image in images]
        if not images or not prompts:
            return np.empty((len(images), len(prompts), self.dim), dtype=np.float32)
        if self._prefix_reuse:
            return self.embed_by_prefix(images, prompts, on_progress)
        return self.embed_full(images, prompts, on_progress)

    def embed_by_prefix(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        on_progress: ProgressCallback | None = None,
    ) -> np.ndarray:
        """`embed` by prefix reuse: float32 (n_images, n_prompts, dim).

        `batch_size` bounds the suffix rows of a pass, as it bounds the rows of a full pass:
        a pass takes `batch_size // n_prompts` images (at least one).
        """
        out = np.empty((len(images), len(prompts), self.dim), dtype=np.float32)
        step = max(1, self.settings.batch_size // len(prompts))
        chunks = [images[start : start + step] for start in range(0, len(images), step)]
        done = 0
        try:
            for chunk, split in zip(chunks, self._splits(chunks, prompts), strict=True):
                out[done : done + len(chunk)] = self.embed_split(split).reshape(
                    len(chunk), len(prompts), self.dim
                )
                done += len(chunk)
                if on_progress is not None:
                    on_progress(len(chunk) * len(prompts))
        except PrefixReuseUnsupported as exc:
            self._stop_prefix_reuse(str(exc))
            out[done:] = self.embed_full(images[done:], prompts, on_progress)
        return out

    def _splits(
        self, chunks: Sequence[Sequence[Image.Image]], prompts: Sequence[str]
    ) -> Iterator[SplitBatch]:
        """Each chunk's prefix/suffix inputs, in order, the next built while this one runs.

        Building inputs (image patches, tokens) is CPU work; done on a thread while the model
        runs the previous chunk, it no longer leaves a GPU idle.
        """
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(self.inputs.split, chunks[0], prompts, self.model)
            for following in [*chunks[1:], None]:
                split = pending.result()
                if following is not None:
                    pending = pool.submit(self.inputs.split, following, prompts, self.model)
                yield split

    @torch.inference_mode()
    def embed_split(self, split: SplitBatch) -> np.ndarray:
        """The prefix pass, the cache repeated per prompt, the suffix pass; float32 (rows, dim)."""
        batch = split.to(self.device, self.dtype)
        cache = self.prefix_pass(batch)
        if batch.prompts_per_image > 1:
            cache.batch_repeat_interleave(batch.prompts_per_image)
        return self.suffix_pass(batch, cache)

    @torch.inference_mode()
    def prefix_pass(self, batch: SplitBatch) -> Any:
        """Run the prefixes (images included) and return their KV cache."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        self._hidden(batch.prefix_inputs, cache=cache, use_cache=True)
        return cache

    @torch.inference_mode()
    def suffix_pass(self, batch: SplitBatch, cache: Any) -> np.ndarray:
        """Run the suffixes against `cache`, already repeated per prompt; float32 (rows, dim).

        Prefixes of different lengths leave pad slots in the cache between a row's prefix and
        its suffix: the 2-D mask over (cache + suffix) hides them, and positions are explicit.
        """
        repeats = batch.prompts_per_image
        prefix_mask = batch.prefix_inputs["attention_mask"].repeat_interleave(repeats, dim=0)
        steps = torch.arange(batch.suffix_ids.shape[1], device=batch.suffix_ids.device)
        hidden = self._hidden(
            {
                "input_ids": batch.suffix_ids,
                "attention_mask": torch.cat([prefix_mask, batch.suffix_mask], dim=1),
                "position_ids": batch.next_position.repeat_interleave(repeats)[:, None] + steps,
            },
            cache=cache,
            use_cache=True,
        )
        return self._last_tokens(hidden, last_token_index(batch.suffix_mask))

    def embed_full(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        on_progress: ProgressCallback | None = None,
    ) -> np.ndarray:
        """`embed` by a full forward pass per row: float32 (n_images, n_prompts, dim)."""
        rows = [(i, p) for i in range(len(images)) for p in range(len(prompts))]
        out = np.empty((len(images) * len(prompts), self.dim), dtype=np.float32)
        step = self.settings.batch_size
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            out[start : start + len(chunk)] = self.embed_rows(
                [images[i] for i, _ in chunk], [prompts[p] for _, p in chunk]
            )
            if on_progress is not None:
                on_progress(len(chunk))
        return out.reshape(len(images), len(prompts), self.dim)

    @torch.inference_mode()
    def embed_rows(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        """One forward pass over (image, prompt) rows; float32 (rows, dim)."""
        images = [fit_within(image, self.settings.max_side) for image in images]
        batch = self.inputs.build(images, prompts).to(self.device, self.dtype)
        hidden = self._hidden(batch.inputs, use_cache=False)
        return self._last_tokens(hidden, batch.last_index)

    def _hidden(self, inputs: dict[str, torch.Tensor], **options: Any) -> torch.Tensor:
        """The chosen layer's hidden states for `inputs`: (rows, tokens, dim)."""
        if self._hidden_index is None:
            last: torch.Tensor = self.model(**inputs, **options).last_hidden_state
            return last
        outputs = self.model(**inputs, **options, output_hidden_states=True)
        chosen: torch.Tensor = outputs.hidden_states[self._hidden_index]
        return chosen

    @staticmethod
    def _last_tokens(hidden: torch.Tensor, last_index: torch.Tensor) -> np.ndarray:
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        vectors: np.ndarray = hidden[rows, last_index].float().cpu().numpy()
        return vectors

    def _stop_prefix_reuse(self, reason: str) -> None:
        self._prefix_reuse = False
        log.warning(
            "prefix reuse is off for %s (%s): one full forward pass per condition",
            self.source,
            reason,
        )


def keep_first_layers(model: Any, n_layers: int) -> bool:
    """Drop the decoder layers after the first `n_layers`, and the final norm.

    The model's last hidden state is then `hidden_states[n_layers]` of the whole model (the
    final norm applies only after the last layer). False where the decoder is not laid out as
    `layers` and `norm`, and nothing is dropped.
    """
    decoder = model.get_decoder()
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or not isinstance(
        getattr(decoder, "norm", None), torch.nn.Module
    ):
        return False
    decoder.layers = layers[:n_layers]
    decoder.norm = torch.nn.Identity()
    return True
