"""The DIOR embedder: the last input token's hidden state of a vision-language model.

`DiorEmbedder` is the entry point; its parts live beside it: the loaded model and which states
it reads (models.dior_model), the forward passes (models.dior_passes, packed suffixes in
models.dior_packed_suffixes) and the answers' decoding (models.dior_decoding).

Each (image, condition) row is prompted with the chosen template in the model's chat template
(generation prompt added); nothing is generated. Rows are right-padded in a batch and read at
their own last real token, so a batched embedding equals the one-at-a-time embedding.

An image's prompts differ only in their last few tokens, so by default the shared prefix (chat
header, image, prompt text up to the condition) runs once per image with its KV cache kept, and
all condition suffixes then run as one batch against it. Layers after the chosen one are never
run, and the base model has no LM head.

`embed_with_answers` also reads the model's own one-word answer to every prompt (see
models.answers and models.dior_decoding): the output head (only `lm_head.weight`, or the tied
input embeddings) applied to the last layer's vector gives the first token, and the next ones
are decoded greedily against the KV cache the embedding pass leaves, a token per (image,
condition) a step.

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

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from PIL import Image

from dior_search.data.images import fit_within
from dior_search.models.answers import Answer, AnswerText
from dior_search.models.dior_decoding import AnswerReader
from dior_search.models.dior_model import DiorModel
from dior_search.models.dior_passes import Passes, Throughput
from dior_search.models.embedder import AnswerState, EmbedderDescription, ProgressCallback
from dior_search.models.families import InputBuilder, check_image_size
from dior_search.models.loading import describe_loaded
from dior_search.models.prompts import build_prompt
from dior_search.models.settings import DiorSettings

__all__ = ["DiorEmbedder", "Throughput", "one_layer"]

# The model's answer to each (image, condition): `answers[image][condition]`, None where the
# vectors are not the last layer's.
Answers = list[list[Answer | None]]


class DiorEmbedder:
    """DIOR embeddings from a Hugging Face vision-language model (Hub id or local path).

    The entry points, one per need: `embed` (the vectors), `embed_with_answers` (and the
    model's answers), `embed_layers` and `embed_layers_with_answers` (the same at each of
    several layers, from one forward pass), and `embed_rows` (one plain forward pass over given
    (image, prompt) rows: the reference the other paths equal).
    """

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
        self.settings = settings
        self.loaded = DiorModel(settings, layers)
        self.answer_reader = AnswerReader(self.loaded)
        feeding = throughput or Throughput.for_device(self.loaded.device)
        self.passes = Passes(self.loaded, self.answer_reader, feeding, settings.prefix_reuse)

    # What was loaded (read by tests and benchmarks that drive the model themselves).
    @property
    def model(self) -> Any:
        return self.loaded.model

    @property
    def config(self) -> Any:
        return self.loaded.config

    @property
    def inputs(self) -> InputBuilder:
        return self.loaded.inputs

    @property
    def device(self) -> torch.device:
        return self.loaded.device

    @property
    def dtype(self) -> torch.dtype:
        return self.loaded.dtype

    @property
    def activation_dtype(self) -> torch.dtype:
        """What flows between the matrix products (fp32 where bf16 runs mixed on a CPU)."""
        return self.loaded.activation_dtype

    @property
    def source(self) -> str:
        """Where the model was loaded from: a bundled model's folder, a Hub id or a path."""
        return self.loaded.source

    @property
    def n_layers(self) -> int:
        return self.loaded.n_layers

    @property
    def layers(self) -> list[int]:
        """The hidden-state indices each forward pass reads, as asked."""
        return self.loaded.layers

    @property
    def dim(self) -> int:
        return self.loaded.dim

    @property
    def throughput(self) -> Throughput:
        """How batches are fed (a benchmark may swap it between calls)."""
        return self.passes.throughput

    @throughput.setter
    def throughput(self, throughput: Throughput) -> None:
        self.passes.throughput = throughput

    @property
    def answer_text(self) -> type[AnswerText]:
        """How an answer is cut from its tokens (a benchmark may make every answer one
        length)."""
        return self.answer_reader.answer_text

    @answer_text.setter
    def answer_text(self, answer_text: type[AnswerText]) -> None:
        self.answer_reader.answer_text = answer_text

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
    ) -> tuple[np.ndarray, Answers]:
        """`embed`, and the model's answer to every (image, condition): `answers[i][c]`, None
        everywhere if the first of `layers` is not the last layer."""
        found = self.embed_layers_with_answers(images, conditions, on_progress)
        return one_layer(0, self.answer_position, *found)

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
    ) -> tuple[np.ndarray, Answers]:
        """`embed_layers`, and each (image, condition)'s answer from the last layer (None
        everywhere where the last layer is not one of `layers`)."""
        if self.answer_position is None:
            vectors = self.embed_layers(images, conditions, on_progress)
            return vectors, [[None] * len(conditions) for _ in images]
        vectors, answers = self._embed(images, conditions, on_progress, answers=True)
        width = len(conditions)
        rows: Answers = [list(answers[i * width : (i + 1) * width]) for i in range(len(images))]
        return vectors, rows

    def embed_rows(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        """One plain forward pass over (image, prompt) rows, no prefix reuse: float32
        (rows, dim), the first of `layers`."""
        first: np.ndarray = self.passes.rows(images, prompts, answers=False)[0][:, 0]
        return first

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
        return self.passes.embed(images, prompts, on_progress, answers)


def one_layer(
    position: int, answer_position: int | None, vectors: np.ndarray, answers: Answers
) -> tuple[np.ndarray, Answers]:
    """One of `layers` (by position) out of `embed_layers_with_answers`: its vectors, and
    the answers where it is the last layer (`answer_position`; None everywhere else)."""
    layer = np.ascontiguousarray(vectors[:, :, position])
    if answer_position != position:
        return layer, [[None] * vectors.shape[1] for _ in range(len(vectors))]
    return layer, answers
