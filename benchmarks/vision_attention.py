"""An experiment for the GPU session: Qwen2.5-VL's vision attention as a few batched calls.

Without flash-attn, transformers runs the vision tower's attention as a Python loop: one SDPA
call per window (or per image, in full-attention layers), so a batch of 32 images at 448 x 448
makes 512 calls in each of 28 windowed layers. Here the segments of one length are gathered
into one batch and attended in one call: one call per distinct length (one for images of one
size). Same arithmetic, far fewer launches. It replaces the `forward` of each attention module
of a loaded model (`use_grouped_vision_attention`); `use_loop_vision_attention` undoes it. If
it pays on the GPU, it belongs in the package (models/), not here.
"""

from __future__ import annotations

import itertools
import types
from typing import Any

import torch
import torch.nn.functional as F


def grouped_forward(
    self: Any,
    hidden_states: torch.Tensor,
    cu_seqlens: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """Qwen2_5_VLVisionAttention.forward with the per-segment loop batched by length."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    n_tokens = hidden_states.shape[0]
    qkv = self.qkv(hidden_states).reshape(n_tokens, 3, self.num_heads, -1).permute(1, 0, 2, 3)
    query, key, value = qkv.unbind(0)  # (tokens, heads, head_dim)
    cos, sin = position_embeddings  # type: ignore[misc]
    query, key = apply_rotary_pos_emb_vision(query, key, cos, sin)
    bounds = cu_seqlens.tolist()
    segments = [(start, end - start) for start, end in itertools.pairwise(bounds)]
    out = torch.empty_like(query)
    for length in sorted({n for _, n in segments}):
        starts = [start for start, n in segments if n == length]
        index = None  # every segment this long: a plain reshape, no gather
        if len(starts) < len(segments):
            offsets = torch.arange(length, device=query.device)
            index = (torch.tensor(starts, device=query.device)[:, None] + offsets).reshape(-1)
        q, k, v = (
            (t if index is None else t[index]).reshape(-1, length, *t.shape[1:]).transpose(1, 2)
            for t in (query, key, value)
        )
        attended = F.scaled_dot_product_attention(q, k, v, scale=self.scaling)
        attended = attended.transpose(1, 2).reshape(-1, *query.shape[1:])
        if index is None:
            out = attended
        else:
            out[index] = attended
    return self.proj(out.reshape(n_tokens, -1))  # type: ignore[no-any-return]


def attention_modules(model: Any) -> list[Any]:
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLVisionAttention

    return [m for m in model.modules() if isinstance(m, Qwen2_5_VLVisionAttention)]


def use_grouped_vision_attention(model: Any) -> int:
    """Batch the vision attention of `model`; how many modules were changed."""
    modules = attention_modules(model)
    for module in modules:
        module.forward = types.MethodType(grouped_forward, module)
    return len(modules)


def use_loop_vision_attention(model: Any) -> None:
    """Back to the model's own vision attention."""
    for module in attention_modules(model):
        module.__dict__.pop("forward", None)
