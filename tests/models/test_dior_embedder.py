from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel

from dior_search.errors import ModelError, UsageError
from dior_search.models.dior import DiorEmbedder
from dior_search.models.prompts import build_prompt
from dior_search.models.settings import DiorSettings

CONDITIONS = ["color", None, "texture type", "the main object's fabric and fit"]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (a * b).sum(-1)


def embedder(path: Path, **overrides: object) -> DiorEmbedder:
    settings = DiorSettings(model=str(path), device="cpu", **overrides)  # type: ignore[arg-type]
    return DiorEmbedder(settings)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl", "llava"])
@pytest.mark.parametrize("scheme", ["reference", "native"])
def test_batched_equals_one_at_a_time(tiny_model_dirs, mixed_images, family, scheme):
    batched = embedder(tiny_model_dirs[family], position_scheme=scheme, batch_size=7)
    vectors = batched.embed(mixed_images, CONDITIONS)
    assert vectors.shape == (len(mixed_images), len(CONDITIONS), batched.dim)
    assert vectors.dtype == np.float32

    single = np.stack(
        [
            np.stack(
                [batched.embed_rows([image], [build_prompt("describe", c)])[0] for c in CONDITIONS]
            )
            for image in mixed_images
        ]
    )
    assert cosine_rows(vectors, single).min() >= 0.9999
    # The test can fail: distinct rows are not near-identical vectors.
    flat = vectors.reshape(-1, vectors.shape[-1])
    off_diagonal = cosine_rows(flat[:, None], flat[None, :])[~np.eye(len(flat), dtype=bool)]
    assert off_diagonal.max() < 0.9999


def test_pad_position_is_not_the_embedding(tiny_model_dirs, mixed_images):
    """The reference code's batching bug (reading a pad position) would change the vectors."""
    model = embedder(tiny_model_dirs["qwen2_5_vl"])
    prompts = [
        build_prompt("describe", "color"),
        build_prompt("describe", "a much longer condition"),
    ]
    batch = model.inputs.build(mixed_images[:2], prompts)
    short_row = int(torch.argmin(batch.last_index))
    assert batch.last_index[short_row] < batch.inputs["input_ids"].shape[1] - 1
    with torch.inference_mode():
        hidden = model.model(**batch.inputs, output_hidden_states=True).hidden_states[-1]
    right = hidden[short_row, batch.last_index[short_row]].numpy()
    wrong = hidden[short_row, -1].numpy()
    assert cosine_rows(right, wrong) < 0.999
    np.testing.assert_allclose(
        model.embed_rows([mixed_images[short_row]], [prompts[short_row]])[0],
        right,
        rtol=1e-4,
        atol=1e-5,
    )


def test_reference_positions_are_sequential(tiny_model_dirs, mixed_images):
    """`reference` is the paper's code: 2-D sequential positions over the whole prompt."""
    model = embedder(tiny_model_dirs["qwen2_5_vl"], position_scheme="reference")
    prompt = build_prompt("describe", "color")
    batch = model.inputs.build(mixed_images[1:2], [prompt])
    ids = batch.inputs["input_ids"]
    with torch.inference_mode():
        expected = (
            model.model(
                **{k: v for k, v in batch.inputs.items() if k != "position_ids"},
                position_ids=torch.arange(ids.shape[1])[None],
                output_hidden_states=True,
            )
            .hidden_states[-1][0, -1]
            .numpy()
        )
    np.testing.assert_array_equal(model.embed_rows(mixed_images[1:2], [prompt])[0], expected)


def test_native_positions_are_the_models_own(tiny_model_dirs, mixed_images):
    native = embedder(tiny_model_dirs["qwen2_5_vl"], position_scheme="native")
    reference = embedder(tiny_model_dirs["qwen2_5_vl"], position_scheme="reference")
    prompt = build_prompt("describe", "color")
    batch = native.inputs.build(mixed_images[1:2], [prompt])
    positions, _ = native.model.get_rope_index(
        batch.inputs["input_ids"],
        mm_token_type_ids=batch.inputs["mm_token_type_ids"],
        image_grid_thw=batch.inputs["image_grid_thw"],
    )
    n_tokens = batch.inputs["input_ids"].shape[1]
    # Text after the image continues from the grid's largest position, not the token count.
    assert positions[0, 0, -1] < n_tokens - 1
    a = native.embed_rows(mixed_images[1:2], [prompt])
    b = reference.embed_rows(mixed_images[1:2], [prompt])
    assert not np.array_equal(a, b)


def test_layer_choice(tiny_model_dirs, mixed_images):
    last = embedder(tiny_model_dirs["qwen2_5_vl"], layer=-1).embed(mixed_images[:1], ["color"])
    also_last = embedder(tiny_model_dirs["qwen2_5_vl"], layer=2).embed(mixed_images[:1], ["color"])
    first = embedder(tiny_model_dirs["qwen2_5_vl"], layer=1).embed(mixed_images[:1], ["color"])
    np.testing.assert_array_equal(last, also_last)
    assert cosine_rows(last, first).max() < 0.99
    with pytest.raises(
        UsageError, match=r"layer 3 out of range: this model has hidden states 0\.\.2"
    ):
        embedder(tiny_model_dirs["qwen2_5_vl"], layer=3)


