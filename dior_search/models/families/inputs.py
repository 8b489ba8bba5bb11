"""What every model family shares: the batches it builds, the `InputBuilder` it implements, the
token and position helpers, and `load_input_builder`, which picks a checkpoint's family.

A family turns (image, prompt) rows into one right-padded batch of model inputs and says where
each row's last input token is. For prefix reuse it also splits each image's prompts at their
longest common token prefix and says where the suffixes' positions start. Everything else
(loading, layers, batching, the cache) is shared by the embedder. Qwen2-VL and Qwen2.5-VL
assemble inputs themselves because their `AutoProcessor` needs torchvision (families.qwen_vl);
any other model goes through its own `AutoProcessor` (families.processor_vl).
"""

from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from PIL import Image

from dior_search.data.images import fit_size
from dior_search.models.embedder import ImageRefused
from dior_search.models.settings import PositionScheme


def move(
    inputs: dict[str, torch.Tensor],
    device: torch.device,
    dtype: torch.dtype,
    non_blocking: bool = False,
) -> dict[str, torch.Tensor]:
    """`inputs` on `device`, floating-point tensors (pixels) cast to `dtype`.

    `non_blocking` copies from page-locked memory without waiting (see `pinned`).
    """
    return {
        name: t.to(device, dtype if t.is_floating_point() else t.dtype, non_blocking=non_blocking)
        for name, t in inputs.items()
    }


def pinned(inputs: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """`inputs` in page-locked host memory, floating-point tensors cast to `dtype` first.

    Cast here, a copy to the GPU is a plain copy that can run while the host goes on (a cast
    on the way would go through unpinned memory); bf16 pixels are also half the bytes.
    """
    return {
        name: (t.to(dtype) if t.is_floating_point() else t).pin_memory()
        for name, t in inputs.items()
    }


@dataclass
class ModelBatch:
    """Inputs for one forward pass, and the index of each row's last real token."""

    inputs: dict[str, torch.Tensor]
    last_index: torch.Tensor

    def to(self, device: torch.device, dtype: torch.dtype) -> "ModelBatch":
        return ModelBatch(move(self.inputs, device, dtype), self.last_index.to(device))


@dataclass
class SplitBatch:
    """Each image's prompts split at their longest common token prefix.

    `prefix_inputs` hold one right-padded row per image, images included and positions explicit.
    The suffixes hold one right-padded row per (image, prompt), image-major; suffix token `j` of
    image `i` sits at position `next_position[i] + j`.
    """

    prefix_inputs: dict[str, torch.Tensor]
    next_position: torch.Tensor
    suffix_ids: torch.Tensor
    suffix_mask: torch.Tensor

    @property
    def prompts_per_image(self) -> int:
        return self.suffix_ids.shape[0] // self.next_position.shape[0]

    def to(
        self, device: torch.device, dtype: torch.dtype, non_blocking: bool = False
    ) -> "SplitBatch":
        tokens = move(self._tokens(), device, dtype, non_blocking)
        return SplitBatch(move(self.prefix_inputs, device, dtype, non_blocking), **tokens)

    def pinned(self, dtype: torch.dtype) -> "SplitBatch":
        """This batch in page-locked host memory, ready for `to(..., non_blocking=True)`."""
        return SplitBatch(pinned(self.prefix_inputs, dtype), **pinned(self._tokens(), dtype))

    def _tokens(self) -> dict[str, torch.Tensor]:
        """The tensors besides `prefix_inputs`, by field name."""
        return {
            "next_position": self.next_position,
            "suffix_ids": self.suffix_ids,
            "suffix_mask": self.suffix_mask,
        }


class PrefixReuseUnsupported(Exception):
    """This model or processor cannot run a shared prefix once and its suffixes against it."""


class InputBuilder(Protocol):
    """Builds model inputs for rows of (image, prompt)."""

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (to read its answers)."""
        ...

    def next_positions(self, model: Any, batch: ModelBatch) -> torch.Tensor:
        """The position of the token after each row's last one (where its answer goes on)."""
        ...

    def check_size(self, width: int, height: int) -> None:
        """Raise ImageRefused if an image of this size (as the model gets it) cannot be built."""
        ...

    def chat_text(self, prompt: str) -> str:
        """The chat-template text of one row, its image placeholder not expanded."""
        ...

    def build(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> ModelBatch: ...

    def size_policy(self) -> dict[str, Any]:
        """How images are resized before encoding, for the index manifest."""
        ...

    def split(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        model: Any,
        workers: Executor | None = None,
    ) -> SplitBatch:
        """Every image under every prompt, split for prefix reuse; `model` gives positions.

        `workers`, where given, may process the images in parallel (a family may ignore it).
        Raises PrefixReuseUnsupported where the family cannot split these inputs.
        """
        ...


def check_image_size(inputs: InputBuilder, width: int, height: int, max_side: int | None) -> None:
    """ImageRefused, saying why, if `inputs` cannot build a `width` x `height` image once it
    is shrunk to `max_side`."""
    fitted = fit_size(width, height, max_side)
    try:
        inputs.check_size(*fitted)
    except ImageRefused as exc:
        shrunk = "" if fitted == (width, height) else f" (shrunk to {fitted[0]}x{fitted[1]})"
        raise ImageRefused(
            f"the model cannot take this {width}x{height} image{shrunk}: {exc}"
        ) from None


def processor_size_policy(image_processor: Any) -> dict[str, Any]:
    """How a transformers image processor resizes, for the index manifest."""
    return {
        "resize": type(image_processor).__name__,
        "size": dict(getattr(image_processor, "size", None) or {}),
        "crop_size": dict(getattr(image_processor, "crop_size", None) or {}),
    }


def user_turn(prompt: str) -> list[dict[str, Any]]:
    """One user message holding an image followed by the prompt text."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]


def sequential_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions 0, 1, 2, ... over each row's real tokens: the paper's released code's positions.

    Rows are right-padded, so the real tokens get exactly the positions an unpadded row gets.
    """
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def following_positions(batch: ModelBatch) -> torch.Tensor:
    """After each row's last token, where positions are explicit (2-D) or sequential."""
    positions = batch.inputs.get("position_ids")
    if positions is None or positions.dim() != 2:
        return batch.last_index + 1
    return positions.gather(1, batch.last_index[:, None])[:, 0] + 1


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each right-padded row."""
    return attention_mask.long().sum(dim=1) - 1


def shared_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of token rows, leaving each row at least one token."""
    limit = min(len(row) for row in rows) - 1
    first = rows[0]
    n = 0
    while n < limit and all(row[n] == first[n] for row in rows):
        n += 1
    return n


def right_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows as one right-padded id tensor and its attention mask."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[r, : len(row)] = 1
    return ids, mask


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
        from dior_search.models.families.qwen_vl import QwenVLInputs

        return QwenVLInputs.load(
            source,
            config,
            revision=revision,
            trust_remote_code=trust_remote_code,
            position_scheme=position_scheme,
            max_pixels=max_pixels,
        )
    from dior_search.models.families.processor_vl import ProcessorInputs

    return ProcessorInputs.load(
        source,
        revision=revision,
        trust_remote_code=trust_remote_code,
        position_scheme=position_scheme,
        max_pixels=max_pixels,
    )
