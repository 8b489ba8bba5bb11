"""DIOR's loaded model, and what a forward pass of it reads.

`DiorModel(settings, layers)` loads a vision-language model's base model (no LM head, so no
vocabulary-sized logits are ever computed) with its input builder, checks the hidden layers to
read, and drops the decoder layers after the deepest one where the decoder allows it. `hidden`
runs a pass and returns the chosen layers' states; `read_states` picks each row's vector from
them (`num_token` from its last token), with the last layer's state at the last token beside
it where an answer is decoded from there (see models.dior).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from dior_search import defaults
from dior_search.errors import ModelError, UsageError, first_line
from dior_search.models.families import InputBuilder, load_input_builder
from dior_search.models.loading import (
    load_model_config,
    resolve_device,
    resolve_dtype,
    resolve_model_source,
)
from dior_search.models.precision import make_mixed, query_and_key_projections, uses_mixed
from dior_search.models.settings import DiorSettings


class ReadInPrefix(Exception):
    """The vector's token lies in the prefix pass of prefix reuse: run full passes instead."""


class DiorModel:
    """A loaded vision-language model (Hub id or local path) and the hidden states it reads."""

    def __init__(self, settings: DiorSettings, layers: Sequence[int] | None = None) -> None:
        """`layers`: hidden-state indices to read from each forward pass; default the
        settings' one layer."""
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.source = resolve_model_source(settings.model)
        self.config = load_model_config(self.source, settings.revision, settings.trust_remote_code)
        self.dtype = resolve_dtype(settings.dtype, self.device, self.config)
        self.inputs: InputBuilder = load_input_builder(
            self.config,
            self.source,
            revision=settings.revision,
            trust_remote_code=settings.trust_remote_code,
            position_scheme=settings.position_scheme,
            max_pixels=settings.max_pixels,
        )
        self.model = load_weights(self.source, settings, self.dtype)
        # What flows between the matrix products: fp32 where bf16 runs mixed (on a CPU, see
        # models.precision), else the dtype the model was loaded in.
        self.activation_dtype = self.dtype
        if uses_mixed(self.dtype, self.device):
            make_mixed(self.model, keep_fp32=query_and_key_projections)
            self.activation_dtype = torch.float32
        text_config = self.config.get_text_config()
        self.n_layers: int = text_config.num_hidden_layers
        self.dim: int = text_config.hidden_size
        self.layers = [settings.layer] if layers is None else list(dict.fromkeys(layers))
        self.embedding_source = settings.source
        self.hidden_indices, self.decode_position = self.plan_reads(
            [self.checked_layer(layer) for layer in self.layers]
        )
        self.model.to(self.device).eval()
        # The read position's offset from each row's last token (0: the last token itself).
        self.read_offset = settings.num_token + 1

    def plan_reads(self, indices: list[int]) -> tuple[list[int | None], int | None]:
        """Which hidden states a pass returns for the layers at `indices` (None: the model's
        last hidden state), and where among them the last layer's are (None: nowhere).

        Drops the decoder layers after the deepest one read, where the decoder allows it."""
        if self.reads_answer_tokens and self.n_layers not in indices:
            # The answer is decoded from the last layer's states: read them too.
            indices = [*indices, self.n_layers]
        # Where in the states of a pass (and of a decoding step) the last layer's are.
        decode_position = indices.index(self.n_layers) if self.n_layers in indices else None
        deepest = max(indices)
        # Where the layers after the deepest chosen one can be dropped, the model's last hidden
        # state is that layer's; the others are read from the returned hidden states.
        stops_early = deepest == self.n_layers or keep_first_layers(self.model, deepest)
        hidden = [None if stops_early and index == deepest else index for index in indices]
        return hidden, decode_position

    def checked_layer(self, layer: int) -> int:
        """`layer`'s index among the hidden states (0..n_layers), UsageError where the model
        has no such layer or where it is the embedding layer."""
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
        return layer % (self.n_layers + 1)

    @property
    def reads_answer_tokens(self) -> bool:
        """Whether the vectors come from the decoded answer's tokens (not the last input)."""
        return self.embedding_source != defaults.DEFAULT_SOURCE

    @property
    def takes_cache(self) -> bool:
        """Whether the model's forward pass takes a KV cache (prefix reuse needs one)."""
        return "cache" in inspect.signature(self.model.forward).parameters

    def mask_dtype(self) -> torch.dtype | None:
        """The dtype of a custom 4-D mask for this model's attention; None where it takes none.

        SDPA takes a boolean mask (True: attend); eager attention adds a float mask.
        """
        implementation = self.model.config.get_text_config()._attn_implementation
        return {"sdpa": torch.bool, "eager": self.activation_dtype}.get(implementation)

    def hidden(self, inputs: dict[str, torch.Tensor], **options: Any) -> list[torch.Tensor]:
        """Each chosen layer's hidden states for `inputs`: (rows, tokens, dim) each."""
        if self.hidden_indices == [None]:
            return [self.model(**inputs, **options).last_hidden_state]
        outputs = self.model(**inputs, **options, output_hidden_states=True)
        return [
            outputs.last_hidden_state if index is None else outputs.hidden_states[index]
            for index in self.hidden_indices
        ]

    def step_hidden(self, inputs: dict[str, torch.Tensor], **options: Any) -> list[torch.Tensor]:
        """What a decoding step reads: the last layer's states alone, or (where the vectors
        come from the answer's tokens) every layer read, as `hidden`."""
        if self.reads_answer_tokens:
            return self.hidden(inputs, **options)
        return [self.model(**inputs, **options).last_hidden_state]

    def read_states(
        self,
        hidden: list[torch.Tensor],
        last_index: torch.Tensor,
        rows: torch.Tensor | None = None,
        starts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Each row's states per layer read `num_token` from its last token (rows, n_read,
        dim); where that is not the last token, the states at the last token follow, which
        the answer is decoded from (see `decode_column`).

        `rows`: the hidden-state row each output row is read from (default: one each).
        `starts`: where each row's own tokens begin in a suffix pass; a read position before
        it lies in the prefix pass (ReadInPrefix). None: a full pass, which holds the whole
        prompt (a position before its start is the user's error).
        """
        at_last = last_states(hidden, last_index, rows)
        if self.read_offset == 0:
            return at_last
        read_index = last_index + self.read_offset
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
        return torch.cat([last_states(hidden, read_index, rows), at_last], dim=1)

    @property
    def decode_column(self) -> int | None:
        """Where in `read_states`' columns the last layer's state at the last token is."""
        if self.decode_position is None or self.read_offset == 0:
            return self.decode_position
        return len(self.hidden_indices) + self.decode_position

    def vectors(self, states: torch.Tensor) -> np.ndarray:
        """The chosen layers' vectors out of `read_states`' columns: float32 numpy."""
        return to_numpy(states[:, : len(self.layers)])


def load_weights(source: str, settings: DiorSettings, dtype: torch.dtype) -> Any:
    """The base model of `source` (no LM head, so no vocabulary-sized logits are ever
    computed), in `dtype`; one-line ModelError where its weights do not load."""
    from transformers import AutoModel

    try:
        return AutoModel.from_pretrained(
            source,
            revision=settings.revision,
            dtype=dtype,
            trust_remote_code=settings.trust_remote_code,
        )
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model weights of {source!r}: {first_line(exc)}") from None


def last_states(
    hidden: list[torch.Tensor], last_index: torch.Tensor, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """Each row's state at its last token, per layer: (rows, n_layers, dim) on the device.

    `rows`: the hidden-state row each output row is read from (default: one each).
    """
    if rows is None:
        rows = torch.arange(hidden[0].shape[0], device=hidden[0].device)
    return torch.stack([states[rows, last_index] for states in hidden], dim=1)


def to_numpy(states: torch.Tensor) -> np.ndarray:
    vectors: np.ndarray = states.float().cpu().numpy()
    return vectors


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
