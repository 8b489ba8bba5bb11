"""How batches are fed (`Throughput`) never changes an embedding; grouping pads less."""

import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from test_prefix_reuse import CONDITIONS, SAME, cosine_rows, decoder_tokens

from dior_search.models.dior import DiorEmbedder, Throughput
from dior_search.models.prompts import build_prompt
from dior_search.models.settings import DiorSettings

PLAIN = Throughput(image_threads=1, pin_memory=False, packed_suffixes=False, group_by_size=False)
FAST = Throughput(image_threads=3, pin_memory=False, packed_suffixes=True, group_by_size=True)


def embedder(path, throughput: Throughput, **overrides: object) -> DiorEmbedder:
    settings = DiorSettings(model=str(path), device="cpu", **overrides)  # type: ignore[arg-type]
    return DiorEmbedder(settings, throughput=throughput)


def test_cpu_defaults_leave_the_gpu_only_options_off():
    cpu = Throughput.for_device(torch.device("cpu"))
    assert (cpu.image_threads, cpu.pin_memory) == (1, False)
    assert cpu.packed_suffixes and cpu.group_by_size  # measured faster on a CPU too (README)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl", "llava"])
@pytest.mark.parametrize("scheme", ["reference", "native"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_throughput_options_give_the_same_embeddings(
    tiny_model_dirs, mixed_images, family, scheme, attention
):
    """Packed suffixes (bool mask under SDPA, float mask under eager attention), images in
    parallel and grouped by size, against one row per prompt in the order given."""
    models = [
        embedder(tiny_model_dirs[family], t, position_scheme=scheme, batch_size=8)
        for t in (PLAIN, FAST)
    ]
    for model in models:
        model.model.set_attn_implementation(attention)
    plain, fast = (model.embed(mixed_images, CONDITIONS) for model in models)
    assert cosine_rows(plain, fast).min() >= SAME


def test_grouping_by_size_pads_less_and_keeps_the_order(tiny_model_dirs, mixed_images):
    # Small, large, small, large: two images a pass pair a small one with a large one.
    images = [mixed_images[i] for i in (0, 3, 2, 1)]
    grouped_model = embedder(tiny_model_dirs["qwen2_5_vl"], FAST, batch_size=2)
    plain_model = embedder(tiny_model_dirs["qwen2_5_vl"], PLAIN, batch_size=2)
    grouped_tokens, plain_tokens = decoder_tokens(grouped_model), decoder_tokens(plain_model)
    grouped = grouped_model.embed(images, CONDITIONS[:1])
    plain = plain_model.embed(images, CONDITIONS[:1])
    assert cosine_rows(grouped, plain).min() >= SAME
    assert sum(grouped_tokens) < sum(plain_tokens)


def test_images_processed_in_parallel_give_identical_inputs(tiny_model_dirs, mixed_images):
    model = embedder(tiny_model_dirs["qwen2_5_vl"], PLAIN)
    prompts = [build_prompt("describe", c) for c in CONDITIONS]
    serial = model.inputs.split(mixed_images, prompts, model.model)
    with ThreadPoolExecutor(3) as workers:
        parallel = model.inputs.split(mixed_images, prompts, model.model, workers=workers)
    for name, tensor in serial.prefix_inputs.items():
        assert torch.equal(tensor, parallel.prefix_inputs[name]), name
    for name in ("next_position", "suffix_ids", "suffix_mask"):
        assert torch.equal(getattr(serial, name), getattr(parallel, name)), name


def test_packed_suffixes_run_one_row_per_image(tiny_model_dirs, mixed_images):
    """The suffix pass sends one row per image, not one per (image, condition)."""
    model = embedder(tiny_model_dirs["qwen2_5_vl"], FAST, batch_size=20)
    rows: list[int] = []
    first = model.model.get_decoder().layers[0]
    first.register_forward_hook(lambda _m, args, _o: rows.append(args[0].shape[0]))
    model.embed(mixed_images, CONDITIONS)
    assert rows == [len(mixed_images), len(mixed_images)]  # prefix pass, suffix pass
    assert np.isfinite(model.embed(mixed_images[:1], CONDITIONS)).all()


def test_a_model_that_refuses_packed_suffixes_falls_back_once(
    tiny_model_dirs, mixed_images, caplog, monkeypatch
):
    model = embedder(tiny_model_dirs["qwen2_5_vl"], FAST, batch_size=8)
    plain = embedder(tiny_model_dirs["qwen2_5_vl"], PLAIN, batch_size=8)

    def refuse(*_args: object) -> None:
        raise RuntimeError("the mask must be 2-D\nmore detail")

    monkeypatch.setattr("dior_search.models.dior_passes.pack_suffixes", refuse)
    with caplog.at_level(logging.WARNING):
        first = model.embed(mixed_images, CONDITIONS)
        second = model.embed(mixed_images[:2], CONDITIONS)
    assert caplog.text.count("packed suffixes are off") == 1
    assert "the mask must be 2-D" in caplog.text and "more detail" not in caplog.text
    assert not model.throughput.packed_suffixes
    assert cosine_rows(first, plain.embed(mixed_images, CONDITIONS)).min() >= SAME
    assert cosine_rows(second, plain.embed(mixed_images[:2], CONDITIONS)).min() >= SAME
