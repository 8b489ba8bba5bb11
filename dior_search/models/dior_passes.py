"""DIOR's forward passes: prefix reuse (plain or packed suffixes) and the plain full pass.

With prefix reuse each image's shared prompt prefix (chat header, image, prompt text up to the
condition) runs once with its KV cache kept, and the condition suffixes then run against it:
packed into one row per image (`Throughput.packed_suffixes`, a 4-D mask), or as a row each
against the cache repeated per prompt. Without it, or where the model cannot take it, each
(image, prompt) row runs as one full forward pass. Every path gives the same vectors; each
leaves a `Decoder` over its cache where answers are asked for (models.dior_decoding).
"""

from __future__ import annotations

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
from dior_search.errors import first_line
from dior_search.models.answers import Answer
from dior_search.models.dior_decoding import (
    AnswerDecoding,
    AnswerReader,
    Decoder,
    PackedDecoder,
    RowDecoder,
)
from dior_search.models.dior_model import DiorModel, ReadInPrefix
from dior_search.models.dior_packed_suffixes import pack_suffixes
from dior_search.models.embedder import ProgressCallback
from dior_search.models.families import PrefixReuseUnsupported, SplitBatch, last_token_index

log = logging.getLogger(__name__)

# What a pass leaves to decode its rows' answers: the last layer's states at the last token,
# and the decoder that goes on against the pass's cache.
ToDecode = tuple[torch.Tensor, Decoder]


@dataclass(frozen=True)
class Throughput:
    """How batches are fed to the model. None of it changes an embedding.

    `image_threads`: threads that process a batch's images in parallel (1: one after another),
    on top of the thread that builds the next batch while the model runs the current one.
    `pin_memory`: inputs are built into page-locked memory and copied to the GPU without
    waiting (CUDA only). `packed_suffixes`: an image's condition suffixes run as one row against
    its prefix's KV cache, which is then never copied per condition. `group_by_size`: images go
    through the model in order of size, so that a batch pads its rows less. `answer_rows`: the
    (image, condition) rows whose answers are decoded together, the caches of several passes
    joined: each decoding step reads the model's weights once for all of them.
    """

    image_threads: int = 1
    pin_memory: bool = False
    packed_suffixes: bool = True
    group_by_size: bool = True
    answer_rows: int = 64

    @classmethod
    def for_device(cls, device: torch.device) -> Throughput:
        """The defaults: on a GPU, patching in parallel and pinned copies keep it fed; on a
        CPU the model needs every core and copies are free."""
        if device.type != "cuda":
            return cls()
        return cls(image_threads=min(8, os.cpu_count() or 1), pin_memory=True)


