"""One condition on a CPU: prefix pass then a one-token suffix pass, against one full pass.

    python benchmarks/cpu_single_pass.py --model-dir /tmp/dior_3b --write

With prefix reuse, every batch runs the shared prompt prefix, then the conditions' suffixes
against its cache. Under one condition the suffix is a single token: a pass that reads every
weight of the language model for one row (memory-bound: benchmarks/cpu_throughput.py measured
it at 16% of the time of a bf16 3B embedding at C = 1, for 0.1% of the FLOPs). A full forward
pass per row does the same work in one pass. Both run on the same images in turn, `--repeats`
times, timed by this process's CPU time on one thread (benchmarks/cpu_probe.py); the best of
each counts, and the cosine per row between their embeddings is printed.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from dtype_agreement import row_cosines
from embed_throughput import random_images

from dior_search.models.dior import DiorEmbedder
from dior_search.models.settings import DiorSettings


def timed(embedder: DiorEmbedder, images: Sequence[Any], prefix_reuse: bool) -> tuple[float, Any]:
    embedder.passes.prefix_reuse = prefix_reuse  # what settings.prefix_reuse sets
    began = time.process_time()
    vectors = embedder.embed(images, ["color"])
    return time.process_time() - began, vectors


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="a built model")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="write benchmarks/results JSON")
    parser.add_argument("--tag", default="", help="added to the results file's name")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    transformers.utils.logging.set_verbosity_error()
    settings = DiorSettings(model=str(args.model_dir), device="cpu", dtype=args.dtype)
    embedder = DiorEmbedder(settings)
    images = random_images(args.images, args.image_size)
    timed(embedder, images[:1], True)  # warm-up
    timed(embedder, images[:1], False)
    best = {"prefix then suffix": float("inf"), "one full pass": float("inf")}
    vectors: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):
        for name, reuse in (("prefix then suffix", True), ("one full pass", False)):
            seconds, vectors[name] = timed(embedder, images, reuse)
            best[name] = min(best[name], seconds)
    cosines = row_cosines(vectors["prefix then suffix"], vectors["one full pass"])
    figures = {f"{name} images/s": args.images / s for name, s in best.items()}
    figures["speed-up"] = best["prefix then suffix"] / best["one full pass"]
    figures["cosine min"] = float(cosines.min())
    for name, value in figures.items():
        print(f"{name}: {value:.4f}")
    if args.write:
        from results_file import write_results

        write_results(
            "cpu_single_pass", figures, tag="-".join(filter(None, [args.dtype, args.tag]))
        )
    return figures


if __name__ == "__main__":
    main()
