"""Any other vision-language model (LLaVA, Idefics3, SmolVLM, ...) through its own processor."""

from collections.abc import Sequence
from typing import Any

from PIL import Image
from transformers import AutoProcessor

from dior_search.errors import ModelError
from dior_search.families import (
    ModelBatch,
    PositionScheme,
    last_token_index,
    sequential_positions,
    user_turn,
)


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

    def size_policy(self) -> dict[str, Any]:
        processor = self.processor.image_processor
        return {
            "resize": type(processor).__name__,
            "size": dict(getattr(processor, "size", None) or {}),
            "crop_size": dict(getattr(processor, "crop_size", None) or {}),
        }

    def build(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> ModelBatch:
        texts = [
            self.processor.apply_chat_template(
                user_turn(p), add_generation_prompt=True, tokenize=False
            )
            for p in prompts
        ]
        encoded = self.processor(
            text=texts, images=[[im] for im in images], padding=True, return_tensors="pt"
        )
        inputs = dict(encoded)
        mask = inputs["attention_mask"]
        if self.position_scheme == "reference":
            inputs["position_ids"] = sequential_positions(mask)
        return ModelBatch(inputs, last_token_index(mask))