class Passes:
    """The forward passes of a loaded DIOR model, fed as `throughput` says."""

    def __init__(
        self,
        loaded: DiorModel,
        answers: AnswerReader,
        throughput: Throughput,
        prefix_reuse: bool,
    ) -> None:
        self.loaded, self.answers = loaded, answers
        self.throughput = throughput
        self.prefix_reuse = prefix_reuse
        if prefix_reuse and not loaded.takes_cache:
            self.stop_prefix_reuse(f"{type(loaded.model).__name__}.forward takes no KV cache")

    def embed(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        on_progress: ProgressCallback | None,
        answers: bool,
    ) -> tuple[np.ndarray, list[Answer]]:
        """Every image (already fit) under every prompt: float32 (n_images, n_prompts,
        n_layers, dim) and, if asked, the answers of every (image, prompt), image-major."""
        # Images of one size in one batch: prefix rows (one image's tokens each) pad the least.
        order = np.arange(len(images))
        if self.throughput.group_by_size:
            order = np.argsort([image.width * image.height for image in images], kind="stable")
        ordered = [images[i] for i in order.tolist()]
        decode = answers or self.loaded.reads_answer_tokens
        vectors, found = self.by_prefix_or_rows(ordered, prompts, on_progress, decode)
        out = np.empty_like(vectors)
        out[order] = vectors
        if not answers:
            return out, []
        width = len(prompts)
        placed: list[Answer] = list(found)
        for position, image in enumerate(order.tolist()):
            placed[image * width : (image + 1) * width] = found[
                position * width : (position + 1) * width
            ]
        return out, placed

    def by_prefix_or_rows(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        on_progress: ProgressCallback | None,
        answers: bool,
    ) -> tuple[np.ndarray, list[Answer]]:
        """`by_prefix` where prefix reuse is on and can read the vector, else `by_rows`."""
        if self.prefix_reuse:
            try:
                return self.by_prefix(images, prompts, on_progress, answers)
            except ReadInPrefix as exc:
                log.info("%s: full forward passes for these prompts", exc)
        return self.by_rows(images, prompts, on_progress, answers)

    def by_prefix(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        on_progress: ProgressCallback | None = None,
        answers: bool = False,
    ) -> tuple[np.ndarray, list[Answer]]:
        """By prefix reuse: float32 (n_images, n_prompts, n_layers, dim), and the answers
        (image-major) if asked.

        `batch_size` bounds the suffix rows of a pass, as it bounds the rows of a full pass:
        a pass takes `batch_size // n_prompts` images (at least one).
        """
        shape = (len(images), len(prompts), len(self.loaded.layers), self.loaded.dim)
        out = np.empty(shape, dtype=np.float32)
        decoding = AnswerDecoding(self.answers.decode, self.throughput.answer_rows)
        step = max(1, self.loaded.settings.batch_size // len(prompts))
        chunks = [images[start : start + step] for start in range(0, len(images), step)]
        done = 0
        try:
            for chunk, split in zip(chunks, self.splits(chunks, prompts), strict=True):
                vectors, to_decode = self.run_split(split, answers)
                out[done : done + len(chunk)] = vectors.reshape(len(chunk), *shape[1:])
                if to_decode is not None:
                    decoding.add(*to_decode)
                done += len(chunk)
                if on_progress is not None:
                    on_progress(len(chunk) * len(prompts))
        except PrefixReuseUnsupported as exc:
            self.stop_prefix_reuse(str(exc))
            out[done:], rest = self.by_rows(images[done:], prompts, on_progress, answers)
            found = decoding.finish()
            self.place_outputs(out[:done], decoding.outputs())
            return out, [*found, *rest]
        found = decoding.finish()
        self.place_outputs(out, decoding.outputs())
        return out, found

    def place_outputs(self, out: np.ndarray, outputs: np.ndarray | None) -> None:
        """Where the vectors come from the answer's tokens, put them in `out` (images,
        prompts, layers, dim) in place of the last input's."""
        if self.loaded.reads_answer_tokens and outputs is not None:
            out[...] = outputs.reshape(out.shape)

    def splits(
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
        """A chunk's inputs as `by_prefix` builds them: pinned where that is on."""
        loaded = self.loaded
        split = loaded.inputs.split(chunk, prompts, loaded.model, workers=workers)
        if self.throughput.pin_memory and loaded.device.type == "cuda":
            return split.pinned(loaded.activation_dtype)
        return split

    @torch.inference_mode()
    def split_vectors(self, split: SplitBatch) -> np.ndarray:
        """The prefix pass, then the suffixes against its cache; float32 (rows, n_layers, dim).

        Packed (see `Throughput`), an image's suffixes run as one row against its own cache
        row; otherwise the cache is repeated per prompt and each suffix runs as its own row.
        """
        vectors, to_decode = self.run_split(split, answers=False)
        outputs = None if to_decode is None else self.answers.decode(*to_decode)[1]
        return vectors if outputs is None else outputs

    @torch.inference_mode()
    def run_split(self, split: SplitBatch, answers: bool) -> tuple[np.ndarray, ToDecode | None]:
        """The last input's vectors of `split_vectors`, and (if asked, and always where the
        vectors come from the answer's tokens) what decodes its rows' answers against the same
        cache: the last layer's states and a decoder."""
        loaded = self.loaded
        answers = answers or loaded.reads_answer_tokens
        batch = split.to(
            loaded.device, loaded.activation_dtype, non_blocking=split.suffix_ids.is_pinned()
        )
        cache = self.prefix_pass(batch)
        if batch.prompts_per_image > 1 and self.throughput.packed_suffixes:
            try:
                states, decoder = self.packed_suffix_states(batch, cache)
                return self.finish(states, decoder if answers else None)
            except torch.OutOfMemoryError:
                raise  # not the mask's fault: a smaller batch is the cure
            except (RuntimeError, ValueError, TypeError, IndexError) as exc:
                # A model whose forward pass cannot take a custom mask: a cache row per prompt.
                self.stop_packing(first_line(exc))
                cache = self.prefix_pass(batch)  # the failed pass may have grown the cache
        if batch.prompts_per_image > 1:
            cache.batch_repeat_interleave(batch.prompts_per_image)
        states, decoder = self.suffix_states(batch, cache)
        return self.finish(states, decoder if answers else None)

    @torch.inference_mode()
    def prefix_pass(self, batch: SplitBatch) -> Any:
        """Run the prefixes (images included) and return their KV cache."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.loaded.model.config)
        self.loaded.model(**batch.prefix_inputs, cache=cache, use_cache=True)
        return cache

    @torch.inference_mode()
    def suffix_pass(self, batch: SplitBatch, cache: Any) -> np.ndarray:
        """Run the suffixes against `cache`, already repeated per prompt; float32
        (rows, n_layers, dim).

        Prefixes of different lengths leave pad slots in the cache between a row's prefix and
        its suffix: the 2-D mask over (cache + suffix) hides them, and positions are explicit.
        """
        return self.loaded.vectors(self.suffix_states(batch, cache)[0])

    def suffix_states(self, batch: SplitBatch, cache: Any) -> tuple[torch.Tensor, Decoder]:
        """`suffix_pass`'s states on the device, and how to go on decoding from them."""
        loaded = self.loaded
        repeats = batch.prompts_per_image
        prefix_mask = batch.prefix_inputs["attention_mask"].repeat_interleave(repeats, dim=0)
        steps = torch.arange(batch.suffix_ids.shape[1], device=batch.suffix_ids.device)
        starts = batch.next_position.repeat_interleave(repeats)
        mask = torch.cat([prefix_mask, batch.suffix_mask], dim=1)
        hidden = loaded.hidden(
            {
                "input_ids": batch.suffix_ids,
                "attention_mask": mask,
                "position_ids": starts[:, None] + steps,
            },
            cache=cache,
            use_cache=True,
        )
        last = last_token_index(batch.suffix_mask)
        states = loaded.read_states(hidden, last, starts=torch.zeros_like(last))
        lengths = batch.suffix_mask.long().sum(dim=1)
        return states, RowDecoder(loaded.step_hidden, cache, mask, starts + lengths)

    @torch.inference_mode()
    def packed_suffix_pass(self, batch: SplitBatch, cache: Any) -> np.ndarray:
        """Run the suffixes against `cache` as it left the prefix pass (one row per image):
        each image's suffixes packed into one row, each seeing its prefix and itself alone.
        float32 (rows, n_layers, dim), rows as `suffix_pass` gives them.
        """
        return self.loaded.vectors(self.packed_suffix_states(batch, cache)[0])

    def packed_suffix_states(self, batch: SplitBatch, cache: Any) -> tuple[torch.Tensor, Decoder]:
        """`packed_suffix_pass`'s states on the device, and how to go on decoding from them."""
        loaded = self.loaded
        mask_dtype = loaded.mask_dtype()
        if mask_dtype is None:  # an attention that takes no custom mask: a row per prompt
            cache.batch_repeat_interleave(batch.prompts_per_image)
            return self.suffix_states(batch, cache)
        packed = pack_suffixes(batch, mask_dtype)
        hidden = loaded.hidden(packed.inputs, cache=cache, use_cache=True)
        ends = packed.ends
        images = torch.arange(ends.shape[0], device=ends.device)
        rows = images.repeat_interleave(ends.shape[1])
        starts = (ends - packed.lengths + 1).flatten()
        states = loaded.read_states(hidden, ends.flatten(), rows, starts)
        decoder = PackedDecoder.after_packing(
            loaded.step_hidden,
            cache,
            batch.prefix_inputs["attention_mask"],
            packed,
            batch.next_position,
            mask_dtype,
        )
        return states, decoder

    def by_rows(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        on_progress: ProgressCallback | None = None,
        answers: bool = False,
    ) -> tuple[np.ndarray, list[Answer]]:
        """By a full forward pass per (image, prompt) row: float32 (n_images, n_prompts,
        n_layers, dim), and the answers (image-major) if asked."""
        n_layers, dim = len(self.loaded.layers), self.loaded.dim
        rows = [(i, p) for i in range(len(images)) for p in range(len(prompts))]
        out = np.empty((len(images) * len(prompts), n_layers, dim), dtype=np.float32)
        found: list[Answer] = []
        step = self.loaded.settings.batch_size
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            vectors, chunk_answers = self.rows(
                [images[i] for i, _ in chunk], [prompts[p] for _, p in chunk], answers
            )
            out[start : start + len(chunk)] = vectors
            found += chunk_answers
            if on_progress is not None:
                on_progress(len(chunk))
        return out.reshape(len(images), len(prompts), n_layers, dim), found

    @torch.inference_mode()
    def rows(
        self, images: Sequence[Image.Image], prompts: Sequence[str], answers: bool
    ) -> tuple[np.ndarray, list[Answer]]:
        """One forward pass over (image, prompt) rows: float32 (rows, n_layers, dim), and each
        row's answer decoded against the pass's cache if asked."""
        from transformers import DynamicCache

        loaded = self.loaded
        images = [fit_within(image, loaded.settings.max_side) for image in images]
        batch = loaded.inputs.build(images, prompts).to(loaded.device, loaded.activation_dtype)
        if not answers and not loaded.reads_answer_tokens:
            hidden = loaded.hidden(batch.inputs, use_cache=False)
            return loaded.vectors(loaded.read_states(hidden, batch.last_index)), []
        cache = DynamicCache(config=loaded.model.config)
        hidden = loaded.hidden(batch.inputs, cache=cache, use_cache=True)
        states = loaded.read_states(hidden, batch.last_index)
        starts = loaded.inputs.next_positions(loaded.model, batch)
        decoder = RowDecoder(loaded.step_hidden, cache, batch.inputs["attention_mask"], starts)
        vectors, to_decode = self.finish(states, decoder)
        if to_decode is None:
            return vectors, []
        found, outputs = self.answers.decode(*to_decode)
        return (vectors if outputs is None else outputs), found if answers else []

    def finish(
        self, states: torch.Tensor, decoder: Decoder | None
    ) -> tuple[np.ndarray, ToDecode | None]:
        """The chosen layers' vectors as float32 numpy, and (where a decoder is given) the
        last layer's states at the last token with it, to decode the answers from."""
        vectors = self.loaded.vectors(states)
        column = self.loaded.decode_column
        if decoder is None or column is None:
            return vectors, None
        return vectors, (states[:, column], decoder)

    def stop_packing(self, reason: str) -> None:
        self.throughput = replace(self.throughput, packed_suffixes=False)
        log.warning(
            "packed suffixes are off for %s (%s): the KV cache is repeated per condition",
            self.loaded.source,
            reason,
        )

    def stop_prefix_reuse(self, reason: str) -> None:
        self.prefix_reuse = False
        log.warning(
            "prefix reuse is off for %s (%s): one full forward pass per condition",
            self.loaded.source,
            reason,
        )
