"""The DIOR embedder: the last input token's hidden state of a vision-language model.

Each (image, condition) row is prompted with the chosen template in the model's chat template
(generation prompt added); nothing is generated. Rows are right-padded in a batch and read at
their own last real token, so a batched embedding equals the one-at-a-time embedding.

An image's prompts differ only in their last few tokens, so by default the shared prefix (chat
header, image, prompt text up to the condition) runs once per image with its KV cache kept, and
all condition suffixes then run as one batch against it. Layers after the chosen one are never
run, and the base model has no LM head.

`embed_with_answers` also reads the model's own one-word answer to every prompt (see
models.answers): the output head (only `lm_head.weight`, or the tied input embeddings) applied
to the last layer's vector gives the first token, and the next ones are decoded greedily
against the KV cache the embedding pass leaves, a token per (image, condition) a step.

Where the vector is read (`DiorSettings.source`, the reference code's `first_output` and
`mean_output` beside its default):

- `last_input` (default, the paper's DIOR): the prompt's last token, as above; nothing is
  decoded unless answers are asked for.
- `first_output`: the state at the chosen layer where the answer's first greedy token is fed
  back, what Hugging Face's `generate(..., do_sample=False, output_hidden_states=True)` returns
  as `hidden_states[1][layer][:, -1]`. The first token is always fed back, even where it ends
  the answer at once (a closing quote, the end of the turn).
- `mean_output`: the mean of those states over the answer's tokens that are fed back:
  `hidden_states[1..m]`, where the greedy tokens t_1, t_2, ... are decoded by the answer rule
  (models.answers) and t_k (k > 1) counts while the answer is still open after it; the token
  that closes it (a stop token, the quote, space or punctuation after the word, or the
  `MAX_ANSWER_TOKENS`-th) is not fed back. Where t_1 already closes the answer, m = 1 and the
  mean is `first_output`.

Both come from the decoding that reads the stored answers (one decoding, no second
generation), at every layer the pass reads; the last layer's states are read as well to pick
each next token, so no layer is dropped. They cost the answer's decoding steps.

`DiorSettings.num_token` (the reference's `--num_token`) reads the last input's vector that many
tokens from the end instead (-1: the last token). The answers are still decoded from the last
token. With prefix reuse the vector is read in the suffix pass; where the position lies in the
prefix the prompts share there, the rows run as full forward passes instead (a position before
the first token where the conditions' prompts differ has the same state under every
condition: causal attention).
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from PIL import Image

from dior_search import defaults
from dior_search.data.images import fit_within
from dior_search.errors import ModelError, UsageError, first_line
from dior_search.models.answers import (
    Answer,
    AnswerText,
    HeadRows,
    is_tied,
    stop_tokens,
)
from dior_search.models.embedder import AnswerState, EmbedderDescription, ProgressCallback
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
from dior_search.models.precision import make_mixed, query_and_key_projections, uses_mixed
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


class DiorEmbedder:
    """DIOR embeddings from a Hugging Face vision-language model (Hub id or local path)."""

    # How an answer is cut from its tokens (a benchmark may make every answer one length).
    answer_text: type[AnswerText] = AnswerText

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
        self.throughput = throughput or Throughput.for_device(self.device)
        source = resolve_model_source(settings.model)
        self.config = load_model_config(source, settings.revision, settings.trust_remote_code)
        self.dtype = resolve_dtype(settings.dtype, self.device, self.config)
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
        # What flows between the matrix products: fp32 where bf16 runs mixed (on a CPU, see
        # models.precision), else the dtype the model was loaded in.
        self.activation_dtype = self.dtype
        if uses_mixed(self.dtype, self.device):
            make_mixed(self.model, keep_fp32=query_and_key_projections)
            self.activation_dtype = torch.float32
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
        self.embedding_source = settings.source
        if self.reads_answer_tokens and self.n_layers not in indices:
            # The answer is decoded from the last layer's states: read them too.
            indices.append(self.n_layers)
        # Where in the states of a pass (and of a decoding step) the last layer's are.
        self._decode_position = indices.index(self.n_layers) if self.n_layers in indices else None
        deepest = max(indices)
        # Where the layers after the deepest chosen one can be dropped, the model's last hidden
        # state is that layer's; the others are read from the returned hidden states.
        stops_early = deepest == self.n_layers or keep_first_layers(self.model, deepest)
        self._hidden_indices: list[int | None] = [
            None if stops_early and index == deepest else index for index in indices
        ]
        self.model.to(self.device).eval()
        # The read position's offset from each row's last token (0: the last token itself).
        self._read_offset = settings.num_token + 1
        self._head: torch.Tensor | None = None
        self._stops: frozenset[int] | None = None
        self._prefix_reuse = settings.prefix_reuse
        if self._prefix_reuse and "cache" not in inspect.signature(self.model.forward).parameters:
            self._stop_prefix_reuse(f"{type(self.model).__name__}.forward takes no KV cache")

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def reads_answer_tokens(self) -> bool:
        """Whether the vectors come from the decoded answer's tokens (not the last input)."""
        return self.embedding_source != defaults.DEFAULT_SOURCE

    def describe(self, layer: int | None = None) -> EmbedderDescription:
        """What makes these embeddings (those of `layer`: default the settings' one)."""
        policy = {"max_side": self.settings.max_side, **self.inputs.size_policy()}
        settings = self.settings if layer is None else replace(self.settings, layer=layer)
        return describe_loaded(
            settings,
            self.source,
            self.config,
            self.dtype,
            self.dim,
            image_size_policy=policy,
            answers=self.answer_state(settings.layer),
        )

    def answer_state(self, layer: int) -> AnswerState:
        """`stored` where `layer` is the last (its state is what the output head reads)."""
        return "stored" if layer % (self.n_layers + 1) == self.n_layers else "not-last-layer"

    @property
    def answer_position(self) -> int | None:
        """Which of `layers` is the last one, whose vectors have answers (None: none is)."""
        for position, layer in enumerate(self.layers):
            if self.answer_state(layer) == "stored":
                return position
        return None

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

    def embed_with_answers(
        self,
        images: Sequence[Image.Image],
        conditions: Sequence[str | None],
        on_progress: ProgressCallback | None = None,
    ) -> tuple[np.ndarray, list[list[Answer | None]]]:
        """`embed`, and the model's answer to every (image, condition): `answers[i][c]`, None
        everywhere if the first of `layers` is not the last layer."""
        return self.layer_of(0, *self.embed_layers_with_answers(images, conditions, on_progress))

    def layer_of(
        self, position: int, vectors: np.ndarray, answers: list[list[Answer | None]]
    ) -> tuple[np.ndarray, list[list[Answer | None]]]:
        """One of `layers` (by position) out of `embed_layers_with_answers`: its vectors, and
        the answers where it is the last layer (None everywhere else)."""
        layer = np.ascontiguousarray(vectors[:, :, position])
        if self.answer_position != position:
            return layer, [[None] * vectors.shape[1] for _ in range(len(vectors))]
        return layer, answers

    def embed_layers(
        self,
        images: Sequence[Image.Image],
        conditions: Sequence[str | None],
        on_progress: ProgressCallback | None = None,
    ) -> np.ndarray:
        """Every image under every condition at each of `layers`, from one forward pass:
        float32 (n_images, n_conditions, n_layers, dim)."""
        return self._embed(images, conditions, on_progress, answers=False)[0]

    def embed_layers_with_answers(
        self,
        images: Sequence[Image.Image],
        conditions: Sequence[str | None],
        on_progress: ProgressCallback | None = None,
    ) -> tuple[np.ndarray, list[list[Answer | None]]]:
        """`embed_layers`, and each (image, condition)'s answer from the last layer (None
        everywhere where the last layer is not one of `layers`)."""
        if self.answer_position is None:
            vectors = self.embed_layers(images, conditions, on_progress)
            return vectors, [[None] * len(conditions) for _ in images]
        vectors, answers = self._embed(images, conditions, on_progress, answers=True)
        width = len(conditions)
        rows: list[list[Answer | None]] = [
            list(answers[i * width : (i + 1) * width]) for i in range(len(images))
        ]
        return vectors, rows

    def _embed(
        self,
        images: Sequence[Image.Image],
        conditions: Sequence[str | None],
        on_progress: ProgressCallback | None,
        answers: bool,
    ) -> tuple[np.ndarray, list[Answer]]:
        """Vectors (n_images, n_conditions, n_layers, dim) and, if asked, the answers of every
        (image, condition), image-major."""
        prompts = [build_prompt(self.settings.template, c) for c in conditions]
        images = [fit_within(image, self.settings.max_side) for image in images]
        if not images or not prompts:
            shape = (len(images), len(prompts), len(self.layers), self.dim)
            return np.empty(shape, dtype=np.float32), []
        # Images of one size in one batch: prefix rows (one image's tokens each) pad the least.
        order = np.arange(len(images))
        if self.throughput.group_by_size:
            order = np.argsort([image.width * image.height for image in images], kind="stable")
        ordered = [images[i] for i in order]
        decode = answers or self.reads_answer_tokens
        if self._prefix_reuse:
            try:
                vectors, found = self.embed_by_prefix(ordered, prompts, on_progress, decode)
            except ReadInPrefix as exc:
                log.info("%s: full forward passes for these prompts", exc)
                vectors, found = self.embed_full(ordered, prompts, on_progress, decode)
        else:
            vectors, found = self.embed_full(ordered, prompts, on_progress, decode)
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

    def embed_by_prefix(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        on_progress: ProgressCallback | None = None,
        answers: bool = False,
    ) -> tuple[np.ndarray, list[Answer]]:
        """`embed_layers` by prefix reuse: float32 (n_images, n_prompts, n_layers, dim), and
        the answers (image-major) if asked.

        `batch_size` bounds the suffix rows of a pass, as it bounds the rows of a full pass:
        a pass takes `batch_size // n_prompts` images (at least one).
        """
        out = np.empty((len(images), len(prompts), len(self.layers), self.dim), dtype=np.float32)
        decoding = AnswerDecoding(self)
        step = max(1, self.settings.batch_size // len(prompts))
        chunks = [images[start : start + step] for start in range(0, len(images), step)]
        done = 0
        try:
            for chunk, split in zip(chunks, self._splits(chunks, prompts), strict=True):
                vectors, to_decode = self.run_split(split, answers)
                out[done : done + len(chunk)] = vectors.reshape(
                    len(chunk), len(prompts), len(self.layers), self.dim
                )
                if to_decode is not None:
                    decoding.add(*to_decode)
                done += len(chunk)
                if on_progress is not None:
                    on_progress(len(chunk) * len(prompts))
        except PrefixReuseUnsupported as exc:
            self._stop_prefix_reuse(str(exc))
            out[done:], rest = self.embed_full(images[done:], prompts, on_progress, answers)
            found = decoding.finish()
            self._place_outputs(out[:done], decoding.outputs())
            return out, [*found, *rest]
        found = decoding.finish()
        self._place_outputs(out, decoding.outputs())
        return out, found

    def _place_outputs(self, out: np.ndarray, outputs: np.ndarray | None) -> None:
        """Where the vectors come from the answer's tokens, put them in `out` (images,
        prompts, layers, dim) in place of the last input's."""
        if self.reads_answer_tokens and outputs is not None:
            out[...] = outputs.reshape(out.shape)

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
            return split.pinned(self.activation_dtype)
        return split

    @torch.inference_mode()
    def embed_split(self, split: SplitBatch) -> np.ndarray:
        """The prefix pass, then the suffixes against its cache; float32 (rows, n_layers, dim).

        Packed (see `Throughput`), an image's suffixes run as one row against its own cache
        row; otherwise the cache is repeated per prompt and each suffix runs as its own row.
        """
        vectors, to_decode = self.run_split(split, answers=False)
        outputs = None if to_decode is None else self.decode_answers(*to_decode)[1]
        return vectors if outputs is None else outputs

    @torch.inference_mode()
    def run_split(
        self, split: SplitBatch, answers: bool
    ) -> tuple[np.ndarray, tuple[torch.Tensor, Decoder] | None]:
        """The last input's vectors of `embed_split`, and (if asked, and always where the
        vectors come from the answer's tokens) what decodes its rows' answers against the same
        cache: the last layer's states and a decoder."""
        answers = answers or self.reads_answer_tokens
        batch = split.to(
            self.device, self.activation_dtype, non_blocking=split.suffix_ids.is_pinned()
        )
        cache = self.prefix_pass(batch)
        if batch.prompts_per_image > 1 and self.throughput.packed_suffixes:
            try:
                states, decoder = self._packed_suffix_states(batch, cache)
                return self._finish(states, decoder if answers else None)
            except torch.OutOfMemoryError:
                raise  # not the mask's fault: a smaller batch is the cure
            except (RuntimeError, ValueError, TypeError, IndexError) as exc:
                # A model whose forward pass cannot take a custom mask: a cache row per prompt.
                self._stop_packing(first_line(exc))
                cache = self.prefix_pass(batch)  # the failed pass may have grown the cache
        if batch.prompts_per_image > 1:
            cache.batch_repeat_interleave(batch.prompts_per_image)
        states, decoder = self._suffix_states(batch, cache)
        return self._finish(states, decoder if answers else None)

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
        return to_numpy(self._suffix_states(batch, cache)[0][:, : len(self.layers)])

    def _suffix_states(self, batch: SplitBatch, cache: Any) -> tuple[torch.Tensor, Decoder]:
        """`suffix_pass`'s states on the device, and how to go on decoding from them."""
        repeats = batch.prompts_per_image
        prefix_mask = batch.prefix_inputs["attention_mask"].repeat_interleave(repeats, dim=0)
        steps = torch.arange(batch.suffix_ids.shape[1], device=batch.suffix_ids.device)
        starts = batch.next_position.repeat_interleave(repeats)
        mask = torch.cat([prefix_mask, batch.suffix_mask], dim=1)
        hidden = self._hidden(
            {
                "input_ids": batch.suffix_ids,
                "attention_mask": mask,
                "position_ids": starts[:, None] + steps,
            },
            cache=cache,
            use_cache=True,
        )
        last = last_token_index(batch.suffix_mask)
        states = self._read_states(hidden, last, starts=torch.zeros_like(last))
        lengths = batch.suffix_mask.long().sum(dim=1)
        return states, RowDecoder(self._step_hidden, cache, mask, starts + lengths)

    @torch.inference_mode()
    def packed_suffix_pass(self, batch: SplitBatch, cache: Any) -> np.ndarray:
        """Run the suffixes against `cache` as it left the prefix pass (one row per image):
        each image's suffixes packed into one row, each seeing its prefix and itself alone.
        float32 (rows, n_layers, dim), rows as `suffix_pass` gives them.
        """
        return to_numpy(self._packed_suffix_states(batch, cache)[0][:, : len(self.layers)])

    def _packed_suffix_states(self, batch: SplitBatch, cache: Any) -> tuple[torch.Tensor, Decoder]:
        """`packed_suffix_pass`'s states on the device, and how to go on decoding from them."""
        mask_dtype = self._mask_dtype()
        if mask_dtype is None:  # an attention that takes no custom mask: a row per prompt
            cache.batch_repeat_interleave(batch.prompts_per_image)
            return self._suffix_states(batch, cache)
        packed = pack_suffixes(batch, mask_dtype)
        hidden = self._hidden(packed.inputs, cache=cache, use_cache=True)
        ends = packed.ends
        images = torch.arange(ends.shape[0], device=ends.device)
        rows = images.repeat_interleave(ends.shape[1])
        starts = (ends - packed.lengths + 1).flatten()
        states = self._read_states(hidden, ends.flatten(), rows, starts)
        decoder = PackedDecoder.after_packing(
            self._step_hidden,
            cache,
            batch.prefix_inputs["attention_mask"],
            packed,
            batch.next_position,
            mask_dtype,
        )
        return states, decoder

    def _mask_dtype(self) -> torch.dtype | None:
        """The dtype of a custom 4-D mask for this model's attention; None where it takes none.

        SDPA takes a boolean mask (True: attend); eager attention adds a float mask.
        """
        implementation = self.model.config.get_text_config()._attn_implementation
        return {"sdpa": torch.bool, "eager": self.activation_dtype}.get(implementation)

    def embed_full(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        on_progress: ProgressCallback | None = None,
        answers: bool = False,
    ) -> tuple[np.ndarray, list[Answer]]:
        """`embed_layers` by a full forward pass per row: float32
        (n_images, n_prompts, n_layers, dim), and the answers (image-major) if asked."""
        rows = [(i, p) for i in range(len(images)) for p in range(len(prompts))]
        out = np.empty((len(images) * len(prompts), len(self.layers), self.dim), dtype=np.float32)
        found: list[Answer] = []
        step = self.settings.batch_size
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            vectors, chunk_answers = self.run_rows(
                [images[i] for i, _ in chunk], [prompts[p] for _, p in chunk], answers
            )
            out[start : start + len(chunk)] = vectors
            found += chunk_answers
            if on_progress is not None:
                on_progress(len(chunk))
        return out.reshape(len(images), len(prompts), len(self.layers), self.dim), found

    def embed_rows(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        """One forward pass over (image, prompt) rows; float32 (rows, dim), the first layer."""
        first: np.ndarray = self.embed_rows_layers(images, prompts)[:, 0]
        return first

    def embed_rows_layers(
        self, images: Sequence[Image.Image], prompts: Sequence[str]
    ) -> np.ndarray:
        """One forward pass over (image, prompt) rows; float32 (rows, n_layers, dim)."""
        return self.run_rows(images, prompts, answers=False)[0]

    @torch.inference_mode()
    def run_rows(
        self, images: Sequence[Image.Image], prompts: Sequence[str], answers: bool
    ) -> tuple[np.ndarray, list[Answer]]:
        """`embed_rows_layers`, and each row's answer decoded against the pass's cache."""
        from transformers import DynamicCache

        images = [fit_within(image, self.settings.max_side) for image in images]
        batch = self.inputs.build(images, prompts).to(self.device, self.activation_dtype)
        if not answers and not self.reads_answer_tokens:
            hidden = self._hidden(batch.inputs, use_cache=False)
            states = self._read_states(hidden, batch.last_index)
            return to_numpy(states[:, : len(self.layers)]), []
        cache = DynamicCache(config=self.model.config)
        hidden = self._hidden(batch.inputs, cache=cache, use_cache=True)
        states = self._read_states(hidden, batch.last_index)
        starts = self.inputs.next_positions(self.model, batch)
        decoder = RowDecoder(self._step_hidden, cache, batch.inputs["attention_mask"], starts)
        vectors, to_decode = self._finish(states, decoder)
        if to_decode is None:
            return vectors, []
        found, outputs = self.decode_answers(*to_decode)
        return (vectors if outputs is None else outputs), found if answers else []

    def _step_hidden(self, inputs: dict[str, torch.Tensor], **options: Any) -> list[torch.Tensor]:
        """What a decoding step reads: the last layer's states alone, or (where the vectors
        come from the answer's tokens) every layer read, as `_hidden`."""
        if self.reads_answer_tokens:
            return self._hidden(inputs, **options)
        return [self.model(**inputs, **options).last_hidden_state]

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
    def _last_states(
        hidden: list[torch.Tensor], last_index: torch.Tensor, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Each row's state at its last token, per layer: (rows, n_layers, dim) on the device.

        `rows`: the hidden-state row each output row is read from (default: one each).
        """
        if rows is None:
            rows = torch.arange(hidden[0].shape[0], device=hidden[0].device)
        return torch.stack([states[rows, last_index] for states in hidden], dim=1)

    def _read_states(
        self,
        hidden: list[torch.Tensor],
        last_index: torch.Tensor,
        rows: torch.Tensor | None = None,
        starts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Each row's states per layer read `num_token` from its last token (rows, n_read,
        dim); where that is not the last token, the states at the last token follow, which
        the answer is decoded from (see `_decode_column`).

        `starts`: where each row's own tokens begin in a suffix pass; a read position before
        it lies in the prefix pass (ReadInPrefix). None: a full pass, which holds the whole
        prompt (a position before its start is the user's error).
        """
        at_last = self._last_states(hidden, last_index, rows)
        if self._read_offset == 0:
            return at_last
        read_index = last_index + self._read_offset
        if starts is not None and bool((read_index < starts).any()):
            raise ReadInPrefix(
                f"--num-token {self.settings.num_token} lies before the conditions' own tokens "
                "in the prompt split for prefix reuse"
            )
        if starts is None and bool((read_index < 0).any()):
            shortest = int(last_index.min()) + 1
            raise UsageError(
                f"--num-token {self.settings.num_token} is before the start of a prompt of "
                f"{shortest} tokens (image included)"
            )
        return torch.cat([self._last_states(hidden, read_index, rows), at_last], dim=1)

    @property
    def _decode_column(self) -> int | None:
        """Where in `_read_states`' columns the last layer's state at the last token is."""
        if self._decode_position is None or self._read_offset == 0:
            return self._decode_position
        return len(self._hidden_indices) + self._decode_position

    def _finish(
        self, states: torch.Tensor, decoder: Decoder | None
    ) -> tuple[np.ndarray, tuple[torch.Tensor, Decoder] | None]:
        """The chosen layers' vectors as float32 numpy, and (where a decoder is given) the
        last layer's states at the last token with it, to decode the answers from."""
        vectors = to_numpy(states[:, : len(self.layers)])
        column = self._decode_column
        if decoder is None or column is None:
            return vectors, None
        return vectors, (states[:, column], decoder)

    def head_matrix(self) -> torch.Tensor:
        """The output head W_U (vocabulary x hidden) on the device, in the model's dtype: the
        input embeddings of a tied model, else `lm_head.weight` read from the checkpoint."""
        if self._head is None:
            if is_tied(self.config):
                self._head = self.model.get_input_embeddings().weight
            else:
                matrix = HeadRows(self.source, self.settings.revision, self.config).matrix()
                self._head = matrix.to(self.device, self.dtype)
        return self._head

    @torch.inference_mode()
    def decode_answers(
        self, states: torch.Tensor, decoder: Decoder
    ) -> tuple[list[Answer], np.ndarray | None]:
        """Greedy answers from the last layer's `states` (rows, dim): the first token from
        W_U h, the next ones by `decoder` steps against the cache, until each row's word is
        complete or `MAX_ANSWER_TOKENS`. Finished rows leave the steps.

        Where the vectors come from the answer's tokens, also those vectors: float32 (rows,
        n_layers, dim), the chosen layers' states as each answer token is fed back (see the
        module: the first token is always fed back; mean_output averages the fed ones).
        """
        head = self.head_matrix()
        tokenizer = self.inputs.tokenizer
        if self._stops is None:
            self._stops = stop_tokens(tokenizer, self.config)
        logits = (states.to(head.dtype) @ head.T).float()
        log_partition = torch.logsumexp(logits, dim=-1)
        logprobs = logits - log_partition[:, None]
        rows = states.shape[0]
        texts = [self.answer_text() for _ in range(rows)]
        active = torch.ones(rows, dtype=torch.bool)
        outputs = (
            AnswerTokenStates(self.embedding_source, rows) if self.reads_answer_tokens else None
        )
        for number in range(defaults.MAX_ANSWER_TOKENS):
            best, tokens = logprobs.max(dim=-1)
            # One copy to the host a step, not two per row.
            best_host, tokens_host = best.tolist(), tokens.tolist()
            for row in torch.nonzero(active).flatten().tolist():
                texts[row].add(tokens_host[row], best_host[row], tokenizer, self._stops)
            active = torch.tensor([not text.done for text in texts])
            # The first answer token is fed back even where it ends the answer: its state is
            # first_output (and all of mean_output).
            fed = active | torch.tensor(number == 0 and self.reads_answer_tokens)
            if not fed.any():
                break
            hidden = decoder.step(tokens, fed.to(tokens.device))
            if outputs is not None:
                outputs.add(hidden[:, : len(self.layers)], fed)
            last = hidden[:, self._decode_position if self.reads_answer_tokens else 0]
            logprobs = torch.log_softmax((last.to(head.dtype) @ head.T).float(), dim=-1)
        found = [
            Answer(text.word(), text.logprob, float(z))
            for text, z in zip(texts, log_partition.tolist(), strict=True)
        ]
        return found, None if outputs is None else outputs.vectors()

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


class ReadInPrefix(Exception):
    """The vector's token lies in the prefix pass of prefix reuse: run full passes instead."""


@dataclass(frozen=True)
class Packed:
    """An image's suffixes packed into one row: the model inputs, where each suffix ends
    (images, prompts), each suffix's length, and the prompt owning each packed column
    (-1: padding)."""

    inputs: dict[str, torch.Tensor]
    ends: torch.Tensor
    lengths: torch.Tensor
    owner: torch.Tensor


def pack_suffixes(batch: SplitBatch, mask_dtype: torch.dtype) -> Packed:
    """Model inputs that run each image's suffixes as one row, and where each suffix ends.

    Row i holds image i's suffixes' real tokens one after another. A token sees its image's
    prefix (the cache) and the earlier tokens of its own suffix, at the positions it has alone.
    """
    n_images, n_prompts = batch.next_position.shape[0], batch.prompts_per_image
    width = batch.suffix_ids.shape[1]
    device = batch.suffix_ids.device
    real = batch.suffix_mask.bool().reshape(n_images, n_prompts, width)
    lengths = real.sum(dim=2)
    ends = lengths.cumsum(dim=1) - 1
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
    mask = attention_mask(torch.cat([prefix, own], dim=2)[:, None], mask_dtype)
    positions = batch.next_position[:, None] + steps
    inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
    return Packed(inputs, ends, lengths, owner)


def attention_mask(allowed: torch.Tensor, mask_dtype: torch.dtype) -> torch.Tensor:
    """A 4-D mask from where attention is allowed: boolean (SDPA), or additive (eager)."""
    if mask_dtype == torch.bool:
        return allowed
    mask = torch.zeros(allowed.shape, dtype=mask_dtype, device=allowed.device)
    return mask.masked_fill_(~allowed, torch.finfo(mask_dtype).min)


def to_numpy(states: torch.Tensor) -> np.ndarray:
    vectors: np.ndarray = states.float().cpu().numpy()
    return vectors


# A forward pass that returns the hidden states a decoding step reads, one (rows, tokens, dim)
# tensor per layer read (the embedder's `_step_hidden`).
StepRun = Callable[..., list[torch.Tensor]]


class AnswerTokenStates:
    """The chosen layers' states as each row's answer tokens are fed back: the first one
    (first_output) or their running sum and count (mean_output)."""

    def __init__(self, source: str, rows: int) -> None:
        self.source = source
        self.first: torch.Tensor | None = None
        self.total: torch.Tensor | None = None
        self.count = torch.zeros(rows)

    def add(self, hidden: torch.Tensor, fed: torch.Tensor) -> None:
        """`hidden` (rows, n_layers, dim): a step's states; `fed`: the rows it fed a token."""
        if self.first is None:
            self.first = hidden.float()
        if self.source == "mean_output":
            kept = hidden.float() * fed.to(hidden.device)[:, None, None]
            self.total = kept if self.total is None else self.total + kept
            self.count += fed.float()

    def vectors(self) -> np.ndarray:
        """float32 (rows, n_layers, dim)."""
        if self.first is None:
            raise ValueError("no answer token was fed back")
        if self.source == "first_output" or self.total is None:
            return to_numpy(self.first)
        return to_numpy(self.total / self.count.to(self.total.device)[:, None, None])


class Decoder:
    """One greedy step for every (image, prompt) row still decoding, against the KV cache of
    the pass that made the vectors."""

    cache: Any

    def step(self, tokens: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """Run `tokens` (one per row) of the `active` rows; the states the step reads at each
        row's new token (rows, layers read, dim; rows not active: zeros)."""
        raise NotImplementedError

    @property
    def width(self) -> int:
        """Columns of the cache (its sequence length)."""
        return int(self.cache.get_seq_length())


class AnswerDecoding:
    """Answers of several passes decoded together: their caches joined (right-padded to one
    width, what a row may see said by its mask), so that each decoding step reads the model's
    weights once for up to `Throughput.answer_rows` rows."""

    def __init__(self, embedder: DiorEmbedder) -> None:
        self.embedder = embedder
        self.waiting: list[tuple[torch.Tensor, Decoder]] = []
        self.answers: list[Answer] = []
        # Where the vectors come from the answer's tokens: theirs, in the order of the rows.
        self.states: list[np.ndarray] = []

    def add(self, states: torch.Tensor, decoder: Decoder) -> None:
        self.waiting.append((states, decoder))
        if sum(len(s) for s, _ in self.waiting) >= self.embedder.throughput.answer_rows:
            self.flush()

    def flush(self) -> None:
        decoders = [decoder for _, decoder in self.waiting]
        joined = join_decoders(decoders) if len(decoders) > 1 else None
        if joined is not None:
            states = torch.cat([states for states, _ in self.waiting])
            self.take(*self.embedder.decode_answers(states, joined))
        else:
            for states, decoder in self.waiting:
                self.take(*self.embedder.decode_answers(states, decoder))
        self.waiting = []

    def take(self, answers: list[Answer], outputs: np.ndarray | None) -> None:
        self.answers += answers
        if outputs is not None:
            self.states.append(outputs)

    def finish(self) -> list[Answer]:
        self.flush()
        return self.answers

    def outputs(self) -> np.ndarray | None:
        """The vectors read from the answers' tokens (rows, n_layers, dim), once finished;
        None where none were read."""
        return np.concatenate(self.states) if self.states else None


def join_caches(caches: Sequence[Any]) -> Any | None:
    """One cache of the rows of `caches`, each right-padded with zeros to the widest; None
    where a layer is not a plain dynamic one (sliding windows keep more state)."""
    from transformers.cache_utils import DynamicLayer

    layers = [cache.layers for cache in caches]
    if any(type(layer) is not DynamicLayer for group in layers for layer in group):
        return None
    joined = caches[0]
    width = max(cache.get_seq_length() for cache in caches)
    for number, layer in enumerate(joined.layers):

        def padded(tensor: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.pad(tensor, (0, 0, 0, width - tensor.shape[-2]))

        layer.keys = torch.cat([padded(group[number].keys) for group in layers])
        layer.values = torch.cat([padded(group[number].values) for group in layers])
    return joined


def pad_columns(tensor: torch.Tensor, width: int, value: int) -> torch.Tensor:
    """A (rows, columns) tensor right-padded with `value` to `width` columns."""
    return torch.nn.functional.pad(tensor, (0, width - tensor.shape[1]), value=value)


def join_decoders(decoders: Sequence[Decoder]) -> Decoder | None:
    """One decoder of the rows of `decoders` (all of one kind), their caches joined; None where
    they cannot be (mixed kinds, or caches that are not plain dynamic ones)."""
    width = max(decoder.width for decoder in decoders)
    if all(isinstance(d, RowDecoder) for d in decoders):
        rows = [d for d in decoders if isinstance(d, RowDecoder)]
        cache = join_caches([d.cache for d in rows])
        if cache is None:
            return None
        mask = torch.cat([pad_columns(d.mask, width, 0) for d in rows])
        return RowDecoder(rows[0].run, cache, mask, torch.cat([d.next_position for d in rows]))
    if all(isinstance(d, PackedDecoder) for d in decoders):
        packed = [d for d in decoders if isinstance(d, PackedDecoder)]
        if len({d.n_prompts for d in packed}) > 1:
            return None
        cache = join_caches([d.cache for d in packed])
        if cache is None:
            return None
        owner = torch.cat([pad_columns(d.owner, width, HIDDEN) for d in packed])
        positions = torch.cat([d.next_position for d in packed])
        return PackedDecoder(packed[0].run, cache, owner, positions, packed[0].mask_dtype)
    return None


class RowDecoder(Decoder):
    """A cache row per (image, prompt): each step a token per row, with a 2-D mask over the
    row's cache (pads hidden) and the row's own explicit position. Finished rows are dropped
    from the cache."""

    def __init__(
        self, run: StepRun, cache: Any, mask: torch.Tensor, next_position: torch.Tensor
    ) -> None:
        self.run, self.cache = run, cache
        self.mask, self.next_position = mask, next_position
        self.rows = torch.arange(mask.shape[0], device=mask.device)

    def step(self, tokens: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        keep = active[self.rows]
        if not keep.all():
            kept = torch.nonzero(keep).flatten()
            self.cache.batch_select_indices(kept)
            self.rows, self.mask = self.rows[kept], self.mask[kept]
            self.next_position = self.next_position[kept]
        ones = torch.ones((len(self.rows), 1), dtype=self.mask.dtype, device=self.mask.device)
        self.mask = torch.cat([self.mask, ones], dim=1)
        hidden = self.run(
            {
                "input_ids": tokens[self.rows][:, None],
                "attention_mask": self.mask,
                "position_ids": self.next_position[:, None],
            },
            cache=self.cache,
            use_cache=True,
        )
        self.next_position = self.next_position + 1
        states = torch.stack([layer[:, 0] for layer in hidden], dim=1)  # (kept, layers, dim)
        out = states.new_zeros((tokens.shape[0], *states.shape[1:]))
        out[self.rows] = states
        return out


# Who may see a cache column of a packed row: every prompt of its image (the image's prefix),
# none (padding), or one prompt (its suffix and answer tokens: that prompt's number).
SHARED, HIDDEN = -2, -1


class PackedDecoder(Decoder):
    """A cache row per image (its packed suffixes): each step one token per prompt in the
    image's row, each seeing the image's prefix and its own prompt's columns (4-D mask).
    Images whose prompts have all finished are dropped from the cache."""

    def __init__(
        self,
        run: StepRun,
        cache: Any,
        owner: torch.Tensor,
        next_position: torch.Tensor,
        mask_dtype: torch.dtype,
    ) -> None:
        """`owner`: per image and cache column, SHARED, HIDDEN or the prompt it belongs to;
        `next_position`: per image and prompt, the position of its next token."""
        self.run, self.cache, self.mask_dtype = run, cache, mask_dtype
        self.owner, self.next_position = owner, next_position
        self.images = torch.arange(owner.shape[0], device=owner.device)
        self.n_prompts = next_position.shape[1]

    @classmethod
    def after_packing(
        cls,
        run: StepRun,
        cache: Any,
        prefix_mask: torch.Tensor,
        packed: Packed,
        next_position: torch.Tensor,
        mask_dtype: torch.dtype,
    ) -> PackedDecoder:
        """The decoder of a packed suffix pass: the prefix (its real tokens) seen by every
        prompt, each packed column by its own prompt."""
        prefix = torch.where(prefix_mask.bool(), SHARED, HIDDEN)
        owner = torch.cat([prefix, packed.owner], dim=1)
        return cls(run, cache, owner, next_position[:, None] + packed.lengths, mask_dtype)

    def step(self, tokens: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        keep = active.reshape(-1, self.n_prompts)[self.images].any(dim=1)
        if not keep.all():
            kept = torch.nonzero(keep).flatten()
            self.cache.batch_select_indices(kept)
            self.images, self.owner = self.images[kept], self.owner[kept]
            self.next_position = self.next_position[kept]
        n = len(self.images)
        prompts = torch.arange(self.n_prompts, device=self.owner.device)
        self.owner = torch.cat([self.owner, prompts.expand(n, -1)], dim=1)
        seen = (self.owner[:, None, :] == SHARED) | (
            self.owner[:, None, :] == prompts[None, :, None]
        )
        hidden = self.run(
            {
                "input_ids": tokens.reshape(-1, self.n_prompts)[self.images],
                "attention_mask": attention_mask(seen[:, None], self.mask_dtype),
                "position_ids": self.next_position,
            },
            cache=self.cache,
            use_cache=True,
        )
        self.next_position = self.next_position + 1
        states = torch.stack(hidden, dim=2)  # (kept images, prompts, layers, dim)
        out = states.new_zeros((tokens.shape[0] // self.n_prompts, *states.shape[1:]))
        out[self.images] = states
        return out.reshape(tokens.shape[0], *states.shape[2:])


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
