"""What else could make DIOR embedding faster on this CPU, measured at a model's real shapes.

    python benchmarks/cpu_throughput.py --model-dir /tmp/dior_3b_9 --depth 9 8 --dtypes bfloat16
    python benchmarks/cpu_options.py --model-dir /tmp/dior_3b_9 --write --tag 3b-depth9-8

One process loads a model folder (one cpu_throughput.py built: Qwen2.5-VL-3B's shapes, here
with fewer layers of the same shapes) in --dtype (bfloat16: mixed on a CPU, models.precision)
and embeds the same images under each option, alternating the options --repeats times and
keeping each option's fastest run, so that the other work on a shared machine weighs on every
option alike. Each group's figures are ratios to its first option, within this one run:

- `attention`: the language model's attention as torch's SDPA against transformers' eager
  (C = 1 and C = 10);
- `vision`: the vision tower's windowed attention as transformers runs it (a call per window)
  against one call per window length (benchmarks/vision_attention.py's grouped form);
- `batch`: rows per forward pass (`batch_size`; images per pass at C = 1) 1, 2, 4, 8;
- `preprocessing`: this process's CPU time to decode a JPEG photo, and to turn a batch's
  images and prompts into model inputs (image processor, tokenizer), per image, against the
  CPU time of embedding it: the most that threads for them could save;
- `threads` (wall time, `--threads-wall`): torch's intra-op threads 1 and 2, and 2 with two
  threads processing images, on the whole machine; on a machine busy with other work these
  wall times measure that work too (the load average is recorded).

The first three are timed by this process's CPU time with one torch thread (as
benchmarks/cpu_probe.py): the work's own cost, whatever else the machine runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from embed_throughput import CONDITIONS, random_images
from PIL import Image
from vision_attention import use_grouped_vision_attention, use_loop_vision_attention

from dior_search.data.images import fit_within
from dior_search.models.dior import DiorEmbedder
from dior_search.models.prompts import build_prompt
from dior_search.models.settings import DiorSettings


def fastest(options: dict[str, Callable[[], Any]], repeats: int, clock: Callable[[], float]):
    """Each option's fastest time over `repeats` rounds, the options alternating in a round."""
    for run in options.values():  # a first call chooses kernels and allocates
        run()
    best = {name: float("inf") for name in options}
    for _ in range(repeats):
        for name, run in options.items():
            began = clock()
            run()
            best[name] = min(best[name], clock() - began)
    return best


def with_ratios(seconds: dict[str, float], n_images: int) -> dict[str, Any]:
    """Seconds, images/s and each option's speed relative to the first option."""
    first = next(iter(seconds.values()))
    return {
        name: {"seconds": s, "images_per_s": n_images / s, "speed_vs_first": first / s}
        for name, s in seconds.items()
    }


def embedding(embedder: DiorEmbedder, images: list[Image.Image], c: int) -> Callable[[], Any]:
    conditions: list[str | None] = list(CONDITIONS[:c])
    return lambda: embedder.embed(images, conditions)


def attention_options(embedder: DiorEmbedder, images: list[Image.Image], c: int) -> dict:
    def run(implementation: str) -> Callable[[], Any]:
        def embed() -> Any:
            embedder.model.set_attn_implementation(implementation)
            return embedding(embedder, images, c)()

        return embed

    try:
        return {"sdpa": run("sdpa"), "eager": run("eager")}
    finally:
        embedder.model.set_attn_implementation("sdpa")


def vision_options(embedder: DiorEmbedder, images: list[Image.Image]) -> dict:
    def loop() -> Any:
        use_loop_vision_attention(embedder.model)
        return embedding(embedder, images, 1)()

    def grouped() -> Any:
        use_grouped_vision_attention(embedder.model)
        return embedding(embedder, images, 1)()

    return {"a call per window": loop, "a call per window length": grouped}


def batch_options(embedder: DiorEmbedder, images: list[Image.Image], sizes: Sequence[int]):
    settings = embedder.settings

    def run(size: int) -> Callable[[], Any]:
        def embed() -> Any:
            embedder.settings = dataclasses.replace(settings, batch_size=size)
            return embedding(embedder, images, 1)()

        return embed

    return {str(size): run(size) for size in sizes}


