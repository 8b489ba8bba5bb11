"""Embeddings per second of DIOR's embedding paths on a mid-size random-weight Qwen2.5-VL.

    python benchmarks/embed_throughput.py [--images 8] [--conditions 1 5 10] [--repeats 3]
    python benchmarks/embed_throughput.py --model-size 7b --device cuda --dtype bfloat16

`--model-size 7b` takes Qwen2.5-VL-7B-Instruct's layer shapes (random weights, a small
vocabulary: with no LM head the vocabulary costs one embedding lookup), for real-size figures
on a GPU.

Paths, each over the same images under the first C conditions:
  naive         a full forward pass per (image, condition), one at a time
  reference-kv  each image's shared prefix cached, then one condition at a time against it
  ours          DiorEmbedder.embed: prefixes batched, then all suffixes as one batch
  lower bound   our prefix pass and batched suffix pass alone, inputs built beforehand
Every path is timed in the same run, so the ratios hold on a noisy machine even where the
absolute figures do not: the images are taken a group at a time (the images of one of our
passes, or of --passes-per-group), all paths run on a group back to back in turn, and each
path's time is the sum over groups of its best time on each.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image

from dior_search.models.dior import DiorEmbedder
from dior_search.models.loading import resolve_device, resolve_dtype
from dior_search.models.prompts import build_prompt
from dior_search.models.settings import DiorSettings
from dior_search.models.tiny_training import (
    build_qwen_tokenizer,
    qwen25_config,
    qwen_image_processor,
    tiny_corpus,
)

CONDITIONS = [
    "color",
    "texture",
    "fabric",
    "fit",
    "clothing category",
    "background",
    "shape",
    "pattern",
    "material",
    "style",
]
PATHS = ["naive", "reference-kv", "ours", "lower bound"]


def build_model(
    folder: Path, image_size: int, model_size: str, device: torch.device, dtype: torch.dtype
) -> None:
    """A random-weight Qwen2.5-VL of `model_size`: "mid" (6 vision and 6 language layers,
    language hidden size 512) or "7b" (Qwen2.5-VL-7B's shapes)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    prompts = [build_prompt("describe", c) for c in CONDITIONS]
    tokenizer = build_qwen_tokenizer([*tiny_corpus(), *prompts * 4], vocab_size=1024)
    if model_size == "mid":
        config = qwen25_config(
            tokenizer, hidden=512, layers=6, vision_hidden=256, vision_layers=6, intermediate=1536
        )
    else:
        config = qwen25_config(
            tokenizer,
            hidden=3584,
            layers=28,
            vision_hidden=1280,
            vision_layers=32,
            intermediate=18944,
        )
        config.text_config.num_attention_heads = 28
        config.text_config.num_key_value_heads = 4
        config.text_config.rope_parameters["mrope_section"] = [16, 24, 24]
        config.vision_config.num_heads = 16
        config.vision_config.intermediate_size = 3420
        config.vision_config.fullatt_block_indexes = [7, 15, 23, 31]
    # Built where it will run and in its dtype: 7B parameters initialised in fp32 on a CPU
    # take minutes and 32 GB.
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            Qwen2_5_VLForConditionalGeneration(config).save_pretrained(folder)
    finally:
        torch.set_default_dtype(default)
    tokenizer.save_pretrained(folder)
    qwen_image_processor(max_pixels=image_size * image_size).save_pretrained(folder)


def naive(embedder: DiorEmbedder, images: Sequence[Image.Image], prompts: list[str]) -> float:
    start = time.perf_counter()
    for image in images:
        for prompt in prompts:
            embedder.embed_rows([image], [prompt])
    return time.perf_counter() - start


def reference_kv(
    embedder: DiorEmbedder, images: Sequence[Image.Image], prompts: list[str]
) -> float:
    start = time.perf_counter()
    for image in images:
        batch = embedder.inputs.split([image], prompts, embedder.model)
        batch = batch.to(embedder.device, embedder.dtype)
        cache = embedder.prefix_pass(batch)
        for row in range(len(prompts)):
            one = dataclasses.replace(
                batch,
                suffix_ids=batch.suffix_ids[row : row + 1],
                suffix_mask=batch.suffix_mask[row : row + 1],
            )
            embedder.suffix_pass(one, cache)
            cache.crop(-one.suffix_ids.shape[1])  # back to the prefix alone for the next one
    return time.perf_counter() - start


def ours(embedder: DiorEmbedder, images: Sequence[Image.Image], prompts: list[str]) -> float:
    conditions: list[str | None] = CONDITIONS[: len(prompts)]  # type: ignore[assignment]
    start = time.perf_counter()
    embedder.embed(images, conditions)
    return time.perf_counter() - start


def lower_bound(embedder: DiorEmbedder, images: Sequence[Image.Image], prompts: list[str]) -> float:
    step = max(1, embedder.settings.batch_size // len(prompts))
    elapsed = 0.0
    for start in range(0, len(images), step):
        split = embedder.inputs.split(images[start : start + step], prompts, embedder.model)
        batch = split.to(embedder.device, embedder.dtype)
        began = time.perf_counter()
        cache = embedder.prefix_pass(batch)
        synchronize(embedder)
        elapsed += time.perf_counter() - began
        cache.batch_repeat_interleave(batch.prompts_per_image)
        began = time.perf_counter()
        embedder.suffix_pass(batch, cache)
        elapsed += time.perf_counter() - began
    return elapsed


def synchronize(embedder: DiorEmbedder) -> None:
    """Wait for queued GPU work: the timer stops when the pass has run, not when queued."""
    if embedder.device.type == "cuda":
        torch.cuda.synchronize(embedder.device)


TIMERS: dict[str, Callable[[DiorEmbedder, Sequence[Image.Image], list[str]], float]] = {
    "naive": naive,
    "reference-kv": reference_kv,
    "ours": ours,
    "lower bound": lower_bound,
}


def main(argv: Sequence[str] | None = None) -> dict[tuple[str, int], float]:
    """Run the benchmark, print its table; embeddings per second by (path, C)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6, help="images per timed run")
    parser.add_argument("--conditions", type=int, nargs="+", default=[1, 5, 10], help="C values")
    parser.add_argument("--repeats", type=int, default=3, help="runs per group; the best counts")
    parser.add_argument("--image-size", type=int, default=448, help="448: 256 visual tokens")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per forward pass")
    # One thread by default: where other work shares the cores, a descheduled OpenMP thread
    # stalls every parallel region and timings swing tenfold; one thread keeps them steady.
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--passes-per-group", type=int, default=1, help="our passes per timed group of images"
    )
    parser.add_argument("--model-size", choices=["mid", "7b"], default="mid")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    if max(args.conditions) > len(CONDITIONS) or min(args.conditions) < 1:
        parser.error(f"--conditions must lie in 1..{len(CONDITIONS)}")

    rng = np.random.default_rng(0)
    size = args.image_size
    images = [
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        for _ in range(args.images)
    ]
    with tempfile.TemporaryDirectory() as folder:
        device = resolve_device(args.device)
        dtype = resolve_dtype(args.dtype, device)
        build_model(Path(folder), args.image_size, args.model_size, device, dtype)
        embedder = DiorEmbedder(
            DiorSettings(
                model=folder, device=args.device, dtype=args.dtype, batch_size=args.batch_size
            )
        )
        n_params = sum(p.numel() for p in embedder.model.parameters())
        split = embedder.inputs.split(images[:1], ["x"], embedder.model)
        n_visual = int(split.prefix_inputs["image_grid_thw"].prod()) // 2**2  # merge size 2
        print(
            f"random-weight Qwen2.5-VL, {n_params / 1e6:.1f}M parameters, "
            f"{n_visual} visual tokens per image, {args.images} images, "
            f"{embedder.device} {str(embedder.dtype).removeprefix('torch.')}, "
            f"{torch.get_num_threads()} threads, best of {args.repeats}",
            flush=True,
        )
        ours(embedder, images[:2], [build_prompt("describe", c) for c in CONDITIONS[:2]])
        best: dict[tuple[str, int, int], float] = {}
        for repeat in range(args.repeats):
            for c in args.conditions:
                prompts = [build_prompt("describe", cond) for cond in CONDITIONS[:c]]
                step = max(1, args.batch_size // c) * args.passes_per_group
                for group, start in enumerate(range(0, len(images), step)):
                    turn = (repeat + group) % len(PATHS)
                    for path in PATHS[turn:] + PATHS[:turn]:
                        seconds = TIMERS[path](embedder, images[start : start + step], prompts)
                        key = (path, c, group)
                        best[key] = min(best.get(key, float("inf")), seconds)

    total = {
        (path, c): sum(t for (p, n, _), t in best.items() if (p, n) == (path, c))
        for path in PATHS
        for c in args.conditions
    }
    rates = {key: args.images * key[1] / seconds for key, seconds in total.items()}
    print(f"{'path':<14}{'C':>4}{'embeddings/s':>15}{'x naive':>10}{'time / lower bound':>21}")
    for c in args.conditions:
        for path in PATHS:
            print(
                f"{path:<14}{c:>4}{rates[path, c]:>15.1f}"
                f"{rates[path, c] / rates['naive', c]:>9.2f}x"
                f"{total[path, c] / total['lower bound', c]:>20.2f}x"
            )
    return rates


if __name__ == "__main__":
    main()