def test_dtype_defaults_to_float32_on_cpu(tiny_model_dirs):
    model = embedder(tiny_model_dirs["qwen2_5_vl"])
    assert model.dtype == torch.float32
    assert next(model.model.parameters()).dtype == torch.float32
    bf16 = embedder(tiny_model_dirs["qwen2_5_vl"], dtype="bfloat16")
    # Its products' weights: on a CPU the rest runs in fp32 (models.precision).
    assert bf16.dtype == torch.bfloat16
    assert bf16.model.get_submodule("language_model.layers.0.mlp.up_proj").weight.dtype == (
        torch.bfloat16
    )
    with pytest.raises(UsageError, match="unknown dtype 'fp8'; valid: auto, float32"):
        DiorSettings(dtype="fp8")


def test_base_model_is_loaded_without_lm_head(tiny_model_dirs):
    model = embedder(tiny_model_dirs["qwen2_5_vl"])
    assert type(model.model) is type(AutoModel.from_config(model.config))
    assert not any("lm_head" in name for name, _ in model.model.named_parameters())


def test_hub_id_and_local_path_load_the_same_way(
    tiny_model_dirs, mixed_images, tmp_path, monkeypatch
):
    """A Hub id resolved from the offline cache gives what the saved folder gives."""
    from huggingface_hub import constants

    snapshot = tmp_path / "hub" / "models--tiny-org--qwen25" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    for file in tiny_model_dirs["qwen2_5_vl"].iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    refs = tmp_path / "hub" / "models--tiny-org--qwen25" / "refs"
    refs.mkdir()
    (refs / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    from_hub = DiorEmbedder(DiorSettings(model="tiny-org/qwen25", device="cpu"))
    from_path = embedder(tiny_model_dirs["qwen2_5_vl"])
    np.testing.assert_array_equal(
        from_hub.embed(mixed_images[:2], ["color"]), from_path.embed(mixed_images[:2], ["color"])
    )
    assert from_hub.describe().commit == "a" * 40


def test_unknown_model_offline_is_one_clear_error():
    with pytest.raises(ModelError, match="not a local folder and not in the Hugging Face cache"):
        DiorEmbedder(DiorSettings(model="no-such-org/no-such-model", device="cpu"))


def test_folder_without_model(tmp_path):
    with pytest.raises(ModelError, match=r"holds no model config\.json"):
        DiorEmbedder(DiorSettings(model=str(tmp_path), device="cpu"))


def test_images_are_shrunk_as_the_paper_does(tiny_model_dirs):
    """Longer side cut to `max_side` with Lanczos before the model sees the image."""
    from PIL import Image

    from dior_search.data.images import fit_within

    big = Image.fromarray(np.random.default_rng(2).integers(0, 256, (300, 1000, 3), dtype=np.uint8))
    shrunk = fit_within(big, 700)
    assert shrunk.size == (700, 210)
    assert fit_within(big.rotate(90, expand=True), 700).size == (210, 700)
    assert fit_within(shrunk, 700) is shrunk
    capped = embedder(tiny_model_dirs["qwen2_5_vl"], max_side=700).embed([big], ["color"])
    uncapped = embedder(tiny_model_dirs["qwen2_5_vl"], max_side=None)
    np.testing.assert_allclose(uncapped.embed([shrunk], ["color"]), capped, rtol=1e-5, atol=1e-6)
    assert not np.allclose(uncapped.embed([big], ["color"]), capped, atol=1e-4)
    with pytest.raises(UsageError, match="at least 1 pixel"):
        DiorSettings(max_side=0)


def test_refused_images_are_those_smart_resize_refuses(tiny_model_dirs):
    """check_size refuses exactly the sizes transformers' smart_resize refuses, before any
    model call, and embedding agrees on both sides of the limit."""
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    from dior_search.models.embedder import ImageRefused

    model = embedder(tiny_model_dirs["qwen2_5_vl"], max_side=None)
    processor = model.inputs.image_processor
    limits = {
        "factor": processor.patch_size * processor.merge_size,
        "min_pixels": processor.size.shortest_edge,
        "max_pixels": processor.size.longest_edge,
    }
    sides = (1, 2, 3, 13, 14, 15, 27, 199, 200, 201, 399, 400, 401, 603, 2000)
    for width in sides:
        for height in sides:
            try:
                smart_resize(height, width, **limits)
                refused = False
            except ValueError:
                refused = True
            if refused:
                with pytest.raises(ImageRefused, match=f"{width}x{height} image: its aspect"):
                    model.check_size(width, height)
            else:
                model.check_size(width, height)
    for width, height, accepted in [
        (200, 1, True),
        (201, 1, False),
        (2, 401, False),
        (2, 400, True),
    ]:
        image = Image.new("RGB", (width, height), "red")
        if accepted:
            assert model.embed([image], ["color"]).shape == (1, 1, model.dim)
        else:
            with pytest.raises(ValueError, match="aspect ratio"):
                model.embed([image], ["color"])


def test_refusal_looks_at_the_image_the_model_gets(tiny_model_dirs):
    """10000 x 50 is a ratio of 200, but shrunk to 700 x 3 it is 233: refused, and said so."""

    from dior_search.models.embedder import ImageRefused

    model = embedder(tiny_model_dirs["qwen2_5_vl"], max_side=700)
    with pytest.raises(ImageRefused) as refused:
        model.check_size(10000, 50)
    assert str(refused.value) == (
        "the model cannot take this 10000x50 image (shrunk to 700x3): its aspect ratio 233.333 "
        "is over 200, Qwen-VL's limit"
    )
    model.check_size(10000, 60)  # 700 x 4: 175
