"""Embeddings per second of DIOR's embedding paths on a mid-size random-weight Qwen2.5-VL.

    python benchmarks/embed_throughput.py [--images 8] [--conditions 1 5 10] [--repeats 3]
    python benchmarks/embed_throughput.py --model-size 7b --device cuda --dtype bfloat16
    python benchmarks/embed_throughput.py --model-dir /tmp/m7b ...   # build once, reuse after

`--model-size 7b` (or 3b) takes Qwen2.5-VL-7B-Instruct's (3B's) layer shapes (random weights,
a small vocabulary: with no LM head the vocabulary costs one embedding lookup), for real-size
figures (benchmarks/cpu_throughput.py runs them on a CPU).

Paths, each over the same images under the first C conditions:
  naive         a full forward pass per (image, condition), one at a time
  reference-kv  each image's shared prefix cached, then one condition at a time against it
  ours          DiorEmbedder.embed: prefixes batched, then all suffixes as one batch
  lower bound   our prefix pass and batched suffix pass alone, inputs built beforehand
  ours+answers  DiorEmbedder.embed_with_answers: ours, and the model's answer to every prompt
                decoded against the same cache (on request: --paths ... ours+answers)

A random-weight model's answers are no words: it stops at once or runs to the limit. So that
ours+answers costs what a real model's answers cost, each answer is made exactly
--answer-tokens long (default 3: a word of two tokens and the closing quote, two decoding
steps after the first token; a real Qwen answer "Red" takes one).
Every path is timed in the same run, so the ratios hold on a noisy machine even where the
absolute figures do not: the images are taken a group at a time (the images of one of our
passes, or of --passes-per-group), all paths run on a group back to back in turn, and each
path's time is the sum over groups of its best time on each.

Work accounting (benchmarks/flops.py): the FLOPs each path does on these images (real tokens,
attention included; naive runs each image and prefix once per condition), the TFLOPS that
makes, and on a GPU the share of its dense bf16/fp16 peak (`--peak-tflops` for a GPU not in
the table).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from flops import Work, batch_work, peak_tflops, tflops
from PIL import Image
from results_file import write_results
from vision_attention import use_grouped_vision_attention, use_loop_vision_attention

from dior_search.models.answers import AnswerText
from dior_search.models.dior import DiorEmbedder, Throughput
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
# Timed on request: ours as the embedder fed the model before issue 16, for before/after in one
# run (one image after another, a cache row per condition, no grouping, no pinning); ours with
# the model's answers.
ALL_PATHS = [*PATHS[:3], "ours-before", "ours+answers", PATHS[3]]
BEFORE = Throughput(image_threads=1, pin_memory=False, packed_suffixes=False, group_by_size=False)


# Qwen2.5-VL's released shapes: (language hidden, layers, attention heads, key-value heads,
# MLP width). The vision tower is the same in both (32 layers of 1280, MLP 3420, 16 heads).
RELEASED_SHAPES = {"3b": (2048, 36, 16, 2, 11008), "7b": (3584, 28, 28, 4, 18944)}
MODEL_SIZES = ["mid", *RELEASED_SHAPES]


def model_config(tokenizer: Any, model_size: str, depth: tuple[int, int] | None = None) -> Any:
    """A Qwen2.5-VL config of `model_size`: "mid" (6 vision and 6 language layers, language
    hidden size 512), "3b" or "7b" (Qwen2.5-VL-3B's or 7B's shapes), its token ids from
    `tokenizer`; `depth` (language layers, vision layers): fewer layers of the same shapes."""
    if model_size == "mid":
        return qwen25_config(
            tokenizer, hidden=512, layers=6, vision_hidden=256, vision_layers=6, intermediate=1536
        )
    hidden, layers, heads, kv_heads, intermediate = RELEASED_SHAPES[model_size]
    layers, vision_layers = depth or (layers, 32)
    config = qwen25_config(
        tokenizer,
        hidden=hidden,
        layers=layers,
        vision_hidden=1280,
        vision_layers=vision_layers,
        intermediate=intermediate,
    )
    config.text_config.num_attention_heads = heads
    config.text_config.num_key_value_heads = kv_heads
    config.text_config.rope_parameters["mrope_section"] = [16, 24, 24]
    config.vision_config.num_heads = 16
    config.vision_config.intermediate_size = 3420
    # Every eighth vision layer attends over the whole image, the others within windows.
    config.vision_config.fullatt_block_indexes = list(range(7, vision_layers, 8))
    return config


def build_model(
    folder: Path,
    image_size: int,
    model_size: str,
    device: torch.device,
    dtype: torch.dtype,
    depth: tuple[int, int] | None = None,
) -> None:
    """A random-weight Qwen2.5-VL of `model_size` (and `depth`: see `model_config`), saved in
    `folder`."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    prompts = [build_prompt("describe", c) for c in CONDITIONS]
    tokenizer = build_qwen_tokenizer([*tiny_corpus(), *prompts * 4], vocab_size=1024)
    config = model_config(tokenizer, model_size, depth)
    # Built where it will run and in its dtype: 7B parameters initialised in fp32 on a CPU
    # take minutes and 32 GB.
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            # Shards of 2 GB: safetensors copies a shard's tensors into bytes to write them.
            model = Qwen2_5_VLForConditionalGeneration(config)
            model.save_pretrained(folder, max_shard_size="2GB")
            del model
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
        batch = batch.to(embedder.device, embedder.activation_dtype)
        cache = embedder.passes.prefix_pass(batch)
        for row in range(len(prompts)):
            one = dataclasses.replace(
                batch,
                suffix_ids=batch.suffix_ids[row : row + 1],
                suffix_mask=batch.suffix_mask[row : row + 1],
            )
            embedder.passes.suffix_pass(one, cache)
            cache.crop(-one.suffix_ids.shape[1])  # back to the prefix alone for the next one
    return time.perf_counter() - start


