"""Model families: how each kind of vision-language model gets its inputs built.

A family turns (image, prompt) rows into one right-padded batch of model inputs and says where
each row's last input token is. Everything else (loading, layers, batching) is shared by the
embedder. Qwen2-VL and Qwen2.5-VL assemble inputs themselves because their `AutoProcessor`
needs torchvision; any other model goes through its own `AutoProcessor`.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from PIL import Image

PositionScheme = Literal["reference", "native"]
POSITION_SCHEMES: tuple[PositionScheme, ...] = ("reference", "native")


@dataclass
class ModelBatch:
    """Inputs for one forward pass, and the index of each row's last real token."""

    inputs: dict[str, torch.Tensor]
    last_index: torch.Tensor

    def to(self, device: torch.device, dtype: torch.dtype) -> "ModelBatch":
        moved = {
            name: t.to(device, dtype) if t.is_floating_point() else t.to(device)
            for name, t in self.inputs.items()
        }
        return ModelBatch(moved, self.last_index.to(device))


class InputBuilder(Protocol):
    """Builds model inputs for rows of (image, prompt)."""

    def build(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> ModelBatch: ...

    def size_policy(self) -> dict[str, Any]:
        """How images are resized before encoding, for the index manifest."""
        ...


def user_turn(prompt: str) -> list[dict[str, Any]]:
    """One user message holding an image followed by the prompt text."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]


def sequential_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions 0, 1, 2, ... over each row's real tokens: the paper's released code's positions.

    Rows are right-padded, so the real tokens get exactly the positions an unpadded row gets.
    """
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each right-padded row."""
    return attention_mask.long().sum(dim=1) - 1


QWEN_MODEL_TYPES = frozenset({"qwen2_vl", "qwen2_5_vl"})


def load_input_builder(
    config: Any,
    source: str,
    *,
    revision: str | None,
    trust_remote_code: bool,
    position_scheme: PositionScheme,
    max_pixels: int | None,
) -> InputBuilder:
    """The input builder for a model with this `config`, loaded from `source`."""
    if config.model_type in QWEN_MODEL_TYPES:
        from dior_search.families.qwen_vl import QwenVLInputs

        return QwenVLInputs.load(
            source,
            config,
            revision=revision,
            trust_remote_code=trust_remote_code,
            position_scheme=position_scheme,
            max_pixels=max_pixels,
        )
    from dior_search.families.processor_vl import ProcessorInputs

    return ProcessorInputs.load(
        source,
        revision=revision,
        trust_remote_code=trust_remote_code,
        position_scheme=position_scheme,
        max_pixels=max_pixels,
    )
