import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from dior_search.models.dior import DiorEmbedder
from dior_search.models.prompts import build_prompt
from dior_search.models.settings import DiorSettings
from dior_search.models.tiny_training import build_qwen_tokenizer, tiny_corpus

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def benchmark_module(name: str):
    """A module of benchmarks/, imported as its scripts import each other."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


@pytest.mark.slow
def test_throughput_benchmark_runs_every_path(capsys):
    module = benchmark_module("embed_throughput")
    argv = ["--images", "2", "--conditions", "1", "3", "--repeats", "1", "--image-size", "112"]
    argv += ["--threads", str(torch.get_num_threads())]  # main sets it for the process
    rates = module.main(argv)
    assert set(rates) == {(path, c) for path in module.PATHS for c in (1, 3)}
    assert all(rate > 0 for rate in rates.values())
    table = capsys.readouterr().out
    assert "lower bound" in table and "reference-kv" in table
    assert "GFLOP/emb" in table and "TFLOPS" in table
    assert "% peak" not in table  # a CPU has no peak to compare with


@pytest.mark.slow
def test_profile_runs_every_stage_before_and_after(tmp_path, capsys):
    module = benchmark_module("profile_embed")
    markdown = tmp_path / "profile.md"
    argv = ["--image-size", "56", "--batches", "1", "--conditions", "1", "3", "--batch-size", "3"]
    argv += ["--threads", str(torch.get_num_threads()), "--markdown", str(markdown)]
    argv += ["--clock", "cpu"]  # other work on the machine leaves the figures alone
    ms = module.main(argv)
    assert set(ms) == {"before", "after", "grouped"} and all(set(ms[v]) == {1, 3} for v in ms)
    for variant in ms.values():
        for stages in variant.values():
            for name in ("build", "patches", "vision", "prefix_lm", "suffix_lm", "pipelined"):
                assert stages[name] > 0, name
            assert stages["serial"] >= stages["vision"] + stages["prefix_lm"] + stages["suffix_lm"]
    # Before, the cache is copied per condition; packed suffixes never copy it.
    assert ms["before"][3]["repeat"] > 0 and ms["after"][3]["repeat"] == 0
    assert ms["before"][1]["repeat"] == 0  # one condition: nothing to repeat
    text = markdown.read_text()
    assert text.count("| stage | ms per batch | share | TFLOPS |") == 6  # variant x C
    assert text.count("### Where each millisecond of one batch goes") == 2  # one per C
    assert "| stage | before | after | grouped |" in text
    assert "vision tower" in text and "language model, suffixes" in text
    summaries = text.split("## Each variant")[0]
    assert summaries.strip() in capsys.readouterr().out


def counted(run) -> float:
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        run()
    return float(counter.get_total_flops())


def test_flop_count_equals_torch_flop_counter_on_the_real_forward_pass(tiny_model_dirs):
    """Vision tower (edge windows, full-attention layers), prefix and suffixes, counted by
    torch on the model's own forward pass. torch counts attention over every key; ours counts
    only the keys a causal query sees, so the masked (query, key) pairs are added back."""
    flops = benchmark_module("flops")
    embedder = DiorEmbedder(DiorSettings(model=str(tiny_model_dirs["qwen2_5_vl"]), device="cpu"))
    model = embedder.model
    model.set_attn_implementation("eager")  # plain matrix products, which torch counts
    config = model.config
    text = config.get_text_config()
    layers = text.num_hidden_layers
    per_pair = 4 * text.hidden_size * layers  # q.k and weight.v over all heads, every layer

    def masked_pairs(n: int) -> int:  # causal: query t of n does not see the n - 1 - t after it
        return n * (n - 1) // 2

    rng = np.random.default_rng(0)
    # 10 x 8 patches: windows of 4 x 4, 4 x 1, 1 x 4 and 1 x 1 merged tokens, one full layer.
    image = Image.fromarray(rng.integers(0, 256, (140, 112, 3), dtype=np.uint8))
    prompts = [build_prompt("describe", c) for c in ("color", "the main object's fabric")]
    split = embedder.inputs.split([image], prompts, model)
    grid = split.prefix_inputs["image_grid_thw"].tolist()
    assert grid == [[1, 10, 8]]
    n_prefix = int(split.prefix_inputs["attention_mask"].sum())

    pixels, grid_thw = split.prefix_inputs["pixel_values"], split.prefix_inputs["image_grid_thw"]
    vision = counted(lambda: model.visual(pixels, grid_thw=grid_thw))
    assert vision == flops.vision_flops(config.vision_config, grid)
    prefix = flops.decoder_flops(text, layers, n_prefix)
    whole_prefix = counted(lambda: embedder.passes.prefix_pass(split))
    assert whole_prefix == vision + prefix + per_pair * masked_pairs(n_prefix)

    cache = embedder.passes.prefix_pass(split)
    suffix_total = 0.0
    for row in range(len(prompts)):
        n = int(split.suffix_mask[row].sum())
        one = type(split)(
            split.prefix_inputs,
            split.next_position,
            split.suffix_ids[row : row + 1, :n],
            split.suffix_mask[row : row + 1, :n],
        )
        seen = counted(lambda one=one: embedder.passes.suffix_pass(one, cache))
        cache.crop(-n)
        ours = flops.decoder_flops(text, layers, n, n_past=n_prefix)
        assert seen == ours + per_pair * masked_pairs(n)
        suffix_total += ours

    work = flops.batch_work(config, layers, split)
    assert (work.vision, work.prefix, work.suffixes) == (vision, prefix, suffix_total)
    assert work.full == 2 * (work.vision + work.prefix) + work.suffixes


def test_seven_b_shapes_match_a_hand_count():
    """Qwen2.5-VL-7B at 448 x 448: 1,024 patches, 16 windows of 64, 256 visual tokens."""
    flops = benchmark_module("flops")
    embed = benchmark_module("embed_throughput")
    config = embed.model_config(build_qwen_tokenizer(tiny_corpus(), vocab_size=400), "7b")
    vision = config.vision_config
    linear = 32 * 2 * 1024 * (4 * 1280 * 1280 + 3 * 1280 * 3420)
    attention = 4 * 1280 * (4 * 1024**2 + 28 * 16 * 64**2)
    patch_embed = 2 * 1024 * 3 * 2 * 14 * 14 * 1280
    merger = 2 * 256 * (5120 * 5120 + 5120 * 3584)
    assert flops.vision_flops(vision, [(1, 32, 32)]) == linear + attention + patch_embed + merger
    text = config.text_config
    per_token = 2 * (2 * 3584 * 3584 + 2 * 3584 * 512 + 3 * 3584 * 18944)
    n = 290
    assert flops.decoder_flops(text, 28, n) == 28 * (n * per_token + 4 * 3584 * n * (n + 1) // 2)
    # The estimate: about 1.4 TFLOP of vision and 2 x 7B x ~300 tokens of language model.
    assert 1.2e12 < flops.vision_flops(vision, [(1, 32, 32)]) < 1.5e12


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A100 80GB PCIe", 312.0),
        ("NVIDIA L40S", 362.0),
        ("NVIDIA L40", 181.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA A10G", 125.0),
        ("Tesla T4", None),
    ],
)
def test_peak_by_device_name(name, peak):
    assert benchmark_module("flops").peak_tflops(name) == peak


def test_grouped_vision_attention_equals_the_models_own(tiny_model_dirs, mixed_images, monkeypatch):
    """The GPU session's experiment: same embeddings, far fewer attention calls."""
    experiment = benchmark_module("vision_attention")
    settings = DiorSettings(model=str(tiny_model_dirs["qwen2_5_vl"]), device="cpu")
    embedder = DiorEmbedder(settings)
    prompts = [build_prompt("describe", c) for c in ("color", None)]
    # Six images of 10 x 10 patches: windows of 4 x 4, 4 x 1, 1 x 4 and 1 x 1 merged tokens.
    same_size = [mixed_images[0].resize((140, 140))] * 6
    split = embedder.inputs.split(same_size, prompts, embedder.model)
    pixels, grid = split.prefix_inputs["pixel_values"], split.prefix_inputs["image_grid_thw"]
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(args[0].shape[0])
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)

    def vision() -> torch.Tensor:
        calls.clear()
        with torch.inference_mode():
            return embedder.model.visual(pixels, grid_thw=grid).pooler_output

    own, own_calls = vision(), len(calls)
    loop = embedder.embed(mixed_images, ["color", None])
    assert experiment.use_grouped_vision_attention(embedder.model) == 2
    grouped, grouped_calls = vision(), len(calls)
    batched = embedder.embed(mixed_images, ["color", None])
    experiment.use_loop_vision_attention(embedder.model)
    assert torch.allclose(own, grouped, atol=1e-5)
    assert cosine(loop, batched) >= 1 - 1e-6
    # A call per window (24) or image (6) before; one per distinct segment length after.
    assert (own_calls, grouped_calls) == (24 + 6, 3 + 1)
    assert np.array_equal(embedder.embed(mixed_images, ["color", None]), loop)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return float((a * b).sum(-1).min())


