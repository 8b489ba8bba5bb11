"""Any other vision-language model (LLaVA, Idefics3, SmolVLM, ...) through its own processor."""

from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Any

import torch
from PIL import Image
from transformers import AutoProcessor

from dior_search.errors import ModelError
from dior_search.models.families.inputs import (
    ModelBatch,
    PrefixReuseUnsupported,
    SplitBatch,
    following_positions,
    last_token_index,
    processor_size_policy,
    right_pad,
    sequential_positions,
    shared_prefix_length,
    user_turn,
)
from dior_search.models.settings import PositionScheme


class ProcessorInputs:
    """Builds inputs with the model's `AutoProcessor` and its chat template."""

    def __init__(self, processor: Any, position_scheme: PositionScheme) -> None:
        self.processor = processor
        self.processor.tokenizer.padding_side = "right"
        self.position_scheme = position_scheme

    @classmethod
    def load(
        cls,
        source: str,
        *,
        revision: str | None,
        trust_remote_code: bool,
        position_scheme: PositionScheme,
        max_pixels: int | None,
    ) -> "ProcessorInputs":
        try:
            processor = AutoProcessor.from_pretrained(
                source, revision=revision, trust_remote_code=trust_remote_code
            )
        except (ImportError, ValueError, OSError) as exc:
            raise ModelError(f"cannot load the processor of {source!r}: {exc}") from None
        if not hasattr(processor, "tokenizer") or not hasattr(processor, "image_processor"):
            raise ModelError(f"{source!r} has no image-and-text processor")
        if getattr(processor, "chat_template", None) is None:
            raise ModelError(f"model {source!r} has no chat template in its processor")
        if max_pixels is not None:
            raise ModelError("--max-pixels applies to Qwen-VL models only")
        return cls(processor, position_scheme)

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    def next_positions(self, model: Any, batch: ModelBatch) -> torch.Tensor:
        # Under `native` too: the model's own positions for right-padded rows are 0, 1, 2, ...
        return following_positions(batch)

    def size_policy(self) -> dict[str, Any]:
        return processor_size_policy(self.processor.image_processor)

    def check_size(self, width: int, height: int) -> None:
        """Nothing known: these processors resize any image to their fixed input size."""

    def chat_text(self, prompt: str) -> str:
        """The chat-template text for one row, the image placeholder not yet expanded."""
        text: str = self.processor.apply_chat_template(
            user_turn(prompt), add_generation_prompt=True, tokenize=False
        )
        return text

    def build(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> ModelBatch:
        texts = [self.chat_text(p) for p in prompts]
        encoded = self.processor(
            text=texts, images=[[im] for im in images], padding=True, return_tensors="pt"
        )
        inputs = dict(encoded)
        mask = inputs["attention_mask"]
        if self.position_scheme == "reference":
            inputs["position_ids"] = sequential_positions(mask)
        return ModelBatch(inputs, last_token_index(mask))

    def split(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        model: Any,
        workers: Executor | None = None,
    ) -> SplitBatch:
        # `workers` is left unused: the processor expands text and images in one call.
        if self.position_scheme == "native" and hasattr(model, "get_rope_index"):
            raise PrefixReuseUnsupported(
                f"{type(model).__name__} places tokens with its own multimodal rotary index"
            )
        texts = [self.chat_text(p) for p in prompts]
        # The processor expands the image placeholder inside the text, so the tokens after the
        # image are the same with or without it: split the unexpanded rows, and expand only
        # the first prompt (each image processed once) to cut its own tail off as the prefix.
        rows: list[list[int]] = self.processor.tokenizer(texts)["input_ids"]
        n_shared = shared_prefix_length(rows)
        tails = [row[n_shared:] for row in rows]
        encoded = self.processor(
            text=[texts[0]] * len(images),
            images=[[im] for im in images],
            padding=True,
            return_tensors="pt",
        )
        ids: torch.Tensor = encoded["input_ids"]
        lengths = encoded["attention_mask"].sum(dim=1)
        prefix_lengths = lengths - len(tails[0])
        for row, start, end in zip(
            ids.tolist(), prefix_lengths.tolist(), lengths.tolist(), strict=True
        ):
            if row[start:end] != tails[0]:
                raise PrefixReuseUnsupported("the processor changes the tokens after the image")
        width = int(prefix_lengths.max())
        # Per-token tensors (ids, mask, token types) are cut to the prefix; pixels are kept.
        inputs = {name: t[:, :width] if t.shape == ids.shape else t for name, t in encoded.items()}
        mask = (torch.arange(width)[None] < prefix_lengths[:, None]).long()
        inputs["attention_mask"] = mask
        # Under `native` too: the model's own positions for right-padded rows are 0, 1, 2, ...
        inputs["position_ids"] = sequential_positions(mask)
        pad_id = self.processor.tokenizer.pad_token_id
        suffix_ids, suffix_mask = right_pad(tails * len(images), 0 if pad_id is None else pad_id)
        return SplitBatch(inputs, prefix_lengths, suffix_ids, suffix_mask)
