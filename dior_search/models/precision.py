"""bf16 on a CPU, precise: bf16 weights and matrix products, fp32 between them.

A model run wholly in bf16 keeps its residual stream, norms and attention in bf16 too, and
rounds every product's output, biases included, to bf16. On the bundled model that moved the
worst of 1,000 embeddings (200 synthetic test images x 5 conditions) to cosine 0.980 with
fp32. Measured layer by layer (docs/cpu.md): rounding the weights alone to bf16 costs almost
nothing (0.9999); what moves embeddings is the rounding of attention's query and key
projections, whose outputs become the attention logits: bf16 products there alone gave 0.95
on one row, while every other product in bf16, with fp32 between them, kept every row at
0.999 or more. The products are also where a CPU with bf16 instructions gains its speed.

`make_mixed(model)` turns a model loaded in bf16 into that mixed form, in place: every
`nn.Linear` keeps its bf16 weight (memory-mapped from a bf16 checkpoint, never copied),
multiplies its input in bf16 and adds its bias in fp32 (a bias rounded with the product lost
more than the product's own rounding); the linear layers `keep_fp32` names (the query and key
projections) run in fp32 on an fp32 copy of their weights; every `nn.Embedding` keeps its
bf16 table and hands fp32 rows on; every other parameter and buffer (norm weights, the vision
tower's patch convolution, rotary frequencies) becomes fp32, so the residual stream, norms and
attention run in fp32. The model then takes fp32 inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS = torch.bfloat16  # what the matrix products multiply
ACTIVATIONS = torch.float32  # what flows between them
# Whether bf16 on a CPU runs mixed; benchmarks set it False to measure bf16 run wholly in bf16.
CPU_MIXED = True


def uses_mixed(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether a model asked in `dtype` on `device` runs mixed: bf16 on a CPU (on CUDA, bf16
    runs as the GPU's kernels do, wholly in bf16)."""
    return CPU_MIXED and dtype == WEIGHTS and device.type == "cpu"


def query_and_key_projections(name: str) -> bool:
    """Whether the linear layer `name` makes attention's queries or keys (Qwen2, Llama and
    CLIP name them `q_proj` and `k_proj`)."""
    return name.rsplit(".", 1)[-1] in ("q_proj", "k_proj")


def make_mixed(
    model: nn.Module, keep_fp32: Callable[[str], bool] = lambda name: False
) -> nn.Module:
    """Turn `model` (loaded in bf16) into bf16 products with fp32 between them, in place; the
    linear layers whose names `keep_fp32` accepts run wholly in fp32 (their weights copied)."""
    for name, module in model.named_modules():
        # Only nn.Linear itself: a subclass may be read by its owner without its forward
        # (nn.MultiheadAttention's out_proj), so it runs in fp32 like any other module.
        if type(module) is nn.Linear and not keep_fp32(name):
            to_fp32_in_place(module, skip=("weight",))
            module.__class__ = MixedLinear
        elif isinstance(module, nn.Embedding):
            module.register_forward_hook(output_to_fp32)
        else:
            to_fp32_in_place(module)
    return model


class MixedLinear(nn.Linear):
    """A linear layer whose product runs in bf16 and whose bias is added in fp32: the bias
    (often larger than the product in attention's query and key projections) is not rounded
    with the product."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        output = F.linear(input.to(WEIGHTS), self.weight).to(ACTIVATIONS)
        return output if self.bias is None else output.add_(self.bias)


def to_fp32_in_place(module: nn.Module, skip: tuple[str, ...] = ()) -> None:
    """The floating parameters and buffers `module` holds itself (not its children's) as fp32,
    but those named in `skip`."""
    for name, parameter in module.named_parameters(recurse=False):
        if name not in skip and parameter.is_floating_point() and parameter.dtype != ACTIVATIONS:
            setattr(module, name, nn.Parameter(parameter.to(ACTIVATIONS), requires_grad=False))
    for name, buffer in module.named_buffers(recurse=False):
        if buffer is not None and buffer.is_floating_point() and buffer.dtype != ACTIVATIONS:
            setattr(module, name, buffer.to(ACTIVATIONS))


def output_to_fp32(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
    return output.to(ACTIVATIONS)
