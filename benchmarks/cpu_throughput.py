"""DIOR embedding on this CPU at Qwen2.5-VL-3B's (or 7B's) shapes, fp32 against bf16.

    python benchmarks/cpu_throughput.py --model-dir /tmp/dior_3b --write
    python benchmarks/cpu_throughput.py --model-size 7b --dtypes bfloat16 --images 1 \\
        --conditions 1 --model-dir /tmp/dior_7b --write

A random-weight Qwen2.5-VL of the released shapes (a 1,024-token vocabulary: the base model
has no LM head, so the vocabulary costs a look-up) is built once directly in bf16, in a child
process (never materialised in fp32: 3B in fp32 is 14 GB), and saved in 2 GB shards. Each
dtype then runs in a child process of its own, so that its load time and peak RSS are its
own: `DiorEmbedder` loads the folder as it loads a user's model (bf16 weights cast to fp32
for fp32, as a released checkpoint is), the matmul probe (benchmarks/cpu_probe.py) measures
this CPU's rate at the model's shapes in that dtype right there, and the same few images are
embedded under C = 1, 5, 10 conditions by `embed` (images/s, embeddings/s), and the first of
them by `embed_with_answers` (each answer made --answer-tokens long, for the decoding stage).

Per stage (vision tower, shared prefix, condition suffixes, answer decoding), forward hooks
time the modules as `embed` runs them; FLOPs come from benchmarks/flops.py (real tokens), and
each stage's GFLOP/s is given as a share of the probe's `hidden` figure (hidden x hidden, the
tokens of one prefix) in the same dtype. The machine is shared: the probe runs in the same
process just before the embedding, and the ratios of one run are what count. By default one
torch thread, timed by this process's CPU time (`--clock cpu`, as benchmarks/cpu_probe.py):
images/s are then per core of CPU time, what one core given to the work alone would do;
`--threads 2 --clock wall` measures the machine as dior-search runs on it when it is idle.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cpu_probe
import torch
import transformers
from cpu_probe import CLOCKS, model_shapes, print_probe, probe, tokens_of_image
from embed_throughput import (
    CONDITIONS,
    MODEL_SIZES,
    answers_of_length,
    build_model,
    random_images,
)
from flops import Work, batch_work, decoder_flops

from dior_search.models import precision
from dior_search.models.dior import DiorEmbedder
from dior_search.models.prompts import build_prompt
from dior_search.models.settings import DiorSettings

STAGES = ["vision", "prefix", "suffix", "decode"]
WHOLE_BF16 = "bfloat16-whole"


def peak_rss_gib() -> float:
    """This process's peak resident set so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def available_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def weights_gib(folder: Path, dtype: str) -> float:
    """The model's weights in `dtype`, from its bf16 files."""
    on_disk = sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 2**30
    return on_disk * (2 if dtype == "float32" else 1)


