"""`--source first_output|mean_output`: DIOR vectors read from the decoded answer's tokens,
checked against Hugging Face's own greedy `generate` on the bundled tiny model."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText

from dior_search.data.images import fit_within
from dior_search.data.synthetic import make_item
from dior_search.errors import UsageError
from dior_search.models.answers import AnswerText, stop_tokens
from dior_search.models.dior import DiorEmbedder, Throughput
from dior_search.models.loading import BUNDLED_MODELS
from dior_search.models.methods import settings_for
from dior_search.models.prompts import build_prompt
from dior_search.models.settings import DiorSettings, EmbedderOptions
from dior_search.store.layout import embedder_folder

CONDITIONS = ["object color", None, "background"]
# fp32 on a CPU: the cached steps and generate's differ in the last bits only.
SAME = 0.9999
MAX_NEW_TOKENS = 8


@pytest.fixture(scope="module")
def images():
    """Synthetic images the tiny model understands (its answers are words of one or more
    tokens), in different sizes."""
    sizes = [(84, 84), (96, 60), (64, 112), (70, 70)]
    found = []
    for number, (width, height) in enumerate(sizes):
        _, image = make_item(0, "test", number)
        found.append(image.resize((width, height)))
    return found


@pytest.fixture(scope="module")
def causal():
    return AutoModelForImageTextToText.from_pretrained(BUNDLED_MODELS["tiny"]).eval()


def generated_states(causal, embedder: DiorEmbedder, image, prompt: str, layer: int):
    """(first_output, mean_output, answer tokens fed back) from `generate`: hidden_states[1]
    at `layer`, and the mean of hidden_states[1..m], m the answer's tokens fed back (the first
    always; a later one while the answer is still open after it, by the answer rule)."""
    batch = embedder.inputs.build([fit_within(image, embedder.settings.max_side)], [prompt])
    with torch.inference_mode():
        out = causal.generate(
            **batch.inputs,
            max_new_tokens=MAX_NEW_TOKENS,
            do_sample=False,
            output_hidden_states=True,
            return_dict_in_generate=True,
        )
    prompt_length = batch.inputs["input_ids"].shape[1]
    tokens = out.sequences[0, prompt_length:].tolist()
    text = AnswerText()
    stops = stop_tokens(embedder.inputs.tokenizer, embedder.config)
    fed = 0
    for token in tokens:
        text.add(token, 0.0, embedder.inputs.tokenizer, stops)
        if text.done and fed:
            break
        fed += 1
        if text.done:
            break
    states = [out.hidden_states[step][layer][0, -1].float().numpy() for step in range(1, fed + 1)]
    return states[0], np.mean(states, axis=0), fed


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.slow
@pytest.mark.parametrize("layer", [-1, -3])
def test_answer_sources_equal_generate(images, causal, layer):
    """Batched or one at a time, with prefix reuse (packed or a cache row per prompt) and
    without: the vector is generate's hidden state of the first answer token fed back, or the
    mean over the answer's tokens fed back."""
    found = {}
    for source in ("first_output", "mean_output"):
        settings = DiorSettings(
            model="tiny", device="cpu", position_scheme="native", layer=layer, source=source
        )
        paths = [(True, True, 8), (True, False, 8), (False, True, 8), (True, True, 1)]
        for prefix_reuse, packed, batch_size in paths:
            embedder = DiorEmbedder(
                replace(settings, prefix_reuse=prefix_reuse, batch_size=batch_size),
                throughput=Throughput(packed_suffixes=packed, answer_rows=64 if packed else 1),
            )
            found[source, prefix_reuse, packed, batch_size] = embedder.embed(images, CONDITIONS)
    last = DiorEmbedder(DiorSettings(model="tiny", device="cpu", position_scheme="native"))
    last_input = last.embed(images, CONDITIONS)
    several = 0
    for i, image in enumerate(images):
        for c, condition in enumerate(CONDITIONS):
            prompt = build_prompt("describe", condition)
            first, mean, fed = generated_states(causal, last, image, prompt, layer)
            several += fed > 1
            for (source, *_), vectors in found.items():
                expected = first if source == "first_output" else mean
                assert cosine(vectors[i, c], expected) >= SAME, (source, i, c)
                np.testing.assert_allclose(vectors[i, c], expected, rtol=1e-4, atol=1e-4)
            # Not the last input's state: the test tells the sources apart.
            assert cosine(first, last_input[i, c]) < SAME
            if fed > 1:
                assert cosine(first, mean) < SAME
    assert several  # some answer has more than one token fed back: mean_output is tested