def ours(embedder: DiorEmbedder, images: Sequence[Image.Image], prompts: list[str]) -> float:
    conditions: list[str | None] = CONDITIONS[: len(prompts)]  # type: ignore[assignment]
    start = time.perf_counter()
    embedder.embed(images, conditions)
    return time.perf_counter() - start


def ours_before(embedder: DiorEmbedder, images: Sequence[Image.Image], prompts: list[str]) -> float:
    chosen, embedder.throughput = embedder.throughput, BEFORE
    try:
        return ours(embedder, images, prompts)
    finally:
        embedder.throughput = chosen


def ours_answers(
    embedder: DiorEmbedder, images: Sequence[Image.Image], prompts: list[str]
) -> float:
    conditions: list[str | None] = CONDITIONS[: len(prompts)]  # type: ignore[assignment]
    start = time.perf_counter()
    embedder.embed_with_answers(images, conditions)
    return time.perf_counter() - start


def answers_of_length(tokens: int) -> type[AnswerText]:
    """Answers that take exactly `tokens` greedy tokens, whatever the tokens are."""

    class FixedLength(AnswerText):
        def add(self, token: int, logprob: float, tokenizer: Any, stops: frozenset[int]) -> None:
            self.tokens.append(token)
            self.logprob += logprob
            self.done = len(self.tokens) >= tokens

    return FixedLength


def lower_bound(embedder: DiorEmbedder, images: Sequence[Image.Image], prompts: list[str]) -> float:
    """Our passes alone (`Passes.split_vectors` on inputs already built and on the device)."""
    step = max(1, embedder.settings.batch_size // len(prompts))
    elapsed = 0.0
    for start in range(0, len(images), step):
        split = embedder.inputs.split(images[start : start + step], prompts, embedder.model)
        batch = split.to(embedder.device, embedder.activation_dtype)
        synchronize(embedder)
        began = time.perf_counter()
        # Ends by copying the vectors to the host: synchronised.
        embedder.passes.split_vectors(batch)
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
    "ours-before": ours_before,
    "ours+answers": ours_answers,
    "lower bound": lower_bound,
}