@pytest.mark.slow
def test_deletion_benchmark_runs_small(capsys):
    module = benchmark_module("deletions")

    argv = ["--size", "8000", "--dim", "64", "--queries", "100", "--shard-size", "3000"]
    rows = module.main([*argv, "--index-type", "IVF32,SQ8,Refine(SQfp16)"])
    assert [(r["deleted"], r["rows"], r["deleted_rows"]) for r in rows] == [
        ("0%", 8000, 0),
        ("10%", 7200, 800),
        ("40%", 4800, 3200),
        ("40%, compacted", 4800, 0),
    ]
    # Filtering deleted rows costs no recall against exact search over the live rows.
    assert rows[2]["recall"] >= rows[3]["recall"] - 0.01
    assert all(r["recall"] >= 0.9 for r in rows)
    assert "R@10" in capsys.readouterr().out


@pytest.mark.slow
def test_throughput_with_answers_runs(capsys):
    module = benchmark_module("embed_throughput")
    argv = ["--images", "2", "--conditions", "3", "--repeats", "1", "--image-size", "112"]
    argv += ["--threads", str(torch.get_num_threads()), "--paths", "ours", "ours+answers"]
    rates = module.main([*argv, "--passes-per-group", "2", "--answer-tokens", "2"])
    assert set(rates) == {("ours", 3), ("ours+answers", 3)}
    assert "with answers (2 tokens each)" in capsys.readouterr().out


