import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel

from dior_search.models.dior import DiorEmbedder
from dior_search.models.families import PrefixReuseUnsupported
from dior_search.models.prompts import build_prompt
from dior_search.models.settings import DiorSettings

FAMILIES = ["qwen2_5_vl", "qwen2_vl", "llava"]
# None is the unconditional prompt, whose text leaves the conditional ones before the slot.
CONDITIONS = ["color", None, "texture type", "the main object's fabric and fit"]
# The acceptance bound is 0.9999; fp32 gives 1 - 1e-7 here, and a missing rope delta on these
# tiny models shows up only near 1 - 1e-5, so the tests hold the fast path tighter.
SAME = 1 - 1e-6


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (a * b).sum(-1)


def embedder(path: Path, **overrides: object) -> DiorEmbedder:
    settings = DiorSettings(model=str(path), device="cpu", **overrides)  # type: ignore[arg-type]
    return DiorEmbedder(settings)


def decoder_tokens(model: DiorEmbedder) -> list[int]:
    """Counts the tokens each forward pass sends through the first decoder layer."""
    seen: list[int] = []
    first = model.model.get_decoder().layers[0]
    first.register_forward_hook(lambda _m, args, _o: seen.append(args[0].shape[:2].numel()))
    return seen


@pytest.fixture(scope="module")
def full_forward_done() -> dict[tuple[str, str], np.ndarray]:
    return {}


@pytest.fixture
def full_forward(tiny_model_dirs, mixed_images, full_forward_done):
    """Full-forward embeddings of the (seeded) mixed images under CONDITIONS, computed once."""
    done = full_forward_done

    def embeddings(family: str, scheme: str) -> np.ndarray:
        if (family, scheme) not in done:
            full = embedder(tiny_model_dirs[family], position_scheme=scheme, prefix_reuse=False)
            done[family, scheme] = full.embed(mixed_images, CONDITIONS)
        return done[family, scheme]

    return embeddings


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("scheme", ["reference", "native"])
@pytest.mark.parametrize(
    ("columns", "batch_size"),
    [([0, 1, 2, 3], 9), ([0, 1, 2, 3], 20), ([0], 2), ([1], 1)],
    ids=["c4-images2-2-1", "c4-images5", "c1-images2-2-1", "c1-none-images1"],
)
def test_prefix_reuse_equals_full_forward(
    tiny_model_dirs, mixed_images, full_forward, caplog, family, scheme, columns, batch_size
):
    conditions = [CONDITIONS[c] for c in columns]
    fast = embedder(tiny_model_dirs[family], position_scheme=scheme, batch_size=batch_size)
    seen = decoder_tokens(fast)
    with caplog.at_level(logging.WARNING):
        vectors = fast.embed(mixed_images, conditions)
    assert "prefix reuse is off" not in caplog.text
    expected = full_forward(family, scheme)[:, columns]
    assert vectors.shape == expected.shape == (len(mixed_images), len(conditions), fast.dim)
    assert cosine_rows(vectors, expected).min() >= SAME
    # One prefix pass and one suffix pass per group of images.
    n_groups = -(-len(mixed_images) // max(1, batch_size // len(conditions)))
    assert len(seen) == 2 * n_groups


def visual_patches(model: DiorEmbedder) -> list[int]:
    """Counts the image patches each forward pass sends through the vision encoder."""
    seen: list[int] = []
    model.model.visual.register_forward_hook(lambda _m, args, _o: seen.append(len(args[0])))
    return seen


def test_prefix_reuse_encodes_each_image_once(tiny_model_dirs, mixed_images):
    fast = embedder(tiny_model_dirs["qwen2_5_vl"], batch_size=9)
    full = embedder(tiny_model_dirs["qwen2_5_vl"], batch_size=9, prefix_reuse=False)
    fast_patches, full_patches = visual_patches(fast), visual_patches(full)
    fast.embed(mixed_images, CONDITIONS)
    full.embed(mixed_images, CONDITIONS)
    assert sum(full_patches) == len(CONDITIONS) * sum(fast_patches)


def test_native_suffix_positions_continue_the_rope_index(tiny_model_dirs, mixed_images):
    """Under `native`, text after the image is not at its token index: the rope delta counts."""
    model = embedder(tiny_model_dirs["qwen2_5_vl"], position_scheme="native")
    prompts = [build_prompt("describe", c) for c in CONDITIONS]
    split = model.inputs.split(mixed_images[1:3], prompts, model.model)
    lengths = split.prefix_inputs["attention_mask"].sum(dim=1)
    for image in range(2):
        batch = model.inputs.build([mixed_images[1 + image]], prompts[:1])
        positions, _ = model.model.get_rope_index(
            batch.inputs["input_ids"],
            mm_token_type_ids=batch.inputs["mm_token_type_ids"],
            image_grid_thw=batch.inputs["image_grid_thw"],
        )
        first_suffix = positions[0, 0, int(lengths[image])]
        assert split.next_position[image] == first_suffix
        assert split.next_position[image] < lengths[image]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("prefix_reuse", [True, False])
def test_middle_layer_is_that_hidden_state_of_a_full_forward(
    tiny_model_dirs, mixed_images, family, prefix_reuse
):
    model = embedder(tiny_model_dirs[family], layer=1, prefix_reuse=prefix_reuse, batch_size=3)
    # It stops after the chosen layer: the later ones are not even kept.
    assert len(model.model.get_decoder().layers) == 1
    vectors = model.embed(mixed_images[:2], CONDITIONS[:2])

    whole = AutoModel.from_pretrained(tiny_model_dirs[family]).eval()
    for i, image in enumerate(mixed_images[:2]):
        for j, condition in enumerate(CONDITIONS[:2]):
            batch = model.inputs.build([image], [build_prompt("describe", condition)])
            with torch.inference_mode():
                hidden = whole(**batch.inputs, output_hidden_states=True).hidden_states
            expected = hidden[1][0, batch.last_index[0]].numpy()
            assert cosine_rows(vectors[i, j], expected) >= SAME
            assert cosine_rows(vectors[i, j], hidden[-1][0, -1].numpy()) < 0.99


def test_unsupported_family_falls_back_once(tiny_model_dirs, mixed_images, caplog, monkeypatch):
    model = embedder(tiny_model_dirs["llava"], batch_size=4)
    full = embedder(tiny_model_dirs["llava"], prefix_reuse=False)

    def cannot(*_args: object, **_kwargs: object) -> None:
        raise PrefixReuseUnsupported("not this one")

    monkeypatch.setattr(model.inputs, "split", cannot)
    with caplog.at_level(logging.WARNING):
        first = model.embed(mixed_images, CONDITIONS[:2])
        second = model.embed(mixed_images[:2], CONDITIONS[:1])
    assert caplog.text.count("prefix reuse is off") == 1
    assert "not this one" in caplog.text
    np.testing.assert_array_equal(first, full.embed(mixed_images, CONDITIONS[:2]))
    np.testing.assert_array_equal(second, full.embed(mixed_images[:2], CONDITIONS[:1]))


def test_no_images_or_no_conditions(tiny_model_dirs, mixed_images):
    model = embedder(tiny_model_dirs["qwen2_5_vl"])
    assert model.embed([], CONDITIONS).shape == (0, len(CONDITIONS), model.dim)
    assert model.embed(mixed_images, []).shape == (len(mixed_images), 0, model.dim)