class StageClock:
    """Seconds per stage as `embed` / `embed_with_answers` run: the vision tower's calls, then
    per batch the language model's first call after the vision tower (the prefix), its next
    (the packed suffixes) and any after that (answer decoding steps)."""

    def __init__(self, embedder: DiorEmbedder) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls_since_vision = 0
        self._began = 0.0
        model = embedder.model
        self.handles = [
            model.visual.register_forward_pre_hook(self._vision_starts),
            model.visual.register_forward_hook(self._stops("vision")),
            model.language_model.register_forward_pre_hook(self._starts),
            model.language_model.register_forward_hook(self._language_stops),
        ]

    def _vision_starts(self, *_: Any) -> None:
        self.calls_since_vision = 0
        self._began = cpu_probe.clock()

    def _starts(self, *_: Any) -> None:
        self._began = cpu_probe.clock()

    def _stops(self, stage: str) -> Any:
        def stop(*_: Any) -> None:
            self.seconds[stage] += cpu_probe.clock() - self._began

        return stop

    def _language_stops(self, *_: Any) -> None:
        stage = STAGES[1 + min(self.calls_since_vision, 2)]
        self.seconds[stage] += cpu_probe.clock() - self._began
        self.calls_since_vision += 1

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def stage_work(
    embedder: DiorEmbedder, images: Sequence[Any], c: int, answer_tokens: int
) -> dict[str, float]:
    """FLOPs of each stage of embedding `images` under `c` conditions, batched as `embed`
    batches them, and of decoding answers of `answer_tokens` tokens."""
    prompts = [build_prompt("describe", cond) for cond in CONDITIONS[:c]]
    text = embedder.config.get_text_config()
    n_layers = len(embedder.model.get_decoder().layers)
    step = max(1, embedder.settings.batch_size // c)
    work = Work(0.0, 0.0, 0.0, c)
    decode = 0.0
    for start in range(0, len(images), step):
        split = embedder.inputs.split(images[start : start + step], prompts, embedder.model)
        work += batch_work(embedder.config, n_layers, split)
        past = split.prefix_inputs["attention_mask"].sum(dim=1).tolist()
        suffixes = split.suffix_mask.sum(dim=1).reshape(len(past), c).tolist()
        head = 2.0 * text.hidden_size * text.vocab_size
        for prefix, lengths in zip(past, suffixes, strict=True):
            for length in lengths:
                seen = prefix + length
                decode += head  # the first answer token, from the embedding's own state
                for token in range(answer_tokens - 1):
                    decode += decoder_flops(text, n_layers, 1, n_past=seen + token) + head
    return {"vision": work.vision, "prefix": work.prefix, "suffix": work.suffixes} | {
        "decode": decode
    }


def embed_timed(
    embedder: DiorEmbedder, images: Sequence[Any], c: int, answers: bool
) -> tuple[float, dict[str, float]]:
    """Seconds to embed `images` under `c` conditions (with answers or not), and by stage."""
    conditions: list[str | None] = list(CONDITIONS[:c])
    clock = StageClock(embedder)
    try:
        began = cpu_probe.clock()
        if answers:
            embedder.embed_with_answers(images, conditions)
        else:
            embedder.embed(images, conditions)
        return cpu_probe.clock() - began, dict(clock.seconds)
    finally:
        clock.remove()


def run_dtype(args: argparse.Namespace) -> dict[str, Any]:
    """In a child process: load the model in `args.child`, probe, embed; the figures."""
    torch.set_num_threads(args.threads)
    cpu_probe.use_clock(args.clock)
    # bfloat16 runs mixed on a CPU (models.precision); bfloat16-whole as it did before.
    precision.CPU_MIXED = args.child != WHOLE_BF16
    # int8: loaded in fp32, its linear layers then quantised dynamically (torch.ao).
    dtype = {WHOLE_BF16: "bfloat16", "int8": "float32"}.get(args.child, args.child)
    began = time.perf_counter()  # loading waits on the disk: wall time
    settings = DiorSettings(
        model=str(args.model_dir), device="cpu", dtype=dtype, batch_size=args.batch_size
    )
    embedder = DiorEmbedder(settings)
    if args.child == "int8":
        cpu_probe.quantize_linear_layers(embedder.model)
    if args.attention:
        embedder.model.set_attn_implementation(args.attention)
    load_s = time.perf_counter() - began
    rss_loaded = peak_rss_gib()
    embedder.answer_text = answers_of_length(args.answer_tokens)
    images = random_images(args.images, args.image_size)
    patches, _ = tokens_of_image(args.image_size)
    # The suffix shape: one image's suffixes under every condition, packed into one row.
    prompts = [build_prompt("describe", c) for c in CONDITIONS[: max(args.conditions)]]
    split = embedder.inputs.split(images[:1], prompts, embedder.model)
    prefix = int(split.prefix_inputs["attention_mask"].sum())
    suffix = int(split.suffix_mask.sum())
    shapes = model_shapes(embedder.config, patches, prefix, suffix)
    probe_dtypes = [dtype, *(["int8"] if dtype == "float32" and args.int8 else [])]
    probe_dtypes = ["int8"] if args.child == "int8" else probe_dtypes
    rates = probe(shapes, probe_dtypes, args.probe_seconds)
    print_probe(rates, shapes)
    embed_timed(embedder, images[:1], 1, answers=True)  # warm-up: kernels, allocator
    runs: dict[str, Any] = {}
    for c in args.conditions:
        work = stage_work(embedder, images, c, args.answer_tokens)
        seconds, stages = embed_timed(embedder, images, c, answers=False)
        # Decoding on the first image alone (the run's length): its share of the work scaled.
        answered, answer_stages = embed_timed(embedder, images[:1], c, answers=True)
        work["decode"] = stage_work(embedder, images[:1], c, args.answer_tokens)["decode"]
        stages["decode"] = answer_stages.get("decode", 0.0)
        forward = work["vision"] + work["prefix"] + work["suffix"]
        runs[str(c)] = {
            "seconds": seconds,
            "seconds_one_image_with_answers": answered,
            "images_per_s": len(images) / seconds,
            "embeddings_per_s": len(images) * c / seconds,
            "gflop_per_image": forward / len(images) / 1e9,
            "gflops_whole_pass": forward / seconds / 1e9,
            "stage_seconds": stages,
            "stage_gflop": {k: v / 1e9 for k, v in work.items()},
        }
        print(
            f"{args.child} C = {c}: {len(images) / seconds:.3f} images/s, "
            f"{forward / seconds / 1e9:.1f} GFLOP/s over the pass "
            f"(stages s: {', '.join(f'{k} {v:.2f}' for k, v in stages.items())})",
            flush=True,
        )
    return {
        "dtype": "int8" if args.child == "int8" else str(embedder.dtype).removeprefix("torch."),
        "mixed": embedder.activation_dtype != embedder.dtype,
        "attention": embedder.model.config.get_text_config()._attn_implementation,
        "threads": torch.get_num_threads(),
        "load_seconds": load_s,
        "peak_rss_gib_after_load": rss_loaded,
        "peak_rss_gib": peak_rss_gib(),
        "parameters": sum(p.numel() for p in embedder.model.parameters()),
        "prefix_tokens": prefix,
        "suffix_tokens": suffix,
        "patches": patches,
        "probe_shapes": {k: vars(s) for k, s in shapes.items()},
        "probe_gflops": rates,
        "runs": runs,
    }


def child_command(args: argparse.Namespace, role: list[str]) -> list[str]:
    common = ["--model-size", args.model_size, "--model-dir", str(args.model_dir)]
    common += ["--image-size", str(args.image_size), "--images", str(args.images)]
    common += ["--threads", str(args.threads), "--batch-size", str(args.batch_size)]
    common += ["--clock", args.clock]
    common += ["--answer-tokens", str(args.answer_tokens)]
    common += ["--probe-seconds", str(args.probe_seconds)]
    common += ["--conditions", *map(str, args.conditions)]
    common += ["--depth", *map(str, args.depth)] if args.depth else []
    common += ["--attention", args.attention] if args.attention else []
    common += [] if args.int8 else ["--no-int8"]
    return [sys.executable, str(Path(__file__).resolve()), *common, *role]


def build_in_child(args: argparse.Namespace) -> float:
    """Build the model in a child (its memory freed before any dtype loads); seconds."""
    began = time.perf_counter()
    subprocess.run(child_command(args, ["--build"]), check=True)
    return time.perf_counter() - began


def run_in_child(args: argparse.Namespace, dtype: str) -> dict[str, Any]:
    """One dtype's figures from a child process, or why it did not run."""
    needed = weights_gib(args.model_dir, dtype) * 1.15 + 1.0
    available = available_gib()
    if available is not None and available < needed:
        why = f"needs about {needed:.1f} GiB, {available:.1f} GiB available"
        print(f"{dtype}: not run: {why}", flush=True)
        return {"skipped": why}
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run(child_command(args, ["--child", dtype, "--out", out.name]), check=True)
        return dict(json.loads(Path(out.name).read_text()))


def summary(by_dtype: dict[str, dict[str, Any]], conditions: list[int]) -> dict[str, Any]:
    """Per dtype and C, each stage's GFLOP/s and its share of the probe's `hidden` rate; bf16
    over fp32 images/s per C."""
    out: dict[str, Any] = {}
    for dtype, figures in by_dtype.items():
        if "runs" not in figures:
            continue
        limit = figures["probe_gflops"][figures["dtype"]]["hidden"]["median"]
        for run in figures["runs"].values():
            rates = {
                stage: run["stage_gflop"][stage] / seconds
                for stage, seconds in run["stage_seconds"].items()
                if seconds > 0
            }
            run["stage_gflops"] = rates
            run["stage_share_of_probe"] = {k: v / limit for k, v in rates.items()}
            run["whole_pass_share_of_probe"] = run["gflops_whole_pass"] / limit
        out[dtype] = {"probe_hidden_gflops": limit}
    fp32 = by_dtype.get("float32", {})
    for name, other in by_dtype.items():
        if name == "float32" or "runs" not in fp32 or "runs" not in other:
            continue
        key = "bf16_over_fp32_images_per_s" if name == "bfloat16" else f"{name}_over_fp32"
        out[key] = {
            str(c): other["runs"][str(c)]["images_per_s"] / fp32["runs"][str(c)]["images_per_s"]
            for c in conditions
        }
    return out


def print_summary(by_dtype: dict[str, dict[str, Any]], ratios: dict[str, Any]) -> None:
    header = f"{'dtype':<9}{'C':>3}{'images/s':>10}{'emb/s':>8}{'GFLOP/img':>10}{'GFLOP/s':>9}"
    header += f"{'% probe':>8}  " + "  ".join(f"{s:>14}" for s in STAGES)
    print(header + "   (stages: GFLOP/s, % of probe)")
    for dtype, figures in by_dtype.items():
        if "runs" not in figures:
            print(f"{dtype:<9} not run: {figures.get('skipped')}")
            continue
        for c, run in figures["runs"].items():
            rate, share = run["stage_gflops"], run["stage_share_of_probe"]
            cells = [f"{rate.get(s, 0):>7.1f} {100 * share.get(s, 0):>5.1f}%" for s in STAGES]
            print(
                f"{dtype:<9}{c:>3}{run['images_per_s']:>10.3f}{run['embeddings_per_s']:>8.2f}"
                f"{run['gflop_per_image']:>10.0f}{run['gflops_whole_pass']:>9.1f}"
                f"{100 * run['whole_pass_share_of_probe']:>7.1f}%  " + "  ".join(cells)
            )
        print(
            f"{dtype}: loaded in {figures['load_seconds']:.1f} s, peak RSS "
            f"{figures['peak_rss_gib']:.2f} GiB ({figures['peak_rss_gib_after_load']:.2f} after "
            f"loading), probe hidden {ratios[dtype]['probe_hidden_gflops']:.0f} GFLOP/s"
        )
    for key, by_c in ratios.items():
        if key.endswith(("_over_fp32", "_over_fp32_images_per_s")):
            for c, ratio in by_c.items():
                print(f"C = {c}: {key.split('_over')[0]} {ratio:.2f}x the images/s of fp32")


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-size", choices=MODEL_SIZES, default="3b")
    parser.add_argument("--model-dir", type=Path, help="keep the built model here; reuse it")
    parser.add_argument(
        "--dtypes",
        nargs="+",
        choices=["float32", "bfloat16", WHOLE_BF16, "int8"],
        default=["float32", "bfloat16"],
        help=f"bfloat16: mixed on a CPU (models.precision); {WHOLE_BF16}: wholly in bf16; "
        "int8: fp32 with dynamically quantised linear layers",
    )
    parser.add_argument(
        "--depth",
        type=int,
        nargs=2,
        metavar=("LANGUAGE", "VISION"),
        help="fewer layers of the same shapes (a smaller model for the dtypes' ratios)",
    )
    parser.add_argument("--images", type=int, default=2, help="images per run")
    parser.add_argument("--image-size", type=int, default=224, help="224: 64 visual tokens")
    parser.add_argument("--conditions", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--batch-size", type=int, default=8, help="rows per forward pass")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--clock", choices=CLOCKS, default="cpu", help="cpu: this process's time")
    parser.add_argument("--answer-tokens", type=int, default=3)
    parser.add_argument("--probe-seconds", type=float, default=1.5)
    parser.add_argument("--attention", choices=["sdpa", "eager"], help="default: the model's")
    parser.add_argument("--no-int8", dest="int8", action="store_false", help="skip int8 probe")
    parser.add_argument("--write", action="store_true", help="write benchmarks/results JSON")
    parser.add_argument("--tag", default="", help="added to the results file's name")
    parser.add_argument("--build", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if max(args.conditions) > len(CONDITIONS) or min(args.conditions) < 1:
        parser.error(f"--conditions must lie in 1..{len(CONDITIONS)}")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark (or, with --child/--build, one part of it); its figures."""
    args = parse(argv)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    if args.build:
        depth = (args.depth[0], args.depth[1]) if args.depth else None
        device = torch.device("cpu")
        build_model(args.model_dir, args.image_size, args.model_size, device, torch.bfloat16, depth)
        return {}
    if args.child:
        figures = run_dtype(args)
        args.out.write_text(json.dumps(figures))
        return figures
    with tempfile.TemporaryDirectory() as scratch:
        args.model_dir = args.model_dir or Path(scratch)
        build_s = 0.0
        if not (args.model_dir / "config.json").is_file():
            build_s = build_in_child(args)
            print(f"built {args.model_size} in bf16 in {build_s:.0f} s", flush=True)
        by_dtype = {dtype: run_in_child(args, dtype) for dtype in args.dtypes}
    ratios = summary(by_dtype, args.conditions)
    print_summary(by_dtype, ratios)
    figures = {
        "model_size": args.model_size,
        "images": args.images,
        "image_size": args.image_size,
        "build_seconds": build_s,
        "depth": {"language": args.depth[0], "vision": args.depth[1]} if args.depth else "full",
        "by_dtype": by_dtype,
        "summary": ratios,
    }
    if args.write:
        from results_file import write_results

        write_results(
            "cpu_throughput", figures, tag="-".join(filter(None, [args.model_size, args.tag]))
        )
    return figures


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
