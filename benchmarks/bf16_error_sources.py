"""Where bf16 moves the bundled model's embeddings away from fp32's, part by part.

    python benchmarks/bf16_error_sources.py --images 200 --write

The synthetic test split's first --images images under its four conditions and none, embedded
by the bundled model in fp32 and then in forms that each put one part of the model in bf16;
the cosine per row (image x condition) with fp32, min and mean, and how many rows fall below
0.999. Forms:

- `weights rounded`: every weight rounded to bf16, everything computed in fp32;
- `bf16 throughout`: the model loaded in bf16 (the residual stream, norms and attention too);
- `products, bias rounded`: bf16 products whose bias is added before the output is rounded
  (`F.linear` in bf16), fp32 between them;
- `products`: bf16 products, the bias added in fp32 afterwards, fp32 between them;
- `products, q/k in fp32` (what `--dtype bfloat16` runs on a CPU, models.precision): as
  `products`, with attention's query and key projections in fp32;
- `only q/k products`: only the query and key projections in bf16, everything else fp32.

`bf16 throughout` is also read at every layer (hidden states 1 to 4), to show where it grows.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from dtype_agreement import SYNTHETIC_CONDITIONS, row_cosines, synthetic_images
from torch import nn

from dior_search.models import precision
from dior_search.models.dior import DiorEmbedder
from dior_search.models.settings import DiorSettings


class BiasRoundedLinear(nn.Linear):
    """A bf16 product with its bias added in bf16, then the output cast to fp32."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(torch.bfloat16)
        return F.linear(input.to(torch.bfloat16), self.weight, bias).float()


def loaded(dtype: str, layers: list[int] | None = None) -> DiorEmbedder:
    precision.CPU_MIXED = False  # each form is made here, from a model loaded in `dtype`
    try:
        return DiorEmbedder(DiorSettings(model="tiny", device="cpu", dtype=dtype), layers)
    finally:
        precision.CPU_MIXED = True


def mixed(keep_fp32: Callable[[str], bool], linear: type[nn.Linear]) -> DiorEmbedder:
    embedder = loaded("bfloat16")
    precision.make_mixed(embedder.model, keep_fp32)
    if linear is not precision.MixedLinear:
        for module in embedder.model.modules():
            if isinstance(module, precision.MixedLinear):
                module.__class__ = linear
    embedder.loaded.activation_dtype = torch.float32
    return embedder


def weights_rounded() -> DiorEmbedder:
    embedder = loaded("float32")
    for module in embedder.model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding, nn.Conv3d)):
            for parameter in module.parameters(recurse=False):
                parameter.data = parameter.data.bfloat16().float()
    return embedder


def query_or_key(name: str) -> bool:
    return precision.query_and_key_projections(name)


def forms() -> dict[str, Callable[[], DiorEmbedder]]:
    return {
        "weights rounded": weights_rounded,
        "bf16 throughout": lambda: loaded("bfloat16"),
        "products, bias rounded": lambda: mixed(lambda name: False, BiasRoundedLinear),
        "products": lambda: mixed(lambda name: False, precision.MixedLinear),
        "products, q/k in fp32": lambda: mixed(query_or_key, precision.MixedLinear),
        "only q/k products": lambda: mixed(
            lambda name: not query_or_key(name), precision.MixedLinear
        ),
    }


def agreement(vectors: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    cosines = row_cosines(vectors, reference)
    return {
        "min": float(cosines.min()),
        "mean": float(cosines.mean()),
        "rows_below_0.999": int((cosines < 0.999).sum()),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--write", action="store_true", help="write benchmarks/results JSON")
    args = parser.parse_args(argv)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    torch.set_num_threads(1)
    images = synthetic_images(args.images)
    conditions: list[str | None] = [*SYNTHETIC_CONDITIONS, None]
    reference = loaded("float32").embed(images, conditions)
    by_form: dict[str, dict[str, float]] = {}
    for name, make in forms().items():
        by_form[name] = agreement(make().embed(images, conditions), reference)
        print(f"{name}: {by_form[name]}", flush=True)
    layers = [1, 2, 3, 4]
    fp32_layers = loaded("float32", layers).embed_layers(images, conditions)
    bf16_layers = loaded("bfloat16", layers).embed_layers(images, conditions)
    by_layer = {
        str(layer): agreement(bf16_layers[:, :, i], fp32_layers[:, :, i])
        for i, layer in enumerate(layers)
    }
    print(f"bf16 throughout, by layer: {by_layer}", flush=True)
    figures = {
        "images": args.images,
        "conditions": len(conditions),
        "rows": args.images * len(conditions),
        "cosine_with_fp32": by_form,
        "bf16_throughout_by_layer": by_layer,
    }
    if args.write:
        from results_file import write_results

        write_results("bf16_error_sources", figures, tag="tiny")
    return figures


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
