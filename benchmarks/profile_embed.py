"""Where each millisecond of one batch of DIOR embedding goes, as a markdown table.

    python benchmarks/profile_embed.py                       # mid-size model on the CPU
    python benchmarks/profile_embed.py --model-size 7b --device cuda --batch-size 32 \\
        --conditions 1 10 --operators

One batch is `batch_size // C` images under C conditions (as `DiorEmbedder.embed` takes them).
Its stages run one after another, the device synchronised around each, timed by the host
clock: building the inputs (image patches, tokens; pinned where that is on), the copy to the
device, the vision tower, the language model over the prefixes, the KV cache repeated per
condition (unless suffixes are packed), the language model over the suffixes, and the rest of
each pass (embedding look-up, image scatter, masks, read-out). TFLOPS counts the real-token
work of a stage (benchmarks/flops.py). The last rows time `Passes.by_prefix` over the same
batches as it really runs, inputs built on a thread while the model runs, per batch.

Variants: `before` is the embedder as it was (one image after another, a cache row per
condition, no grouping, no pinning); `after` is the device's defaults with the command line's
options; `grouped` is `after` with the vision attention batched by segment length
(benchmarks/vision_attention.py, an experiment). `--operators` also records one batch with
torch.profiler and prints its busiest operators (with the calls of each: many small launches
show there); `--trace-dir` writes that batch's Chrome trace per (variant, C).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from embed_throughput import (
    BEFORE,
    CONDITIONS,
    device_peak,
    load_embedder,
    parse,
    random_images,
)
from flops import batch_work, tflops
from PIL import Image
from vision_attention import use_grouped_vision_attention, use_loop_vision_attention

from dior_search.models.dior import DiorEmbedder
from dior_search.models.prompts import build_prompt

STAGES = [
    ("build", "input building (patches, tokens)"),
    ("patches", "  of which image patching"),
    ("copy", "host-to-device copy"),
    ("vision", "vision tower"),
    ("prefix_lm", "language model, prefixes"),
    ("prefix_rest", "rest of prefix pass"),
    ("repeat", "KV cache repeated per condition"),
    ("suffix_lm", "language model, suffixes"),
    ("suffix_rest", "rest of suffix pass (packing, masks, read-out)"),
]


# Wall time, or (--clock cpu) this process's CPU time: on a CPU shared with other work, the
# wall clock counts the time the scheduler gave to others; CPU time counts only ours.
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


class Stopwatch:
    """Milliseconds per named stage, the device synchronised at each boundary."""

    def __init__(self, device: torch.device, clock: Callable[[], float]) -> None:
        self.device = device
        self.clock = clock
        self.ms: dict[str, float] = defaultdict(float)
        self._started: dict[str, float] = {}

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def start(self, name: str) -> None:
        self.sync()
        self._started[name] = self.clock()

    def stop(self, name: str) -> None:
        self.sync()
        self.ms[name] += 1000 * (self.clock() - self._started.pop(name))

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.start(name)
        try:
            yield
        finally:
            self.stop(name)


def time_module(module: torch.nn.Module, watch: Stopwatch, name: Callable[[], str]) -> list[Any]:
    """Time every forward pass of `module` into the stage `name()` names at that moment;
    the hooks' handles, to remove them."""
    return [
        module.register_forward_pre_hook(lambda *_: watch.start(name())),
        module.register_forward_hook(lambda *_: watch.stop(name())),
    ]


