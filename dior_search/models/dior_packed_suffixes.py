"""Packed suffixes: an image's condition suffixes run as one row against its prefix's KV cache.

Each suffix token sees its image's prefix (the cache) and the earlier tokens of its own suffix
alone, at the positions it would have in its own row (a 4-D mask), so the cache is never copied
per condition (see `Throughput.packed_suffixes` in models.dior_passes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dior_search.models.families import SplitBatch


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
