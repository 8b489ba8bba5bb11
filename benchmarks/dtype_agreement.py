"""bf16 against fp32 on the same inputs, and fast feeding against plain, as cosines.

    python benchmarks/dtype_agreement.py --model-size 7b --model-dir /tmp/m7b --device cuda
    python benchmarks/dtype_agreement.py --model-dir dior_search/models/tiny_model \
        --synthetic --images 40 --conditions 4 --feedings fast --write --tag tiny
    python benchmarks/dtype_agreement.py --bench fp32.json bf16.json --write --tag tiny-bench

`bfloat16` runs mixed on a CPU (models.precision); `--whole` also runs bf16 throughout (as
before the mixed form) against the same fp32 vectors.

`--synthetic` takes the synthetic test split's first images (what the bundled model knows)
instead of random ones. Each row's cosine (image x condition) is compared: the minimum and
the mean are printed. `--bench A B` compares two `dior-search bench --json` files instead
(recall@1 and MAP@R per dataset, condition and method, B minus A), e.g. the synthetic set
benched with `--dtype float32` and with `--dtype bfloat16`.

Images of mixed sizes under several conditions, embedded by the same random-weight model
loaded in fp32 and in bf16. `plain` feeds the model as the embedder did before (one image
after another, a cache row per condition, no grouping, no pinning); `fast` uses the device's
defaults (benchmarks/profile_embed.py). Expected: fp32 fast = fp32 plain to cosine >= 0.9999
(batched = one at a time, on this device), bf16 fast within cosine 0.999 of fp32 plain.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from cpu_probe import quantize_linear_layers
from embed_throughput import BEFORE, CONDITIONS, LOADED, load_embedder, parse
from PIL import Image

from dior_search.models import precision
from dior_search.models.dior import DiorEmbedder, Throughput

WHOLE_BF16 = "bfloat16-whole"


def mixed_images(n: int, largest: int) -> list[Image.Image]:
    rng = np.random.default_rng(1)
    sides = rng.integers(largest // 3, largest + 1, size=(n, 2))
    return [
        Image.fromarray(rng.integers(0, 256, (int(h), int(w), 3), dtype=np.uint8)) for h, w in sides
    ]


SYNTHETIC_CONDITIONS = ["color", "background", "pattern", "size"]


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The cosine of each vector of `a` with its counterpart in `b` (the last axis)."""
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return np.asarray((a * b).sum(-1)).ravel()


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(row_cosines(a, b).min())


def synthetic_images(n: int) -> list[Image.Image]:
    from dior_search.data.synthetic import iter_split

    return [image for _, image in iter_split("test", n)]


def bench_differences(before: Path, after: Path) -> dict[str, dict[str, float]]:
    """recall@1 and MAP@R of two `bench --json` files, and after minus before, per
    `dataset/condition/method`."""
    first, second = json.loads(before.read_text()), json.loads(after.read_text())
    out: dict[str, dict[str, float]] = {}
    for dataset, conditions in first.items():
        for condition, methods in conditions.items():
            for method, scores in methods.items():
                other = second[dataset][condition][method]
                row: dict[str, float] = {}
                for metric in ("recall@1", "map@r"):
                    row[metric] = scores[metric]
                    row[f"{metric} after"] = other[metric]
                    row[f"{metric} difference"] = other[metric] - scores[metric]
                out[f"{dataset}/{condition}/{method}"] = row
    return out


