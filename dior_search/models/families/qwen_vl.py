"""Qwen2-VL and Qwen2.5-VL: inputs assembled from the tokenizer and the image processor.

Their `AutoProcessor` insists on a video processor that needs torchvision, so this module does
what the processor would: render the chat template, expand the one image placeholder into as
many tokens as the image has merged patches, and tokenize.
"""

from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Any

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer

from dior_search.errors import ModelError
from dior_search.models.embedder import ImageRefused
from dior_search.models.families.inputs import (
    ModelBatch,
    PrefixReuseUnsupported,
    SplitBatch,
    following_positions,
    last_token_index,
    right_pad,
    sequential_positions,
    shared_prefix_length,
    user_turn,
)
from dior_search.models.settings import PositionScheme

IMAGE_PLACEHOLDER = "<|image_pad|>"
# transformers' `smart_resize` (Qwen2-VL's image processor) refuses images whose longer side is
# more than this many times the shorter one; smaller images it scales up to `min_pixels`.
MAX_ASPECT_RATIO = 200


class QwenVLInputs:
    """Builds Qwen-VL inputs; positions follow the chosen scheme."""

    def __init__(
        self,
        tokenizer: Any,
        image_processor: Any,
        image_token_id: int,
        position_scheme: PositionScheme,
    ) -> None:
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "right"
        self.image_processor = image_processor
        self.image_token_id = image_token_id
        self.position_scheme = position_scheme
        self.merge_size: int = image_processor.merge_size
        # Token rows of the last prompt sets: every batch of an `embed` call has the same prompts.
        self._prompt_rows: dict[tuple[str, ...], list[list[int]]] = {}

    @classmethod
    def load(
        cls,
        source: str,
        config: Any,
        *,
        revision: str | None,
        trust_remote_code: bool,
        position_scheme: PositionScheme,
        max_pixels: int | None,
    ) -> "QwenVLInputs":
        common = {"revision": revision, "trust_remote_code": trust_remote_code}
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
        size_override = {} if max_pixels is None else {"max_pixels": max_pixels}
        # The PIL image processor: the torchvision-backed one is not importable everywhere.
        image_processor = AutoImageProcessor.from_pretrained(
            source, backend="pil", **size_override, **common
        )
        if getattr(tokenizer, "chat_template", None) is None:
            raise ModelError(f"model {source!r} has no chat template in its tokenizer")
        return cls(tokenizer, image_processor, config.image_token_id, position_scheme)

    def chat_text(self, prompt: str) -> str:
        """The chat-template text for one row, with its one image placeholder."""
        text: str = self.tokenizer.apply_chat_template(
            user_turn(prompt), add_generation_prompt=True, tokenize=False
        )
        if text.count(IMAGE_PLACEHOLDER) != 1:
            raise ModelError(f"the chat template must render exactly one {IMAGE_PLACEHOLDER}")
        return text

    def size_policy(self) -> dict[str, Any]:
        size = self.image_processor.size  # transformers 5 keeps pixel bounds as edges
        return {
            "resize": "aspect-preserving, to multiples of patch_size * merge_size",
            "min_pixels": size.shortest_edge,
            "max_pixels": size.longest_edge,
            "unit_pixels": self.image_processor.patch_size * self.merge_size,
        }

    def check_size(self, width: int, height: int) -> None:
        """The rules of transformers' `smart_resize`, which the image processor applies: an
        aspect ratio over 200 is refused, and the resized image must keep at least one unit
        (patch_size x merge_size pixels) a side."""
        ratio = max(width, height) / max(1, min(width, height))
        if ratio > MAX_ASPECT_RATIO:
            raise ImageRefused(
                f"its aspect ratio {ratio:g} is over {MAX_ASPECT_RATIO}, Qwen-VL's limit"
            )
        # Each side is rounded to whole units; a side that rounds to none is scaled up only
        # while the processor has a pixel minimum (it has one unless configured away).
        unit = self.image_processor.patch_size * self.merge_size
        rounds_to_nothing = round(height / unit) == 0 or round(width / unit) == 0
        if rounds_to_nothing and not self.image_processor.size.shortest_edge:
            raise ImageRefused(
                f"a side is under half a {unit}-pixel unit and the processor has no pixel "
                "minimum to scale it up"
            )

    def prompt_text(self, prompt: str, n_image_tokens: int) -> str:
        """The chat-template text for one row, the image placeholder expanded."""
        return self.chat_text(prompt).replace(IMAGE_PLACEHOLDER, IMAGE_PLACEHOLDER * n_image_tokens)

    def image_inputs(
        self, images: Sequence[Image.Image], workers: Executor | None = None
    ) -> tuple[dict[str, torch.Tensor], list[int]]:
        """Pixel inputs for `images`, and how many placeholder tokens each image takes.

        With `workers`, each image is processed on its own (resizing and patching are numpy and
        PIL work that runs outside the GIL) and the results joined: the same tensors.
        """
        if workers is None or len(images) < 2:
            pixels = self.image_processor(images=list(images), return_tensors="pt")
            values, grid = pixels["pixel_values"], pixels["image_grid_thw"]
        else:
            each = list(workers.map(self.one_image, images))
            values = torch.cat([p["pixel_values"] for p in each])
            grid = torch.cat([p["image_grid_thw"] for p in each])
        n_tokens: list[int] = (grid.prod(dim=-1) // self.merge_size**2).tolist()
        return {"pixel_values": values, "image_grid_thw": grid}, n_tokens

    def one_image(self, image: Image.Image) -> Any:
        return self.image_processor(images=[image], return_tensors="pt")

    def prompt_rows(self, prompts: Sequence[str]) -> list[list[int]]:
        """The token rows of `prompts` in the chat template, the image placeholder unexpanded."""
        key = tuple(prompts)
        if key not in self._prompt_rows:
            if len(self._prompt_rows) >= 8:
                self._prompt_rows.pop(next(iter(self._prompt_rows)))
            texts = [self.chat_text(p) for p in prompts]
            self._prompt_rows[key] = self.tokenizer(texts)["input_ids"]
        return self._prompt_rows[key]

    def build(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> ModelBatch:
        pixels, n_tokens = self.image_inputs(images)
        texts = [self.prompt_text(p, n) for p, n in zip(prompts, n_tokens, strict=True)]
        encoded = self.tokenizer(texts, padding=True, return_tensors="pt")
        input_ids: torch.Tensor = encoded["input_ids"]
        mask: torch.Tensor = encoded["attention_mask"]
        inputs = {"input_ids": input_ids, "attention_mask": mask, **pixels}
        if self.position_scheme == "reference":
            # A 2-D position tensor makes the model skip its multimodal rotary index: every
            # token, image tokens included, gets a plain sequential position, as in the paper.
            inputs["position_ids"] = sequential_positions(mask)
        else:
            inputs["mm_token_type_ids"] = (input_ids == self.image_token_id).int()
        return ModelBatch(inputs, last_token_index(mask))

    def split(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        model: Any,
        workers: Executor | None = None,
    ) -> SplitBatch:
        pixels, n_tokens = self.image_inputs(images, workers)
        # The placeholder is one special token, so the text around it tokenizes alike whether
        # it is expanded or not: split the short unexpanded rows, then expand the prefix.
        rows = self.prompt_rows(prompts)
        n_shared = shared_prefix_length(rows)
        shared = rows[0][:n_shared]
        if self.image_token_id not in shared:
            raise PrefixReuseUnsupported("the prompts differ before the image")
        at = shared.index(self.image_token_id)
        prefix_ids, prefix_mask = right_pad(
            [shared[:at] + [self.image_token_id] * n + shared[at + 1 :] for n in n_tokens],
            self.tokenizer.pad_token_id,
        )
        inputs = {"input_ids": prefix_ids, "attention_mask": prefix_mask, **pixels}
        inputs["position_ids"], next_position = self.prefix_positions(model, inputs)
        tails = [row[n_shared:] for row in rows]
        suffix_ids, suffix_mask = right_pad(tails * len(images), self.tokenizer.pad_token_id)
        return SplitBatch(inputs, next_position, suffix_ids, suffix_mask)

    def next_positions(self, model: Any, batch: ModelBatch) -> torch.Tensor:
        if self.position_scheme == "reference":
            return following_positions(batch)
        inputs = batch.inputs
        _, rope_deltas = model.get_rope_index(
            inputs["input_ids"],
            mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs["image_grid_thw"],
            attention_mask=inputs["attention_mask"],
        )
        deltas: torch.Tensor = rope_deltas.reshape(-1).to(batch.last_index.device)
        return batch.last_index + 1 + deltas

    def prefix_positions(
        self, model: Any, inputs: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions of the prefix tokens, and the position of each row's first suffix token."""
        mask = inputs["attention_mask"]
        lengths = mask.sum(dim=1)
        if self.position_scheme == "reference":
            return sequential_positions(mask), lengths
        # The model's multimodal rotary index: text after the image continues from the image
        # grid's largest position, so the suffix starts at the prefix length plus the rope delta.
        positions, rope_deltas = model.get_rope_index(
            inputs["input_ids"],
            mm_token_type_ids=(inputs["input_ids"] == self.image_token_id).int(),
            image_grid_thw=inputs["image_grid_thw"],
            attention_mask=mask,
        )
        return positions, lengths + rope_deltas.reshape(-1).to(lengths.device)
