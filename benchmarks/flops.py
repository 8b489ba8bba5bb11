"""Work accounting: floating-point operations of a DIOR embedding, from a Qwen2.5-VL config.

Counts the matrix products a forward pass needs, real tokens only (padding is waste, not
work), attention included: causal attention counts each query against the keys it may see.
A multiply-add is 2 FLOPs; norms, activations, rotary embeddings and softmax are left out (well
under 1% at 7B shapes). The vision tower counts its windowed and full-attention layers apart.

Peak dense bf16/fp16 tensor rates by device name, for the share of the hardware's limit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Dense (no sparsity) bf16/fp16 tensor-core peaks in TFLOPS from the vendors' datasheets.
# Matched in order on the name torch reports: the first row all of whose words appear wins.
PEAK_TFLOPS: list[tuple[tuple[str, ...], float]] = [
    (("GH200",), 989.0),
    (("H200", "NVL"), 835.0),
    (("H200",), 989.0),
    (("H100", "PCIe"), 756.0),
    (("H100", "NVL"), 835.0),
    (("H100",), 989.0),
    (("B200",), 2250.0),
    (("A100",), 312.0),
    (("L40S",), 362.0),
    (("L40",), 181.0),
    (("L4",), 121.0),
    (("A10",), 125.0),
    (("RTX", "4090"), 165.0),
]


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16/fp16 peak of a GPU named `device_name`, or None if not in the table."""
    for words, tflops in PEAK_TFLOPS:
        if all(word in device_name for word in words):
            return tflops
    return None


@dataclass(frozen=True)
class Work:
    """FLOPs of embedding some images under `prompts` prompts each, by part."""

    vision: float  # the vision tower over every image, once
    prefix: float  # the language model over each image's shared prefix, once
    suffixes: float  # the language model over every (image, prompt) suffix, after its prefix
    prompts: int

    def __add__(self, other: Work) -> Work:
        if other.prompts != self.prompts:
            raise ValueError("work under different numbers of prompts does not add up")
        return Work(
            self.vision + other.vision,
            self.prefix + other.prefix,
            self.suffixes + other.suffixes,
            self.prompts,
        )

    @property
    def by_prefix(self) -> float:
        """Prefix reuse: each image and prefix once, every suffix against it."""
        return self.vision + self.prefix + self.suffixes

    @property
    def full(self) -> float:
        """A full forward pass per (image, prompt): the image and prefix once per prompt.

        A causal pass over prefix + suffix costs exactly the prefix plus the suffix after it.
        """
        return self.prompts * (self.vision + self.prefix) + self.suffixes


def vision_flops(vision_config: Any, grids: Sequence[Sequence[int]]) -> float:
    """A Qwen2.5-VL vision tower over images of patch grids (t, h, w), merger included."""
    c = vision_config
    dim, inner = c.hidden_size, c.intermediate_size
    merge = c.spatial_merge_size
    patches = sum(t * h * w for t, h, w in grids)
    patch_embed = 2 * patches * c.in_channels * c.temporal_patch_size * c.patch_size**2 * dim
    # qkv and output projections; gate, up and down projections of the MLP.
    per_layer_linear = 2 * patches * (4 * dim * dim + 3 * dim * inner)
    full_layers = [i for i in range(c.depth) if i in set(c.fullatt_block_indexes)]
    window_layers = c.depth - len(full_layers)
    attention = 0.0
    for t, h, w in grids:
        # q k^T and weights v: 2 products of s x s x dim per segment of s patches (per frame).
        image = t * h * w * h * w  # one segment of h*w patches per frame
        windows = t * sum(s * s for s in window_lengths(h, w, c))
        attention += 4 * dim * (len(full_layers) * image + window_layers * windows)
    merged_dim = dim * merge**2
    merger = 2 * (patches // merge**2) * (merged_dim * merged_dim + merged_dim * c.out_hidden_size)
    return float(patch_embed + c.depth * per_layer_linear + attention + merger)


def window_lengths(h: int, w: int, vision_config: Any) -> list[int]:
    """Patches in each attention window of one frame of h x w patches (edge windows smaller)."""
    merge = vision_config.spatial_merge_size
    side = vision_config.window_size // merge // vision_config.patch_size  # in merged tokens
    rows, cols = h // merge, w // merge
    return [
        min(side, rows - top) * min(side, cols - left) * merge**2
        for top in range(0, rows, side)
        for left in range(0, cols, side)
    ]


def decoder_flops(text_config: Any, n_layers: int, n_new: int, n_past: int = 0) -> float:
    """`n_layers` decoder layers over one sequence of `n_new` tokens after `n_past` cached ones."""
    c = text_config
    dim, heads = c.hidden_size, c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or dim // heads
    kv = c.num_key_value_heads * head_dim
    linear = 2 * n_new * (2 * dim * heads * head_dim + 2 * dim * kv + 3 * dim * c.intermediate_size)
    # Query t (0-based among the new) sees n_past + t + 1 keys.
    keys_seen = n_new * n_past + n_new * (n_new + 1) // 2
    attention = 4 * heads * head_dim * keys_seen
    return float(n_layers * (linear + attention))


def split_work(
    config: Any,
    n_layers: int,
    grids: Sequence[Sequence[int]],
    prefix_lengths: Sequence[int],
    suffix_lengths: Sequence[Sequence[int]],
) -> Work:
    """The work of embedding images (patch grids, prefix lengths) under their suffixes.

    `suffix_lengths[i]` holds the real suffix length of each of image i's prompts.
    """
    text = config.get_text_config()
    prefix = sum(decoder_flops(text, n_layers, n) for n in prefix_lengths)
    suffixes = sum(
        decoder_flops(text, n_layers, n, n_past=past)
        for past, lengths in zip(prefix_lengths, suffix_lengths, strict=True)
        for n in lengths
    )
    prompts = {len(lengths) for lengths in suffix_lengths}
    if len(prompts) != 1:
        raise ValueError("every image must have the same number of prompts")
    return Work(vision_flops(config.vision_config, grids), prefix, suffixes, prompts.pop())


def batch_work(config: Any, n_layers: int, split: Any) -> Work:
    """The work of a `SplitBatch` (real tokens only), as `split_work` counts it."""
    n_images = split.next_position.shape[0]
    prompts = split.prompts_per_image
    suffix = split.suffix_mask.sum(dim=1).reshape(n_images, prompts).tolist()
    return split_work(
        config,
        n_layers,
        split.prefix_inputs["image_grid_thw"].tolist(),
        split.prefix_inputs["attention_mask"].sum(dim=1).tolist(),
        suffix,
    )


def tflops(flops: float, seconds: float) -> float:
    return flops / seconds / 1e12 if seconds > 0 else math.nan