def embed_with(
    args: argparse.Namespace, folder: Path, dtype: str, throughputs: dict[str, Throughput | None]
) -> dict[str, np.ndarray]:
    """Load the model in `dtype` once; embed the images under each feeding. `bfloat16` runs
    mixed on a CPU (models.precision), `bfloat16-whole` wholly in bf16 as before it."""
    precision.CPU_MIXED = dtype != WHOLE_BF16
    args.dtype = {WHOLE_BF16: "bfloat16", "int8": "float32"}.get(dtype, dtype)
    try:
        embedder: DiorEmbedder = load_embedder(args, folder)
    finally:
        precision.CPU_MIXED = True
    if dtype == "int8":  # in place: the kept model is dropped after this dtype (below)
        quantize_linear_layers(embedder.model)
    defaults = embedder.throughput
    images = (
        synthetic_images(args.images)
        if args.synthetic
        else mixed_images(args.images, args.image_size)
    )
    # The synthetic set's own conditions (and none) for the model trained on it.
    named = [*SYNTHETIC_CONDITIONS, None] if args.synthetic else CONDITIONS
    conditions: list[str | None] = list(named[: args.conditions])
    out = {}
    for name, throughput in throughputs.items():
        embedder.throughput = throughput or defaults
        out[name] = embedder.embed(images, conditions)
        if not np.isfinite(out[name]).all():
            raise SystemExit(f"{dtype} {name}: embeddings that are not finite")
    del embedder
    LOADED.clear()  # load_embedder keeps a --model-dir's model: free it before the next dtype
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Print and return the minimum cosines (or, with --bench, the largest recall@1 change)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="images of mixed sizes")
    parser.add_argument("--conditions", type=int, default=5, help="conditions per image")
    parser.add_argument("--synthetic", action="store_true", help="synthetic test images")
    parser.add_argument(
        "--feedings", nargs="+", choices=["plain", "fast"], default=["plain", "fast"]
    )
    parser.add_argument(
        "--whole", action="store_true", help=f"also {WHOLE_BF16}: bf16 throughout, not mixed"
    )
    parser.add_argument(
        "--int8", action="store_true", help="also fp32 with linear layers quantised to int8"
    )
    parser.add_argument("--bench", nargs=2, type=Path, help="compare two bench --json files")
    parser.add_argument("--write", action="store_true", help="write benchmarks/results JSON")
    parser.add_argument("--tag", default="", help="the results file's tag")
    args = parse(parser, argv)
    if args.bench is not None:
        return compare_benches(args)
    feedings = {name: BEFORE if name == "plain" else None for name in args.feedings}
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.model_dir or Path(scratch)
        fp32 = embed_with(args, folder, "float32", feedings)
        bf16 = embed_with(args, folder, "bfloat16", feedings)
        whole = embed_with(args, folder, WHOLE_BF16, feedings) if args.whole else {}
        int8 = embed_with(args, folder, "int8", feedings) if args.int8 else {}
    reference = "plain" if "plain" in feedings else "fast"
    pairs = {f"bf16 {name} vs fp32 {reference}": (bf16[name], fp32[reference]) for name in feedings}
    for name, vectors in whole.items():
        pairs[f"bf16-whole {name} vs fp32 {reference}"] = (vectors, fp32[reference])
    for name, vectors in int8.items():
        pairs[f"int8 {name} vs fp32 {reference}"] = (vectors, fp32[reference])
    if len(feedings) == 2:
        pairs["fp32 fast vs fp32 plain"] = (fp32["fast"], fp32["plain"])
        pairs["bf16 fast vs bf16 plain"] = (bf16["fast"], bf16["plain"])
    images = "synthetic test" if args.synthetic else "mixed-size random"
    print(f"{args.images} {images} images x {args.conditions} conditions, {args.device}")
    figures: dict[str, dict[str, float]] = {}
    for name, (a, b) in pairs.items():
        cosines = row_cosines(a, b)
        figures[name] = {"min": float(cosines.min()), "mean": float(cosines.mean())}
        print(f"  cosine per row, {name}: min {cosines.min():.6f}, mean {cosines.mean():.6f}")
    if args.write:
        from results_file import write_results

        info = {"images": args.images, "conditions": args.conditions, "kind": images}
        info["bfloat16"] = "mixed on a CPU: bf16 products, fp32 between (models.precision)"
        write_results("dtype_agreement", {"cosine_per_row": figures, **info}, tag=args.tag)
    return {name: values["min"] for name, values in figures.items()}


def compare_benches(args: argparse.Namespace) -> dict[str, float]:
    rows = bench_differences(*args.bench)
    for name, row in rows.items():
        print(
            f"  {name}: recall@1 {row['recall@1']:.4f} -> {row['recall@1 after']:.4f}, "
            f"MAP@R {row['map@r']:.4f} -> {row['map@r after']:.4f}"
        )
    if args.write:
        from results_file import write_results

        files = {"before": str(args.bench[0]), "after": str(args.bench[1])}
        write_results("dtype_agreement", {"bench": rows, "files": files}, tag=args.tag)
    return {name: row["recall@1 difference"] for name, row in rows.items()}


if __name__ == "__main__":
    main()