def preprocessing(embedder: DiorEmbedder, images: list[Image.Image], photo_side: int) -> dict:
    """CPU seconds per image: decoding a JPEG photo (and shrinking it as `embed` does), and
    building the model's inputs; and embedding it at C = 1."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (photo_side * 3 // 4, photo_side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()

    def decode() -> Any:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        return fit_within(image, embedder.settings.max_side)

    prompts = [build_prompt(embedder.settings.template, CONDITIONS[0])]

    def build() -> Any:
        return embedder.inputs.split(images, prompts, embedder.model)

    clock = time.process_time
    seconds = fastest({"decode": decode, "inputs": build}, 3, clock)
    embed = fastest({"embed": embedding(embedder, images, 1)}, 1, clock)["embed"]
    per_image = {
        "decode_jpeg": seconds["decode"],
        "build_inputs": seconds["inputs"] / len(images),
        "embed_c1": embed / len(images),
    }
    share = (per_image["decode_jpeg"] + per_image["build_inputs"]) / per_image["embed_c1"]
    return {
        "cpu_seconds_per_image": per_image,
        "photo": f"{photo_side}x{photo_side * 3 // 4} JPEG",
        "preprocessing_share_of_embedding": share,
    }


def thread_options(embedder: DiorEmbedder, images: list[Image.Image], repeats: int) -> dict:
    base = embedder.throughput

    def run(torch_threads: int, image_threads: int) -> Callable[[], Any]:
        def embed() -> Any:
            torch.set_num_threads(torch_threads)
            embedder.throughput = dataclasses.replace(base, image_threads=image_threads)
            return embedding(embedder, images, 1)()

        return embed

    options = {
        "torch 1, images 1": run(1, 1),
        "torch 2, images 1": run(2, 1),
        "torch 2, images 2": run(2, 2),
    }
    load_before = os.getloadavg()[0]
    seconds = fastest(options, repeats, time.perf_counter)
    torch.set_num_threads(1)
    embedder.throughput = base
    return {
        "wall": with_ratios(seconds, len(images)),
        "load_average": [load_before, os.getloadavg()[0]],
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="a built model folder")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--images", type=int, default=4, help="images of --image-size")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--photo-side", type=int, default=4000, help="the decoded JPEG's width")
    parser.add_argument("--threads-wall", action="store_true", help="also threads, wall time")
    parser.add_argument("--write", action="store_true", help="write benchmarks/results JSON")
    parser.add_argument("--tag", default="")
    args = parser.parse_args(argv)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    torch.set_num_threads(1)
    settings = DiorSettings(model=str(args.model_dir), device="cpu", dtype=args.dtype)
    embedder = DiorEmbedder(settings)
    images = random_images(args.images, args.image_size)
    cpu = time.process_time
    n = len(images)
    figures: dict[str, Any] = {
        "dtype": args.dtype,
        "mixed": embedder.activation_dtype != embedder.dtype,
        "images": n,
        "image_size": args.image_size,
    }
    for c in (1, 10):
        found = fastest(attention_options(embedder, images, c), args.repeats, cpu)
        figures[f"attention_c{c}"] = with_ratios(found, n)
        print(f"attention, C = {c}: {figures[f'attention_c{c}']}", flush=True)
    figures["vision"] = with_ratios(fastest(vision_options(embedder, images), args.repeats, cpu), n)
    use_loop_vision_attention(embedder.model)
    print(f"vision: {figures['vision']}", flush=True)
    found = fastest(batch_options(embedder, images, args.batch_sizes), args.repeats, cpu)
    embedder.settings = settings
    figures["batch_c1"] = with_ratios(found, n)
    print(f"batch size, C = 1: {figures['batch_c1']}", flush=True)
    figures["preprocessing"] = preprocessing(embedder, images, args.photo_side)
    print(f"pre-processing: {figures['preprocessing']}", flush=True)
    if args.threads_wall:
        figures["threads"] = thread_options(embedder, images, args.repeats)
        print(f"threads: {figures['threads']}", flush=True)
    if args.write:
        from results_file import write_results

        write_results("cpu_options", figures, tag=args.tag)
    return figures


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