def work_by_path(embedder: DiorEmbedder, images: Sequence[Image.Image], c: int) -> dict[str, float]:
    """FLOPs each path does to embed `images` under the first `c` conditions."""
    prompts = [build_prompt("describe", cond) for cond in CONDITIONS[:c]]
    n_layers = len(embedder.model.get_decoder().layers)
    step = max(1, embedder.settings.batch_size // c)
    work = Work(0.0, 0.0, 0.0, c)
    for start in range(0, len(images), step):
        split = embedder.inputs.split(images[start : start + step], prompts, embedder.model)
        work += batch_work(embedder.config, n_layers, split)
    return {path: work.full if path == "naive" else work.by_prefix for path in ALL_PATHS}


def describe_work(embedder: DiorEmbedder, image: Image.Image) -> str:
    """One image's work under one condition, by part, as a line."""
    prompt = build_prompt("describe", CONDITIONS[0])
    split = embedder.inputs.split([image], [prompt], embedder.model)
    work = batch_work(embedder.config, len(embedder.model.get_decoder().layers), split)
    prefix = int(split.prefix_inputs["attention_mask"].sum())
    suffix = int(split.suffix_mask.sum())
    return (
        f"work per image: vision tower {work.vision / 1e9:.1f} GFLOP, language-model prefix "
        f"{work.prefix / 1e9:.1f} GFLOP ({prefix} tokens), suffix {work.suffixes / 1e9:.2f} "
        f"GFLOP per condition ({suffix} tokens)"
    )


def device_peak(device: torch.device, dtype: torch.dtype, override: float | None) -> float | None:
    """The dense peak TFLOPS to compare with: `override`, else the GPU's bf16/fp16 peak."""
    if override is not None:
        return override
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return None
    return peak_tflops(torch.cuda.get_device_name(device))


def throughput_options(args: argparse.Namespace, device: torch.device) -> Throughput:
    """The device's defaults, with what the command line sets."""
    chosen = Throughput.for_device(device)
    given = {
        "image_threads": args.image_threads,
        "pin_memory": args.pin_memory,
        "packed_suffixes": args.packed_suffixes,
        "group_by_size": args.group_by_size,
    }
    return dataclasses.replace(chosen, **{k: v for k, v in given.items() if v is not None})


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Options shared with profile_embed.py: which model, where, and how it is fed."""
    parser.add_argument("--image-size", type=int, default=448, help="448: 256 visual tokens")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per forward pass")
    # One thread by default: where other work shares the cores, a descheduled OpenMP thread
    # stalls every parallel region and timings swing tenfold; one thread keeps them steady.
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--model-size", choices=MODEL_SIZES, default="mid")
    parser.add_argument(
        "--model-dir", type=Path, help="keep the built model here; reuse it if it is there"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    on_off = {"on": True, "off": False}
    parser.add_argument("--image-threads", type=int, help="threads patching a batch's images")
    parser.add_argument("--pin-memory", choices=on_off, help="page-locked inputs (CUDA)")
    parser.add_argument("--packed-suffixes", choices=on_off, help="one suffix row per image")
    parser.add_argument("--group-by-size", choices=on_off, help="batch images by size")
    parser.add_argument(
        "--vision-attention",
        choices=["loop", "grouped"],
        default="loop",
        help="the model's own (a call per window) or benchmarks/vision_attention.py's",
    )
    parser.set_defaults(on_off=on_off)


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Add the model options to `parser`, parse `argv`, and set torch and transformers up."""
    add_model_options(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    conditions = args.conditions if isinstance(args.conditions, list) else [args.conditions]
    if max(conditions) > len(CONDITIONS) or min(conditions) < 1:
        parser.error(f"--conditions must lie in 1..{len(CONDITIONS)}")
    return args


# Embedders loaded from a --model-dir, kept for the next main() in this process (gpu_session.py
# runs several): a 7B model loads in tens of seconds.
LOADED: dict[tuple[str, DiorSettings], DiorEmbedder] = {}


def load_embedder(args: argparse.Namespace, folder: Path) -> DiorEmbedder:
    """The embedder over a random-weight model of `args.model_size`, built in `folder` if new."""
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if not (folder / "config.json").is_file():
        build_model(folder, args.image_size, args.model_size, device, dtype)
    for name in ("pin_memory", "packed_suffixes", "group_by_size"):
        if isinstance(getattr(args, name), str):
            setattr(args, name, args.on_off[getattr(args, name)])
    settings = DiorSettings(
        model=str(folder), device=args.device, dtype=args.dtype, batch_size=args.batch_size
    )
    embedder = LOADED.get((str(folder), settings)) or DiorEmbedder(settings)
    if args.model_dir is not None:
        LOADED[str(folder), settings] = embedder
    embedder.throughput = throughput_options(args, device)
    if args.vision_attention == "grouped":
        use_grouped_vision_attention(embedder.model)
    else:
        use_loop_vision_attention(embedder.model)
    return embedder


def random_images(n: int, size: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)
    ]


def main(
    argv: Sequence[str] | None = None, *, record: bool = False
) -> dict[tuple[str, int], float]:
    """Run the benchmark, print its table; embeddings per second by (path, C).

    `record`: also write the figures to `benchmarks/results/embed_throughput-TAG.json`
    (TAG: the model size and device), which the docs' tables and plot are generated from.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6, help="images per timed run")
    parser.add_argument("--conditions", type=int, nargs="+", default=[1, 5, 10], help="C values")
    parser.add_argument("--repeats", type=int, default=3, help="runs per group; the best counts")
    parser.add_argument(
        "--passes-per-group", type=int, default=1, help="our passes per timed group of images"
    )
    parser.add_argument("--paths", nargs="+", choices=ALL_PATHS, default=PATHS, help="to time")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense peak to compare with")
    parser.add_argument(
        "--answer-tokens", type=int, default=3, help="tokens of every answer (ours+answers)"
    )
    parser.add_argument(
        "--results-tag", default="", help="results file tag (default: MODEL_SIZE-DEVICE)"
    )
    args = parse(parser, argv)
    paths = [path for path in ALL_PATHS if path in args.paths]

    images = random_images(args.images, args.image_size)
    with tempfile.TemporaryDirectory() as scratch:
        embedder = load_embedder(args, args.model_dir or Path(scratch))
        embedder.answer_text = answers_of_length(args.answer_tokens)
        n_params = sum(p.numel() for p in embedder.model.parameters())
        split = embedder.inputs.split(images[:1], ["x"], embedder.model)
        n_visual = int(split.prefix_inputs["image_grid_thw"].prod()) // 2**2  # merge size 2
        print(
            f"random-weight Qwen2.5-VL, {n_params / 1e6:.1f}M parameters, "
            f"{n_visual} visual tokens per image, {args.images} images, "
            f"{embedder.device} {str(embedder.dtype).removeprefix('torch.')}, "
            f"{torch.get_num_threads()} threads, best of {args.repeats}; {embedder.throughput}",
            flush=True,
        )
        print(describe_work(embedder, images[0]), flush=True)
        work = {c: work_by_path(embedder, images, c) for c in args.conditions}
        for c in args.conditions:  # each C's shapes once, untimed (allocator, kernel choice)
            prompts = [build_prompt("describe", cond) for cond in CONDITIONS[:c]]
            ours(embedder, images[: max(1, args.batch_size // c)], prompts)
        best: dict[tuple[str, int, int], float] = {}
        for repeat in range(args.repeats):
            for c in args.conditions:
                prompts = [build_prompt("describe", cond) for cond in CONDITIONS[:c]]
                step = max(1, args.batch_size // c) * args.passes_per_group
                for group, start in enumerate(range(0, len(images), step)):
                    turn = (repeat + group) % len(paths)
                    for path in paths[turn:] + paths[:turn]:
                        seconds = TIMERS[path](embedder, images[start : start + step], prompts)
                        key = (path, c, group)
                        best[key] = min(best.get(key, float("inf")), seconds)
        peak = device_peak(embedder.device, embedder.dtype, args.peak_tflops)

    total = {
        (path, c): sum(t for (p, n, _), t in best.items() if (p, n) == (path, c))
        for path in paths
        for c in args.conditions
    }
    rates = {key: args.images * key[1] / seconds for key, seconds in total.items()}
    print_table(paths, args.conditions, args.images, total, rates, work, peak)
    if record:
        rows = table_rows(paths, args.conditions, args.images, total, rates, work, peak)
        device = str(embedder.device).split(":")[0]
        write_results(
            "embed_throughput",
            {
                "model": f"{args.model_size} ({n_params / 1e6:.1f}M parameters, random weights)",
                "image_size": args.image_size,
                "images": args.images,
                "dtype": str(embedder.dtype).removeprefix("torch."),
                "load_average": list(os.getloadavg()),
                "rows": rows,
            },
            tag=args.results_tag or f"{args.model_size}-{device}",
        )
    if "ours" in paths and "ours+answers" in paths:
        for c in args.conditions:
            ratio = rates["ours+answers", c] / rates["ours", c]
            print(
                f"C = {c}: with answers ({args.answer_tokens} tokens each), {ratio:.3f}x the "
                "embeddings per second of ours"
            )
    return rates


def table_rows(
    paths: list[str],
    conditions: list[int],
    n_images: int,
    total: dict[tuple[str, int], float],
    rates: dict[tuple[str, int], float],
    work: dict[int, dict[str, float]],
    peak: float | None,
) -> list[dict[str, object]]:
    """The printed table as data: one dict per (C, path)."""
    rows: list[dict[str, object]] = []
    for c in conditions:
        for path in paths:
            achieved = tflops(work[c][path], total[path, c])
            rows.append(
                {
                    "path": path,
                    "conditions": c,
                    "embeddings_per_s": rates[path, c],
                    "x_naive": rates[path, c] / rates["naive", c] if "naive" in paths else None,
                    "time_over_bound": (
                        total[path, c] / total["lower bound", c] if "lower bound" in paths else None
                    ),
                    "gflop_per_embedding": work[c][path] / (n_images * c) / 1e9,
                    "tflops": achieved,
                    "peak_share": None if peak is None else achieved / peak,
                }
            )
    return rows


def print_table(
    paths: list[str],
    conditions: list[int],
    n_images: int,
    total: dict[tuple[str, int], float],
    rates: dict[tuple[str, int], float],
    work: dict[int, dict[str, float]],
    peak: float | None,
) -> None:
    """One row per (C, path): rate, the two ratios, and the work accounting."""

    def ratio(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}x"

    header = f"{'path':<14}{'C':>4}{'embeddings/s':>14}{'x naive':>9}{'time/bound':>11}"
    header += f"{'GFLOP/emb':>11}{'TFLOPS':>9}" + ("" if peak is None else f"{'% peak':>8}")
    print(header)
    for c in conditions:
        for path in paths:
            achieved = tflops(work[c][path], total[path, c])
            naive = rates[path, c] / rates["naive", c] if "naive" in paths else None
            bound = total[path, c] / total["lower bound", c] if "lower bound" in paths else None
            line = (
                f"{path:<14}{c:>4}{rates[path, c]:>14.1f}{ratio(naive):>9}{ratio(bound):>11}"
                f"{work[c][path] / (n_images * c) / 1e9:>11.1f}{achieved:>9.3g}"
            )
            if peak is not None:
                line += f"{100 * achieved / peak:>7.1f}%"
            print(line)
    if peak is not None:
        print(f"% peak: of {peak:.0f} TFLOPS dense (bf16/fp16)")


if __name__ == "__main__":
    main(record=True)
