import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer, T5EncoderModel

from dior_search.errors import ModelError, UsageError
from dior_search.models.clip import ClipEmbedder, ClipSettings
from dior_search.models.generative import GenerativeEmbedder, GenerativeSettings
from dior_search.models.prompts import build_prompt
from dior_search.models.text_encoder import TextEncoder

CONDITIONS = ["color", None, "a much longer condition than the others"]
CPU = torch.device("cpu")


def clip(path: Path, **overrides: object) -> ClipEmbedder:
    return ClipEmbedder(ClipSettings(model=str(path), device="cpu", **overrides))  # type: ignore[arg-type]


def generative(vlm: Path, encoder: Path, **overrides: object) -> GenerativeEmbedder:
    settings = GenerativeSettings(
        model=str(vlm), text_encoder=str(encoder), device="cpu", max_new_tokens=4, **overrides
    )
    return GenerativeEmbedder(settings)


def test_clip_embeds_each_image_once_for_every_condition(baseline_model_dirs, mixed_images):
    model = clip(baseline_model_dirs["clip"], batch_size=2)
    seen: list[int] = []
    vectors = model.embed(mixed_images, CONDITIONS, on_progress=seen.append)
    assert vectors.shape == (len(mixed_images), len(CONDITIONS), 24) and model.dim == 24
    assert vectors.dtype == np.float32
    assert sum(seen) == len(mixed_images) * len(CONDITIONS)
    for column in range(1, len(CONDITIONS)):
        np.testing.assert_array_equal(vectors[:, column], vectors[:, 0])
    single = np.concatenate([model.embed_images([image]) for image in mixed_images])
    np.testing.assert_allclose(vectors[:, 0], single, rtol=1e-5, atol=1e-6)
    # The test can fail: different images give different vectors.
    assert np.abs(vectors[0, 0] - vectors[1, 0]).max() > 1e-3
    assert model.describe().method == "clip"