def test_answers_and_vectors_from_one_decoding(images):
    """The stored answers are those of the last input source; the vectors of several layers
    come from one decoding and equal separate runs."""
    plain = DiorEmbedder(DiorSettings(model="tiny", device="cpu"))
    _, expected = plain.embed_with_answers(images, CONDITIONS)
    settings = DiorSettings(model="tiny", device="cpu", source="mean_output")
    vectors, answers = DiorEmbedder(settings).embed_with_answers(images, CONDITIONS)
    assert [[a.word for a in row] for row in answers] == [[a.word for a in row] for row in expected]
    both = DiorEmbedder(settings, layers=[-1, 2]).embed_layers(images, CONDITIONS)
    np.testing.assert_allclose(both[:, :, 0], vectors, atol=1e-5)
    alone = DiorEmbedder(DiorSettings(model="tiny", device="cpu", source="mean_output", layer=2))
    np.testing.assert_allclose(both[:, :, 1], alone.embed(images, CONDITIONS), atol=1e-5)
    assert alone.describe().answers == "not-last-layer"


def test_the_source_is_part_of_the_identity():
    # Another source is another embedder: its own index folder, never the last input's.
    folders = {
        source: embedder_folder(DiorEmbedder(DiorSettings(model="tiny", source=source)).describe())
        for source in ("last_input", "first_output", "mean_output")
    }
    assert folders == {
        "last_input": "tiny",
        "first_output": "tiny+source-first_output",
        "mean_output": "tiny+source-mean_output",
    }
    with pytest.raises(UsageError, match="unknown --source 'last'; valid: last_input"):
        DiorSettings(model="tiny", source="last")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="unknown --source 'last'; valid: last_input"):
        EmbedderOptions(model="tiny", source="last")  # refused before anything loads
    options = EmbedderOptions(model="tiny", source="first_output")
    assert options.dior().source == "first_output"
    for method in ("clip", "generative", "indirect"):
        with pytest.raises(UsageError, match="applies to the dior and dior-unconditional"):
            settings_for(method, options)


def full_pass_states(causal, embedder: DiorEmbedder, image, prompt: str, layer: int):
    """(first_output, mean_output) by full forward passes of the causal LM over the prompt and
    the answer so far, with the reference scheme's explicit sequential positions (which
    `generate` would replace by the model's own)."""
    batch = embedder.inputs.build([fit_within(image, embedder.settings.max_side)], [prompt])
    inputs = dict(batch.inputs)
    text, states = AnswerText(), []
    stops = stop_tokens(embedder.inputs.tokenizer, embedder.config)
    while True:
        with torch.inference_mode():
            out = causal(**inputs, output_hidden_states=True)
        if text.tokens or text.done:  # the state of a token fed back
            states.append(out.hidden_states[layer][0, -1].float().numpy())
        token = int(out.logits[0, -1].argmax())
        first = not text.tokens and not text.done
        text.add(token, 0.0, embedder.inputs.tokenizer, stops)
        if text.done and not first:
            break
        one = torch.tensor([[token]])
        inputs["input_ids"] = torch.cat([inputs["input_ids"], one], dim=1)
        inputs["attention_mask"] = torch.cat([inputs["attention_mask"], one * 0 + 1], dim=1)
        last = inputs["position_ids"][..., -1:]
        inputs["position_ids"] = torch.cat([inputs["position_ids"], last + 1], dim=-1)
        if text.done:  # the first token closed the answer: fed back once, for its state
            with torch.inference_mode():
                out = causal(**inputs, output_hidden_states=True)
            states.append(out.hidden_states[layer][0, -1].float().numpy())
            break
    return states[0], np.mean(states, axis=0)


@pytest.mark.slow
def test_answer_sources_with_reference_positions(images, causal):
    """The paper's default position scheme: the same states as full passes given its
    sequential positions, token by token."""
    reference = DiorEmbedder(DiorSettings(model="tiny", device="cpu"))
    for source in ("first_output", "mean_output"):
        settings = DiorSettings(model="tiny", device="cpu", layer=-2, source=source)
        vectors = DiorEmbedder(settings).embed(images, CONDITIONS)
        for i, image in enumerate(images):
            for c, condition in enumerate(CONDITIONS):
                prompt = build_prompt("describe", condition)
                first, mean = full_pass_states(causal, reference, image, prompt, -2)
                expected = first if source == "first_output" else mean
                # Layer -2 is before the final norm: large values, compared relative to them.
                assert cosine(vectors[i, c], expected) >= 0.99999, (source, i, c)
                scale = np.abs(expected).max()
                np.testing.assert_allclose(vectors[i, c], expected, atol=1e-5 * scale)
