"""bf16 against fp32 on the same inputs, and fast feeding against plain, as cosines.

    python benchmarks/dtype_agreement.py --model-size 7b --model-dir /tmp/m7b --device cuda

Images of mixed sizes under several conditions, embedded by the same random-weight model
loaded in fp32 and in bf16. `plain` feeds the model as the embedder did before (one image
after another, a cache row per condition, no grouping, no pinning); `fast` uses the device's
defaults (benchmarks/profile_embed.py). Expected: fp32 fast = fp32 plain to cosine >= 0.9999
(batched = one at a time, on this device), bf16 fast within cosine 0.999 of fp32 plain.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from embed_throughput import BEFORE, CONDITIONS, load_embedder, parse
from PIL import Image

from dior_search.models.dior import DiorEmbedder, Throughput


def mixed_images(n: int, largest: int) -> list[Image.Image]:
    rng = np.random.default_rng(1)
    sides = rng.integers(largest // 3, largest + 1, size=(n, 2))
    return [
        Image.fromarray(rng.integers(0, 256, (int(h), int(w), 3), dtype=np.uint8)) for h, w in sides
    ]


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return float((a * b).sum(-1).min())


def embed_with(
    args: argparse.Namespace, folder: Path, dtype: str, throughputs: dict[str, Throughput | None]
) -> dict[str, np.ndarray]:
    """Load the model in `dtype` once; embed the images under each feeding."""
    args.dtype = dtype
    embedder: DiorEmbedder = load_embedder(args, folder)
    defaults = embedder.throughput
    images = mixed_images(args.images, args.image_size)
    conditions: list[str | None] = list(CONDITIONS[: args.conditions])
    out = {}
    for name, throughput in throughputs.items():
        embedder.throughput = throughput or defaults
        out[name] = embedder.embed(images, conditions)
        if not np.isfinite(out[name]).all():
            raise SystemExit(f"{dtype} {name}: embeddings that are not finite")
    del embedder
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Print and return the minimum cosines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="images of mixed sizes")
    parser.add_argument("--conditions", type=int, default=5, help="conditions per image")
    args = parse(parser, argv)
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.model_dir or Path(scratch)
        fp32 = embed_with(args, folder, "float32", {"plain": BEFORE, "fast": None})
        bf16 = embed_with(args, folder, "bfloat16", {"plain": BEFORE, "fast": None})
    cosines = {
        "fp32 fast vs fp32 plain": min_cosine(fp32["fast"], fp32["plain"]),
        "bf16 plain vs fp32 plain": min_cosine(bf16["plain"], fp32["plain"]),
        "bf16 fast vs fp32 plain": min_cosine(bf16["fast"], fp32["plain"]),
        "bf16 fast vs bf16 plain": min_cosine(bf16["fast"], bf16["plain"]),
    }
    print(f"{args.images} images of mixed sizes x {args.conditions} conditions, {args.device}")
    for name, value in cosines.items():
        print(f"  min cosine, {name}: {value:.6f}")
    return cosines


if __name__ == "__main__":
    main()