def test_clip_vector_is_the_projected_image_feature(baseline_model_dirs, mixed_images):
    model = clip(baseline_model_dirs["clip"])
    reference = AutoModel.from_pretrained(baseline_model_dirs["clip"]).eval()
    pixels = model.image_processor(images=mixed_images[:2], return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        pooled = reference.vision_model(pixel_values=pixels).pooler_output
        expected = reference.visual_projection(pooled).numpy()
    np.testing.assert_allclose(model.embed_images(mixed_images[:2]), expected, rtol=1e-5, atol=1e-6)


def test_missing_or_wrong_models_are_one_line_errors(baseline_model_dirs, tmp_path):
    qwen = baseline_model_dirs["qwen2_5_vl_untied"]
    for make, message in (
        (lambda: clip(tmp_path / "nowhere"), "cannot load model .*nowhere"),
        (lambda: clip(qwen), "not an image-text dual encoder; valid model types: align"),
        (lambda: generative(tmp_path / "nowhere", baseline_model_dirs["bert"]), "nowhere"),
        (lambda: generative(qwen, tmp_path / "nowhere"), "cannot load model .*nowhere"),
        (lambda: generative(qwen, baseline_model_dirs["clip"]), "clip model, not a text encoder"),
    ):
        with pytest.raises(ModelError, match=message) as caught:
            make()
        assert "\n" not in str(caught.value)
    with pytest.raises(UsageError, match="max new tokens"):
        GenerativeSettings(max_new_tokens=0)


@pytest.fixture
def talkative_qwen(baseline_model_dirs: dict[str, Path]) -> Path:
    return baseline_model_dirs["qwen2_5_vl_untied"]


@pytest.mark.parametrize("family", ["qwen2_5_vl_untied", "llava"])
def test_batched_answers_equal_one_at_a_time(
    baseline_model_dirs, tiny_model_dirs, mixed_images, family
):
    vlm = {**tiny_model_dirs, **baseline_model_dirs}[family]
    encoder = baseline_model_dirs["sentence_t5"]
    # Three image sizes and two prompt lengths: every batch of four mixes row lengths.
    images = [mixed_images[1], mixed_images[3], mixed_images[4]]
    conditions = [CONDITIONS[0], CONDITIONS[2]]
    model = generative(vlm, encoder, batch_size=4)
    # A repetition penalty looks at every input token, padding included.
    model.model.generation_config.repetition_penalty = 1.3
    batched, answers = model.embed_with_answers(images, conditions)
    assert batched.shape == (len(images), len(conditions), 20)
    assert batched.dtype == np.float32
    for i, image in enumerate(images):
        for j, condition in enumerate(conditions):
            [alone] = model.generate([image], [build_prompt("describe", condition)])
            assert answers[i][j] == alone.answer
            np.testing.assert_allclose(
                batched[i, j], model.encoder.encode([alone.text])[0], rtol=1e-5, atol=1e-6
            )
    # The test can fail: the answers differ between rows.
    assert len({a for row in answers for a in row}) > 1


def test_identical_answers_give_identical_vectors(
    baseline_model_dirs, talkative_qwen, mixed_images
):
    model = generative(talkative_qwen, baseline_model_dirs["bert"], encode_prompt=False)
    images = [mixed_images[2], mixed_images[2].copy(), mixed_images[0]]
    vectors, answers = model.embed_with_answers(images, ["color"])
    assert answers[0] == answers[1]
    np.testing.assert_array_equal(vectors[0], vectors[1])
    np.testing.assert_allclose(
        vectors[2, 0], model.encoder.encode(answers[2])[0], rtol=1e-5, atol=1e-6
    )
    assert model.describe().method == "generative"


def test_the_prompt_is_encoded_with_the_answer_by_default(
    baseline_model_dirs, talkative_qwen, mixed_images
):
    """The paper's code decodes the whole output, prompt included, and embeds that."""
    model = generative(talkative_qwen, baseline_model_dirs["bert"])
    prompt = build_prompt("describe", "color")
    [row] = model.generate(mixed_images[:1], [prompt])
    assert prompt in row.text
    assert row.text.endswith(row.answer)
    assert row.text != row.answer
    vectors = model.embed(mixed_images[:1], ["color"])
    np.testing.assert_allclose(vectors[0, 0], model.encoder.encode([row.text])[0], rtol=1e-5)


def test_sentence_transformers_modules_are_applied(baseline_model_dirs):
    folder = baseline_model_dirs["sentence_t5"]
    encoder = TextEncoder(str(folder), None, CPU)
    texts = ["  Red Circle ", "blue", "square " * 30]
    found = encoder.encode(texts, batch_size=2)
    assert found.shape == (3, 20) and encoder.dim == 20

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = T5EncoderModel.from_pretrained(folder).eval()
    state = torch.load(folder / "2_Dense" / "pytorch_model.bin", weights_only=True)
    config = json.loads((folder / "2_Dense" / "config.json").read_text())
    dense = torch.nn.Linear(config["in_features"], config["out_features"])
    dense.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
    # sentence_bert_config.json: lower-cased, at most 24 tokens.
    encoded = tokenizer(
        [t.strip().lower() for t in texts],
        padding=True,
        truncation=True,
        max_length=24,
        return_tensors="pt",
    )
    with torch.inference_mode():
        tokens = model(
            input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]
        ).last_hidden_state
        mask = encoded["attention_mask"][..., None].float()
        mean = (tokens * mask).sum(1) / mask.sum(1)
        expected = torch.nn.functional.normalize(torch.tanh(dense(mean)), dim=1).numpy()
    np.testing.assert_allclose(found, expected, rtol=1e-5, atol=1e-6)
    # The test can fail: without the Dense layer the vectors would be 32-wide and differ.
    assert not np.allclose(found, torch.nn.functional.normalize(mean, dim=1)[:, :20].numpy())


def test_plain_encoder_is_mean_pooled_and_normalised(baseline_model_dirs):
    folder = baseline_model_dirs["bert"]
    found = TextEncoder(str(folder), None, CPU).encode(["red", "a blue square"])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    encoded = tokenizer(["red", "a blue square"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        tokens = model(**encoded).last_hidden_state
    mask = encoded["attention_mask"][..., None].float()
    expected = torch.nn.functional.normalize((tokens * mask).sum(1) / mask.sum(1), dim=1)
    np.testing.assert_allclose(found, expected.numpy(), rtol=1e-5, atol=1e-6)


def test_sentence_transformers_model_from_the_hub_cache(baseline_model_dirs, tmp_path, monkeypatch):
    """A Hub id resolved offline from the cache reads its module files from the snapshot."""
    import shutil

    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--tiny-org--sentence-t5"
    shutil.copytree(baseline_model_dirs["sentence_t5"], repo / "snapshots" / ("b" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("b" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    from_hub = TextEncoder("tiny-org/sentence-t5", None, CPU).encode(["red circle"])
    local = TextEncoder(str(baseline_model_dirs["sentence_t5"]), None, CPU).encode(["red circle"])
    np.testing.assert_array_equal(from_hub, local)
