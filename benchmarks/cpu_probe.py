"""This CPU's sustained matrix-multiply rate at a model's shapes: fp32, bf16 and int8.

    python benchmarks/cpu_probe.py                       # Qwen2.5-VL-3B's shapes, 224 px images
    python benchmarks/cpu_probe.py --model-size 7b --image-size 448 --seconds 3

Each shape is a linear layer as the model runs it: `rows` tokens through a `inner x out` weight
(`F.linear`, the weight stored as nn.Linear stores it). The rows are the tokens of one image:
the vision tower's patches, the language model's prefix (visual tokens and the prompt), one
condition's suffix, and one decoding step per condition. `hidden` (hidden x hidden, a prefix's
tokens) is the figure the embedding benchmark (benchmarks/cpu_throughput.py) compares every
stage with; `mlp` is the language model's up projection, where most of its FLOPs are.

int8 is dynamic quantisation as torch.ao does it (weights int8 per tensor, activations
quantised per call): the speed `--dtype int8` would have, were it offered. The rate is the
median over calls of at least `--seconds`. By default one thread, timed by this process's CPU
time (`--clock cpu`): on a machine shared with other work, wall time counts the time given to
others and a descheduled OpenMP thread stalls the rest; one thread's CPU time is the work's own.
Figures are per core: an idle machine's N threads would reach up to N times as much.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Shape:
    """A linear layer's product: `rows` x `inner` activations times an `inner` x `out` weight."""

    rows: int
    inner: int
    out: int

    @property
    def flops(self) -> float:
        return 2.0 * self.rows * self.inner * self.out


def model_shapes(config: Any, patches: int, prefix: int, suffix: int) -> dict[str, Shape]:
    """The products a Qwen2.5-VL config runs on one image of `patches` patches (a prefix of
    `prefix` tokens, a suffix of `suffix`), by name."""
    text, vision = config.get_text_config(), config.vision_config
    return {
        "vision": Shape(patches, vision.hidden_size, vision.intermediate_size),
        "hidden": Shape(prefix, text.hidden_size, text.hidden_size),
        "mlp": Shape(prefix, text.hidden_size, text.intermediate_size),
        "suffix": Shape(suffix, text.hidden_size, text.intermediate_size),
        "decode": Shape(1, text.hidden_size, text.intermediate_size),
    }


# Wall time, or this process's CPU time: on a CPU shared with other work the wall clock counts
# the time the scheduler gave to others; with one thread, CPU time counts only this work's.
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["cpu"]


def timed_rate(run: Callable[[], Any], flops: float, seconds: float) -> dict[str, float]:
    """GFLOP/s of `run` over calls for at least `seconds` (by `clock`): median and best call."""
    for _ in range(2):  # first calls choose kernels and allocate
        run()
    rates: list[float] = []
    began = clock()
    while clock() - began < seconds or len(rates) < 3:
        start = clock()
        run()
        rates.append(flops / max(clock() - start, 1e-9) / 1e9)
    rates.sort()
    return {"median": rates[len(rates) // 2], "best": rates[-1], "calls": float(len(rates))}


def float_rate(shape: Shape, dtype: torch.dtype, seconds: float) -> dict[str, float]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape.rows, shape.inner, generator=generator).to(dtype)
    weight = (torch.randn(shape.out, shape.inner, generator=generator) * 0.02).to(dtype)
    return timed_rate(lambda: F.linear(x, weight), shape.flops, seconds)


def int8_rate(shape: Shape, seconds: float) -> dict[str, float]:
    """Dynamic int8 quantisation of one nn.Linear (torch.ao), fp32 activations in and out."""
    with warnings.catch_warnings():  # torch.ao.quantization warns that it moves to torchao
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        layer = torch.nn.Linear(shape.inner, shape.out, bias=False)
        quantised = quantize_dynamic(torch.nn.Sequential(layer), {torch.nn.Linear}, torch.qint8)
    x = torch.randn(shape.rows, shape.inner)
    with torch.inference_mode():
        return timed_rate(lambda: quantised(x), shape.flops, seconds)


def quantize_linear_layers(model: torch.nn.Module) -> torch.nn.Module:
    """`model` (fp32) with every nn.Linear dynamically quantised to int8 (torch.ao), in place."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {torch.nn.Linear}, torch.qint8, inplace=True)


def use_clock(name: str) -> None:
    global clock
    clock = CLOCKS[name]


def int8_supported() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines


def probe(
    shapes: dict[str, Shape], dtypes: Sequence[str], seconds: float
) -> dict[str, dict[str, dict[str, float]]]:
    """Rates by dtype (float32, bfloat16, int8) and shape name."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    with torch.inference_mode():
        for name in dtypes:
            if name == "int8":
                if int8_supported():
                    out[name] = {key: int8_rate(shape, seconds) for key, shape in shapes.items()}
                continue
            dtype = DTYPES[name]
            out[name] = {key: float_rate(shape, dtype, seconds) for key, shape in shapes.items()}
    return out


def print_probe(rates: dict[str, dict[str, dict[str, float]]], shapes: dict[str, Shape]) -> None:
    print(
        f"matmul probe, {torch.get_num_threads()} threads, {clock.__name__}: GFLOP/s median (best)"
    )
    for dtype, by_shape in rates.items():
        cells = [
            f"{key} {shape.rows}x{shape.inner}x{shape.out}: "
            f"{by_shape[key]['median']:.0f} ({by_shape[key]['best']:.0f})"
            for key, shape in shapes.items()
        ]
        print(f"  {dtype:<9} " + "; ".join(cells), flush=True)


def tokens_of_image(image_size: int) -> tuple[int, int]:
    """Patches of a square image of `image_size` px (14 px patches) and its visual tokens."""
    side = max(2, round(image_size / 28) * 2)
    return side * side, side * side // 4


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    from embed_throughput import model_config  # benchmarks/: run as a script

    from dior_search.models.tiny_training import build_qwen_tokenizer, tiny_corpus

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-size", choices=["mid", "3b", "7b"], default="3b")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--seconds", type=float, default=2.0, help="per shape and dtype")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--clock", choices=CLOCKS, default="cpu", help="cpu: this process's time")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16", "int8"])
    parser.add_argument("--write", action="store_true", help="write benchmarks/results JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    use_clock(args.clock)
    config = model_config(build_qwen_tokenizer(tiny_corpus(), vocab_size=300), args.model_size)
    patches, visual = tokens_of_image(args.image_size)
    shapes = model_shapes(config, patches, visual + 25, 12)  # a describe prompt's text tokens
    rates = probe(shapes, args.dtypes, args.seconds)
    print_probe(rates, shapes)
    if args.write:
        from results_file import write_results

        figures = {"shapes": {k: vars(s) for k, s in shapes.items()}, "gflops": rates}
        write_results("cpu_probe", figures, tag=args.model_size)
    return rates


if __name__ == "__main__":
    main()