@pytest.mark.slow
def test_filtered_search_benchmark_runs_small(capsys):
    module = benchmark_module("filtered_search")
    argv = ["--size", "6000", "--dim", "64", "--queries", "50", "--shard-size", "6000"]
    rows = module.main([*argv, "--index-type", "IVF32,SQ8,Refine(SQfp16)"])
    assert [r["passing"] for r in rows] == ["1%", "10%", "50%"]
    # Exactly k hits, and the recall of exact search over the passing rows, whatever passes.
    assert all(r["short_answers"] == 0 and r["recall"] >= 0.9 for r in rows)
    assert rows[0]["recall"] > rows[0]["naive_recall"]
    assert "top-100 then filter" in capsys.readouterr().out


@pytest.mark.slow
def test_store_comparison_runs_small(capsys):
    pytest.importorskip("pymilvus")
    module = benchmark_module("store_compare")
    rows = module.main(["--quick"])
    assert [(r["store"], r["index_type"]) for r in rows] == [
        ("folder", "Flat"),
        ("milvus-lite", "FLAT"),
    ]
    # Exact on both: every query finds its exact top 10.
    assert all(r["recall@10"] == 1.0 and r["insert_per_s"] > 0 for r in rows)
    assert "| milvus-lite | `FLAT` |" in capsys.readouterr().out


def test_parquet_read_benchmark_runs_small():
    # In a child: the comparison reads through a Python file with Arrow's threads, which may
    # abort the process that did it at exit (see dior_search/data/parquet.py).
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "parquet_reads.py"), "--rows", "300", "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| 300 |")]
    assert len(rows) == 6  # three reads, each from a native file and a Python file
    for row in rows:
        ours, theirs, ratio = (cell.strip() for cell in row.split("|")[4:7])
        assert float(ours) > 0 and float(theirs) > 0 and ratio.endswith("x")