def profile_batches(
    embedder: DiorEmbedder,
    chunks: Sequence[Sequence[Image.Image]],
    prompts: list[str],
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[list[dict[str, float]], list[Any]]:
    """Each chunk run stage by stage: milliseconds by stage, and each chunk's inputs."""
    watch = Stopwatch(embedder.device, clock)
    phase = ["prefix"]
    hooks = time_module(embedder.model.visual, watch, lambda: "vision")
    hooks += time_module(embedder.model.language_model, watch, lambda: f"{phase[0]}_lm")
    inputs = embedder.inputs
    image_inputs = inputs.image_inputs

    def timed_image_inputs(*args: Any, **kwargs: Any) -> Any:
        with watch.stage("patches"):
            return image_inputs(*args, **kwargs)

    inputs.image_inputs = timed_image_inputs  # type: ignore[method-assign]
    threads = embedder.throughput.image_threads
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    rows, splits = [], []
    try:
        for chunk in chunks:
            watch.ms.clear()
            with watch.stage("build"):
                split = embedder.passes.build_split(chunk, prompts, pool)
            with watch.stage("copy"):
                pinned = split.suffix_ids.is_pinned()
                batch = split.to(embedder.device, embedder.activation_dtype, non_blocking=pinned)
            with torch.inference_mode():
                phase[0] = "prefix"
                with watch.stage("prefix_all"):
                    cache = embedder.passes.prefix_pass(batch)
                phase[0] = "suffix"
                packed = embedder.throughput.packed_suffixes and batch.prompts_per_image > 1
                if not packed and batch.prompts_per_image > 1:
                    with watch.stage("repeat"):
                        cache.batch_repeat_interleave(batch.prompts_per_image)
                with watch.stage("suffix_all"):
                    if packed:
                        embedder.passes.packed_suffix_pass(batch, cache)
                    else:
                        embedder.passes.suffix_pass(batch, cache)
            ms = dict(watch.ms)
            ms["prefix_rest"] = ms.pop("prefix_all") - ms["vision"] - ms["prefix_lm"]
            ms["suffix_rest"] = ms.pop("suffix_all") - ms["suffix_lm"]
            rows.append(ms)
            splits.append(split)
    finally:
        inputs.image_inputs = image_inputs  # type: ignore[method-assign]
        for hook in hooks:
            hook.remove()
        if pool is not None:
            pool.shutdown()
    return rows, splits


def pipelined_ms(
    embedder: DiorEmbedder,
    chunks: Sequence[Sequence[Image.Image]],
    prompts: list[str],
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Milliseconds per batch of `Passes.by_prefix` over all chunks, as it really runs."""
    images = [image for chunk in chunks for image in chunk]
    began = clock()
    embedder.passes.by_prefix(images, prompts)
    return 1000 * (clock() - began) / len(chunks)


def stage_table(
    embedder: DiorEmbedder,
    rows: list[dict[str, float]],
    splits: list[Any],
    pipelined: float,
) -> str:
    """The markdown table of median milliseconds per stage, with shares and TFLOPS."""
    median = {name: statistics.median(row.get(name, 0.0) for row in rows) for name, _ in STAGES}
    serial = sum(ms for name, ms in median.items() if name != "patches")
    n_layers = len(embedder.model.get_decoder().layers)
    work = batch_work(embedder.config, n_layers, splits[0])
    flops = {"vision": work.vision, "prefix_lm": work.prefix, "suffix_lm": work.suffixes}
    lines = ["| stage | ms per batch | share | TFLOPS |", "| --- | ---: | ---: | ---: |"]
    for name, label in STAGES:
        if name == "repeat" and median[name] == 0.0:
            continue
        rate = f"{tflops(flops[name], median[name] / 1000):.3g}" if name in flops else ""
        share = f"{100 * median[name] / serial:.1f}%"
        lines.append(f"| {label} | {median[name]:.1f} | {share} | {rate} |")
    total_rate = tflops(work.by_prefix, serial / 1000)
    lines.append(f"| **all stages, one after another** | {serial:.1f} | 100% | {total_rate:.3g} |")
    overlap_rate = tflops(work.by_prefix, pipelined / 1000)
    lines.append(
        f"| **`embed_by_prefix`, inputs built ahead** | {pipelined:.1f} | "
        f"{100 * pipelined / serial:.0f}% | {overlap_rate:.3g} |"
    )
    return "\n".join(lines)


def operator_summary(
    embedder: DiorEmbedder, chunk: Sequence[Image.Image], prompts: list[str], trace: Path | None
) -> str:
    """One batch under torch.profiler: its busiest operators; a Chrome trace at `trace`."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if embedder.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as profiler:
        embedder.passes.by_prefix(list(chunk), prompts)
    if trace is not None:  # tens of MB for a 7B batch, and seconds to write
        trace.parent.mkdir(parents=True, exist_ok=True)
        profiler.export_chrome_trace(str(trace))
    key = "self_cuda_time_total" if embedder.device.type == "cuda" else "self_cpu_time_total"
    table: str = profiler.key_averages().table(sort_by=key, row_limit=12, max_name_column_width=50)
    return table


def summary_table(
    ms: dict[str, dict[str, float]], by_prefix_flops: float, peak: float | None
) -> str:
    """Median milliseconds per stage (rows) and variant (columns), as markdown."""
    variants = list(ms)
    lines = [
        "| stage | " + " | ".join(variants) + " |",
        "| --- |" + " ---: |" * len(variants),
    ]
    for name, label in [*STAGES, ("serial", "all stages, one after another")]:
        if name == "repeat" and not any(ms[v][name] for v in variants):
            continue
        lines.append(
            f"| {label.strip()} | " + " | ".join(f"{ms[v][name]:.1f}" for v in variants) + " |"
        )
    rates = [tflops(by_prefix_flops, ms[v]["pipelined"] / 1000) for v in variants]
    lines.append(
        "| **`embed_by_prefix`, inputs built ahead** | "
        + " | ".join(f"**{ms[v]['pipelined']:.1f}**" for v in variants)
        + " |"
    )
    lines.append("| its TFLOPS | " + " | ".join(f"{r:.3g}" for r in rates) + " |")
    if peak is not None:
        lines.append(
            f"| % of {peak:.0f} TFLOPS | "
            + " | ".join(f"{100 * r / peak:.1f}%" for r in rates)
            + " |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, dict[int, dict[str, float]]]:
    """Profile, print the tables; median milliseconds by variant, C and stage."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conditions", type=int, nargs="+", default=[1, 10], help="C values")
    parser.add_argument("--batches", type=int, default=3, help="timed batches (median)")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=["before", "after", "grouped"],
        default=["before", "after", "grouped"],
    )
    parser.add_argument("--operators", action="store_true", help="print a batch's top operators")
    parser.add_argument("--trace-dir", type=Path, help="and write its Chrome trace here")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense peak to compare with")
    parser.add_argument("--clock", choices=CLOCKS, default="wall", help="cpu: this process's time")
    args = parse(parser, argv)
    clock = CLOCKS[args.clock]

    out: dict[str, dict[int, dict[str, float]]] = {}
    details: list[str] = []
    work: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        embedder = load_embedder(args, args.model_dir or Path(scratch))
        after = embedder.throughput
        n_params = sum(p.numel() for p in embedder.model.parameters())
        size = f"{n_params / 1e9:.1f}B" if n_params >= 1e9 else f"{n_params / 1e6:.0f}M"
        machine = f"{embedder.device} {str(embedder.dtype).removeprefix('torch.')}"
        peak = device_peak(embedder.device, embedder.dtype, args.peak_tflops)
        n_layers = len(embedder.model.get_decoder().layers)
        for variant in args.variants:
            embedder.throughput = BEFORE if variant == "before" else after
            if variant == "grouped":
                use_grouped_vision_attention(embedder.model)
            else:
                use_loop_vision_attention(embedder.model)
            out[variant] = {}
            for c in args.conditions:
                prompts = [build_prompt("describe", cond) for cond in CONDITIONS[:c]]
                per_batch = max(1, args.batch_size // c)
                images = random_images(per_batch * (args.batches + 1), args.image_size)
                chunks = [images[i : i + per_batch] for i in range(0, len(images), per_batch)]
                profile_batches(embedder, chunks[:1], prompts, clock)  # warm-up
                rows, splits = profile_batches(embedder, chunks[1:], prompts, clock)
                pipelined = pipelined_ms(embedder, chunks[1:], prompts, clock)
                work[c] = batch_work(embedder.config, n_layers, splits[0]).by_prefix
                options = ", ".join(
                    f"{f.name}={getattr(embedder.throughput, f.name)}"
                    for f in dataclasses.fields(embedder.throughput)
                )
                text = (
                    f"#### {variant}, C = {c} ({options})\n\n"
                    f"{stage_table(embedder, rows, splits, pipelined)}\n"
                )
                if args.operators or args.trace_dir is not None:
                    trace = args.trace_dir and args.trace_dir / f"trace_{variant}_c{c}.json"
                    ops = operator_summary(embedder, chunks[1], prompts, trace)
                    text += f"\n```\n{ops}```\n"
                print(text, flush=True)
                details.append(text)
                medians = {
                    name: statistics.median(r.get(name, 0.0) for r in rows) for name, _ in STAGES
                }
                serial = sum(ms for name, ms in medians.items() if name != "patches")
                out[variant][c] = medians | {"serial": serial, "pipelined": pipelined}
    summaries = []
    for c in args.conditions:
        per_batch = max(1, args.batch_size // c)
        title = (
            f"### Where each millisecond of one batch goes: {size}-parameter Qwen2.5-VL, "
            f"{machine}, {per_batch} images x {c} conditions, {args.image_size} px "
            f"(median of {args.batches} batches, {args.clock} clock)"
        )
        table = summary_table({v: out[v][c] for v in args.variants}, work[c], peak)
        summaries.append(f"{title}\n\n{table}\n")
    print("\n".join(summaries), flush=True)
    if args.markdown is not None:
        args.markdown.write_text("\n".join([*summaries, "## Each variant\n", *details]))
    return out


if __name__ == "__main__":
    main()
