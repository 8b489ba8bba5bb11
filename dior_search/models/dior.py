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
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, replace
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
    check_image_size,
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


@dataclass(frozen=True)
class Throughput:
    """How batches are fed to the model. None of it changes an embedding.

    `image_threads`: threads that process a batch's images in parallel (1: one after another),
    on top of the thread that builds the next batch while the model runs the current one.
    `pin_memory`: inputs are built into page-locked memory and copied to the GPU without
    waiting (CUDA only). `packed_suffixes`: an image's condition suffixes run as one row against
    its prefix's KV cache, which is then never copied per condition. `group_by_size`: images go
    through the model in order of size, so that a batch pads its rows less.
    """

    image_threads: int = 1
    pin_memory: bool = False
    packed_suffixes: bool = True
    group_by_size: bool = True

    @classmethod
    def for_device(cls, device: torch.device) -> Throughput:
        """The defaults: on a GPU, patching in parallel and pinned copies keep it fed; on a
        CPU the model needs every core and copies are free."""
        if device.type != "cuda":
            return cls()
        return cls(image_threads=min(8, os.cpu_count() or 1), pin_memory=True)


class DiorEmbedder:
    """DIOR embeddings from a Hugging Face vision-language model (Hub id or local path)."""

    def __init__(
        self,
        settings: DiorSettings,
        layers: Sequence[int] | None = None,
        *,
        throughput: Throughput | None = None,
    ) -> None:
        """`layers`: hidden-state indices to read from each forward pass (`embed_layers`);
        default the settings' one layer. `throughput`: how batches are fed (default: the
        device's)."""
        from transformers import AutoModel

        self.settings = settings
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        self.throughput = throughput or Throughput.for_device(self.device)
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
        self.layers = [settings.layer] if layers is None else list(dict.fromkeys(layers))
        for layer in self.layers:
            if not -(self.n_layers + 1) <= layer <= self.n_layers:
                raise UsageError(
                    f"layer {layer} out of range: this model has hidden states "
                    f"0..{self.n_layers} (or -{self.n_layers + 1}..-1)"
                )
            if layer % (self.n_layers + 1) == 0:
                # Before any layer the last token has seen nothing: every image would get the
                # same vector.
                raise UsageError(
                    f"layer {layer} is the embedding layer, where the last token's state is the "
                    f"same for every image: use 1..{self.n_layers} (or -{self.n_layers}..-1)"
                )
        indices = [layer % (self.n_layers + 1) for layer in self.layers]
        deepest = max(indices)
        # Where the layers after the deepest chosen one can be dropped, the model's last hidden
        # state is that layer's; the others are read from the returned hidden states.
        stops_early = deepest == self.n_layers or keep_first_layers(self.model, deepest)
        self._hidden_indices: list[int | None] = [
            None if stops_early and index == deepest else index for index in indices
        ]
        self.model.to(self.device).eval()
        self._prefix_reuse = settings.prefix_reuse
        if self._prefix_reuse and "cache" not in inspect.signature(self.model.forward).parameters:
            self._stop_prefix_reuse(f"{type(self.model).__name__}.forward takes no KV cache")

    @property
    def dim(self) -> int:
        return self._dim

    def describe(self, layer: int | None = None) -> EmbedderDescription:
        """What makes these embeddings (those of `layer`: default the settings' one)."""
        policy = {"max_side": self.settings.max_side, **self.inputs.size_policy()}
        settings = self.settings if layer is None else replace(self.settings, layer=layer)
        return describe_loaded(
            settings, self.source, self.config, self.dtype, self.dim, image_size_policy=policy
        )

    def check_size(self, width: int, height: int) -> None:
        """ImageRefused if the input builder would refuse such an image shrunk to max_side."""
        check_image_size(self.inputs, width, height, self.settings.max_side)

    def embed(
        self,
        images: Sequence[Image.Image],
        conditions: Sequence[str | None],
        on_progress: ProgressCallback | None = None,
    ) -> np.ndarray:
        """Embed every image under every condition: float32 (n_images, n_conditions, dim), from
        the first of `layers`."""
        first: np.ndarray = self.embed_layers(images, conditions, on_progress)[:, :, 0]
        return np.ascontiguousarray(first)

    def embed_layers(
        self,
        images: Sequence[Image.Image],
        conditions: Sequence[str | None],
        on_progress: ProgressCallback | None = None,
    ) -> np.ndarray:
        """Every image under every condition at each of `layers`, from one forward pass:
        float32 (n_images, n_conditions, n_layers, dim)."""
        prompts = [build_prompt(self.settings.template, c) for c in conditions]
        images = [fit_within(image, self.settings.max_side) for image in images]
        if not images or not prompts:
            shape = (len(images), len(prompts), len(self.layers), self.dim)
            return np.empty(shape, dtype=np.float32)
        # Images of one size in one batch: prefix rows (one image's tokens each) pad the least.
        order = np.arange(len(images))
        if self.throughput.group_by_size:
            order = np.argsort([image.width * image.height for image in images], kind="stable")
        ordered = [images[i] for i in order]
        if self._prefix_reuse:
            vectors = self.embed_by_prefix(ordered, prompts, on_progress)
        else:
            vectors = self.embed_full(ordered, prompts, on_progress)
        out = np.empty_like(vectors)
        out[order] = vectors
        return out

    def embed_by_prefix(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        on_progress: ProgressCallback | None = None,
    ) -> np.ndarray:
        """`embed_layers` by prefix reuse: float32 (n_images, n_prompts, n_layers, dim).

        `batch_size` bounds the suffix rows of a pass, as it bounds the rows of a full pass:
        a pass takes `batch_size // n_prompts` images (at least one).
        """
        out = np.empty((len(images), len(prompts), len(self.layers), self.dim), dtype=np.float32)
        step = max(1, self.settings.batch_size // len(prompts))
        chunks = [images[start : start + step] for start in range(0, len(images), step)]
        done = 0
        try:
            for chunk, split in zip(chunks, self._splits(chunks, prompts), strict=True):
                out[done : done + len(chunk)] = self.embed_split(split).reshape(
                    len(chunk), len(prompts), len(self.layers), self.dim
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
        runs the previous chunk, it no longer leaves a GPU idle. `image_threads` process the
        images of a chunk in parallel, which also shortens the first chunk, built before the
        model has anything to run.
        """
        threads = self.throughput.image_threads
        images = ThreadPoolExecutor(threads) if threads > 1 else nullcontext(None)
        with ThreadPoolExecutor(max_workers=1) as ahead, images as workers:

            def build(chunk: Sequence[Image.Image]) -> SplitBatch:
                return self.build_split(chunk, prompts, workers)

            pending = ahead.submit(build, chunks[0])
            for following in [*chunks[1:], None]:
                split = pending.result()
                if following is not None:
                    pending = ahead.submit(build, following)
                yield split

    def build_split(
        self, chunk: Sequence[Image.Image], prompts: Sequence[str], workers: Executor | None = None
    ) -> SplitBatch:
        """A chunk's inputs as `embed_by_prefix` builds them: pinned where that is on."""
        split = self.inputs.split(chunk, prompts, self.model, workers=workers)
        if self.throughput.pin_memory and self.device.type == "cuda":
            return split.pinned(self.dtype)
        return split

    @torch.inference_mode()
    def embed_split(self, split: SplitBatch) -> np.ndarray:
        """The prefix pass, then the suffixes against its cache; float32 (rows, n_layers, dim).

        Packed (see `Throughput`), an image's suffixes run as one row against its own cache
        row; otherwise the cache is repeated per prompt and each suffix runs as its own row.
        """
        batch = split.to(self.device, self.dtype, non_blocking=split.suffix_ids.is_pinned())
        cache = self.prefix_pass(batch)
        if batch.prompts_per_image > 1 and self.throughput.packed_suffixes:
            try:
                return self.packed_suffix_pass(batch, cache)
            except torch.OutOfMemoryError:
                raise  # not the mask's fault: a smaller batch is the cure
            except (RuntimeError, ValueError, TypeError, IndexError) as exc:
                # A model whose forward pass cannot take a custom mask: a cache row per prompt.
                self._stop_packing(first_line(exc))
                cache = self.prefix_pass(batch)  # the failed pass may have grown the cache
        if batch.prompts_per_image > 1:
            cache.batch_repeat_interleave(batch.prompts_per_image)
        return self.suffix_pass(batch, cache)

    @torch.inference_mode()
    def prefix_pass(self, batch: SplitBatch) -> Any:
        """Run the prefixes (images included) and return their KV cache."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        self.model(**batch.prefix_inputs, cache=cache, use_cache=True)
        return cache

    @torch.inference_mode()
    def suffix_pass(self, batch: SplitBatch, cache: Any) -> np.ndarray:
        """Run the suffixes against `cache`, already repeated per prompt; float32
        (rows, n_layers, dim).

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

    @torch.inference_mode()
    def packed_suffix_pass(self, batch: SplitBatch, cache: Any) -> np.ndarray:
        """Run the suffixes against `cache` as it left the prefix pass (one row per image):
        each image's suffixes packed into one row, each seeing its prefix and itself alone.
        float32 (rows, n_layers, dim), rows as `suffix_pass` gives them.
        """
        mask_dtype = self._mask_dtype()
        if mask_dtype is None:  # an attention that takes no custom mask: a row per prompt
            cache.batch_repeat_interleave(batch.prompts_per_image)
            return self.suffix_pass(batch, cache)
        inputs, ends = pack_suffixes(batch, mask_dtype)
        hidden = self._hidden(inputs, cache=cache, use_cache=True)
        images = torch.arange(ends.shape[0], device=ends.device)
        return self._last_tokens(hidden, ends.flatten(), images.repeat_interleave(ends.shape[1]))

    def _mask_dtype(self) -> torch.dtype | None:
        """The dtype of a custom 4-D mask for this model's attention; None where it takes none.

        SDPA takes a boolean mask (True: attend); eager attention adds a float mask.
        """
        implementation = self.model.config.get_text_config()._attn_implementation
        return {"sdpa": torch.bool, "eager": self.dtype}.get(implementation)

    def embed_full(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        on_progress: ProgressCallback | None = None,
    ) -> np.ndarray:
        """`embed_layers` by a full forward pass per row: float32
        (n_images, n_prompts, n_layers, dim)."""
        rows = [(i, p) for i in range(len(images)) for p in range(len(prompts))]
        out = np.empty((len(images) * len(prompts), len(self.layers), self.dim), dtype=np.float32)
        step = self.settings.batch_size
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            out[start : start + len(chunk)] = self.embed_rows_layers(
                [images[i] for i, _ in chunk], [prompts[p] for _, p in chunk]
            )
            if on_progress is not None:
                on_progress(len(chunk))
        return out.reshape(len(images), len(prompts), len(self.layers), self.dim)

    def embed_rows(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        """One forward pass over (image, prompt) rows; float32 (rows, dim), the first layer."""
        first: np.ndarray = self.embed_rows_layers(images, prompts)[:, 0]
        return first

    @torch.inference_mode()
    def embed_rows_layers(
        self, images: Sequence[Image.Image], prompts: Sequence[str]
    ) -> np.ndarray:
        """One forward pass over (image, prompt) rows; float32 (rows, n_layers, dim)."""
        images = [fit_within(image, self.settings.max_side) for image in images]
        batch = self.inputs.build(images, prompts).to(self.device, self.dtype)
        hidden = self._hidden(batch.inputs, use_cache=False)
        return self._last_tokens(hidden, batch.last_index)

    def _hidden(self, inputs: dict[str, torch.Tensor], **options: Any) -> list[torch.Tensor]:
        """Each chosen layer's hidden states for `inputs`: (rows, tokens, dim) each."""
        if self._hidden_indices == [None]:
            return [self.model(**inputs, **options).last_hidden_state]
        outputs = self.model(**inputs, **options, output_hidden_states=True)
        return [
            outputs.last_hidden_state if index is None else outputs.hidden_states[index]
            for index in self._hidden_indices
        ]

    @staticmethod
    def _last_tokens(
        hidden: list[torch.Tensor], last_index: torch.Tensor, rows: torch.Tensor | None = None
    ) -> np.ndarray:
        """Each row's state at its last token, per layer: float32 (rows, n_layers, dim).

        `rows`: the hidden-state row each output row is read from (default: one each).
        """
        if rows is None:
            rows = torch.arange(hidden[0].shape[0], device=hidden[0].device)
        stacked = torch.stack([states[rows, last_index] for states in hidden], dim=1)
        vectors: np.ndarray = stacked.float().cpu().numpy()
        return vectors

    def _stop_packing(self, reason: str) -> None:
        self.throughput = replace(self.throughput, packed_suffixes=False)
        log.warning(
            "packed suffixes are off for %s (%s): the KV cache is repeated per condition",
            self.source,
            reason,
        )

    def _stop_prefix_reuse(self, reason: str) -> None:
        self._prefix_reuse = False
        log.warning(
            "prefix reuse is off for %s (%s): one full forward pass per condition",
            self.source,
            reason,
        )


def pack_suffixes(
    batch: SplitBatch, mask_dtype: torch.dtype
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Model inputs that run each image's suffixes as one row, and where each suffix ends.

    Row i holds image i's suffixes' real tokens one after another. A token sees its image's
    prefix (the cache) and the earlier tokens of its own suffix, at the positions it has alone.
    Returns the inputs and the (images, prompts) index of each suffix's last token.
    """
    n_images, n_prompts = batch.next_position.shape[0], batch.prompts_per_image
    width = batch.suffix_ids.shape[1]
    device = batch.suffix_ids.device
    real = batch.suffix_mask.bool().reshape(n_images, n_prompts, width)
    ends = real.sum(dim=2).cumsum(dim=1) - 1
    length = int(ends[:, -1].max()) + 1
    # Where each real token goes in its packed row, and which suffix and step it is.
    flat = real.reshape(n_images, n_prompts * width)
    column = (flat.long().cumsum(dim=1) - 1)[flat]
    row = torch.arange(n_images, device=device)[:, None].expand_as(flat)[flat]
    prompt = torch.arange(n_prompts, device=device).repeat_interleave(width)
    step = torch.arange(width, device=device).repeat(n_prompts)
    ids = torch.zeros((n_images, length), dtype=batch.suffix_ids.dtype, device=device)
    owner = torch.full((n_images, length), -1, dtype=torch.long, device=device)  # -1: padding
    steps = torch.zeros((n_images, length), dtype=torch.long, device=device)
    ids[row, column] = batch.suffix_ids.reshape(n_images, -1)[flat]
    owner[row, column] = prompt.expand_as(flat)[flat]
    steps[row, column] = step.expand_as(flat)[flat]
    # Padding sees the prefix and other padding: never an empty row, whose softmax is NaN.
    own = (owner[:, :, None] == owner[:, None, :]) & (steps[:, None, :] <= steps[:, :, None])
    prefix = batch.prefix_inputs["attention_mask"].bool()[:, None, :].expand(-1, length, -1)
    allowed = torch.cat([prefix, own], dim=2)[:, None]
    if mask_dtype == torch.bool:
        mask = allowed
    else:
        mask = torch.zeros(allowed.shape, dtype=mask_dtype, device=device)
        mask.masked_fill_(~allowed, torch.finfo(mask_dtype).min)
    positions = batch.next_position[:, None] + steps
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions}, ends


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
