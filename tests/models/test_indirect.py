"""The InDiReCT baseline: the projection it fits, and its embeddings by the formula."""

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from dior_search.data.collections import DATASETS
from dior_search.data.indirect_texts import word_list
from dior_search.errors import UsageError
from dior_search.models import load_embedder
from dior_search.models.indirect import fit_projection, reconstruction_angle
from dior_search.models.settings import IndirectSettings


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def subspace_texts(seed: int, n: int, dim: int, rank: int, noise: float) -> tuple:
    """`n` unit vectors of R^dim that vary (up to `noise`) only inside a random subspace of
    dimension `rank`: its orthonormal basis (rank x dim) and the vectors."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(dim, rank)))[0].T
    texts = rng.normal(size=(n, rank)) @ basis + noise * rng.normal(size=(n, dim))
    return basis, unit(texts).astype(np.float32)


@pytest.mark.parametrize("noise", [0.0, 0.02])
def test_the_projection_learns_the_subspace_the_texts_vary_in(noise):
    basis, texts = subspace_texts(seed=3, n=60, dim=32, rank=4, noise=noise)
    projection = fit_projection(texts, components=4)
    assert projection.shape == (4, 32)
    # Every row of U lies in the texts' subspace, and together they span it.
    rows = unit(projection)
    inside = np.linalg.norm(rows @ basis.T, axis=1)
    assert inside.min() > 0.99
    assert np.linalg.svd(rows @ basis.T, compute_uv=False).min() > 0.3
    # So a direction the texts never take is (nearly) projected away, and a text survives.
    rng = np.random.default_rng(4)
    outside = rng.normal(size=32)
    outside -= basis.T @ (basis @ outside)
    assert np.linalg.norm(projection @ unit(outside)) < 0.05 * np.linalg.norm(projection)
    angle = reconstruction_angle(torch.as_tensor(texts), torch.as_tensor(projection))
    assert float(angle) < (0.01 if noise == 0 else 0.1)


def test_the_fit_is_seeded(tmp_path):
    _, texts = subspace_texts(seed=5, n=30, dim=16, rank=3, noise=0.01)
    np.testing.assert_array_equal(fit_projection(texts, 8), fit_projection(texts, 8))
    assert not np.array_equal(fit_projection(texts, 8), fit_projection(texts, 8, seed=1))


def test_embeddings_follow_the_formula(baseline_model_dirs, mixed_images):
    """normalise(normalise(clip_image(x)) U^T), U fitted to CLIP's unit text embeddings."""
    path = baseline_model_dirs["clip"]
    embedder = load_embedder(IndirectSettings(model=str(path), device="cpu", batch_size=2))
    vectors = embedder.embed(mixed_images, ["object color", "pattern"])
    assert vectors.shape == (len(mixed_images), 2, 128) and embedder.dim == 128

    clip = AutoModel.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    pixels = embedder.clip.image_processor(images=mixed_images, return_tensors="pt")
    with torch.inference_mode():
        images = clip.get_image_features(pixel_values=pixels["pixel_values"]).pooler_output
        for column, condition in enumerate(["object color", "pattern"]):
            tokens = tokenizer(
                word_list(condition).texts(), padding=True, truncation=True, return_tensors="pt"
            )
            texts = clip.get_text_features(**tokens).pooler_output.numpy()
            # Normalised inside: the fit follows its inputs to the last bit, so they must be
            # exactly the embedder's.
            projection = fit_projection(texts)
            expected = unit(unit(images.numpy()) @ projection.T)
            np.testing.assert_allclose(vectors[:, column], expected, atol=1e-5)
    # The conditions' projections differ, so their embeddings do.
    assert np.abs(vectors[:, 0] - vectors[:, 1]).max() > 0.02
    assert embedder.describe().to_fields()["components"] == 128


def test_a_condition_without_a_word_list_is_refused(baseline_model_dirs, mixed_images):
    embedder = load_embedder(IndirectSettings(model=str(baseline_model_dirs["clip"]), device="cpu"))
    with pytest.raises(UsageError, match="no InDiReCT word list for condition 'season'"):
        embedder.embed(mixed_images[:1], ["season"])
    with pytest.raises(UsageError, match="no unconditional embedding"):
        embedder.embed(mixed_images[:1], [None])


def test_every_labelled_condition_has_a_word_list():
    for spec in DATASETS.values():
        for condition, text in spec.conditions.items():
            texts = word_list(text).texts()
            assert len(texts) >= 15 and len(set(texts)) == len(texts), (spec.name, condition)
    assert word_list("clothing category").texts()[0].startswith("a photo of a person wearing a")
