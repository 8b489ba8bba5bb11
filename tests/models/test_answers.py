"""The model's own answers, read while embedding: equal to a fresh forward pass with the full
LM head, the same whatever path embeds them, and cut into one word as documented."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, PreTrainedTokenizerFast

from dior_search.data.images import fit_within
from dior_search.data.sources import open_images
from dior_search.errors import UsageError
from dior_search.indexing.job import IndexSettings
from dior_search.indexing.run import index_collection
from dior_search.models.answers import (
    AnswerText,
    first_tokens,
    normalize_word,
    query_word,
    stop_tokens,
    surface_forms,
)
from dior_search.models.dior import DiorEmbedder, Throughput
from dior_search.models.prompts import build_prompt
from dior_search.models.settings import DiorSettings
from dior_search.store.reader import IndexReader

CONDITIONS = ["color", None, "texture type"]
# fp32 on a CPU: the cached path and the full pass differ in the last bits only.
CLOSE = {"rtol": 1e-5, "atol": 1e-4}


def reference_answer(causal, embedder: DiorEmbedder, image: Image.Image, prompt: str):
    """(word, log-probability, log-partition) by full forward passes of the causal LM over the
    prompt and the answer so far, one token at a time, cut by the same rule."""
    batch = embedder.inputs.build([fit_within(image, embedder.settings.max_side)], [prompt])
    inputs = dict(batch.inputs)
    text, partition = AnswerText(), None
    stops = stop_tokens(embedder.inputs.tokenizer, embedder.config)
    while not text.done:
        with torch.inference_mode():
            logits = causal(**inputs).logits[0, -1].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        if partition is None:
            partition = float(torch.logsumexp(logits, dim=-1))
        token = int(logprobs.argmax())
        text.add(token, float(logprobs[token]), embedder.inputs.tokenizer, stops)
        one = torch.tensor([[token]])
        inputs["input_ids"] = torch.cat([inputs["input_ids"], one], dim=1)
        inputs["attention_mask"] = torch.cat([inputs["attention_mask"], one * 0 + 1], dim=1)
        if "position_ids" in inputs:
            last = inputs["position_ids"][..., -1:]
            inputs["position_ids"] = torch.cat([inputs["position_ids"], last + 1], dim=-1)
        if "mm_token_type_ids" in inputs:
            kinds = inputs["mm_token_type_ids"]
            inputs["mm_token_type_ids"] = torch.cat([kinds, torch.zeros_like(one)], dim=1)
    return text.word(), text.logprob, partition


def write_images(folder: Path, images: list[Image.Image]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for number, image in enumerate(images):
        image.save(folder / f"{number}.png")
    return folder


MODELS = [
    ("qwen2_5_vl", "reference"),
    ("qwen2_5_vl", "native"),
    ("qwen2_vl", "reference"),
    ("qwen2_vl", "native"),
    ("llava", "reference"),
    ("qwen2_5_vl_untied", "reference"),
    ("qwen2_5_vl_untied", "native"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("family", "scheme"), MODELS)
def test_stored_answers_equal_a_fresh_pass_with_the_full_head(
    family, scheme, tiny_model_dirs, baseline_model_dirs, mixed_images, tmp_path
):
    path = {**tiny_model_dirs, **baseline_model_dirs}[family]
    embedder = DiorEmbedder(DiorSettings(model=str(path), device="cpu", position_scheme=scheme))
    images = mixed_images[:3]
    collection = open_images(write_images(tmp_path / "images", images))
    conditions = ["color", "unconditional", "texture type"]
    report = index_collection(
        collection, conditions, embedder, IndexSettings(indexes_dir=tmp_path / "ix")
    )
    causal = AutoModelForImageTextToText.from_pretrained(path).eval()
    for directory in report.indexes.values():
        reader = IndexReader(directory)
        assert reader.manifest.answers == "stored"
        prompt = build_prompt("describe", reader.manifest.condition["text"])
        for row, path_of in enumerate(reader.paths()):
            image = images[int(Path(path_of).stem)]
            word, logprob, partition = reference_answer(causal, embedder, image, prompt)
            assert reader.column("answer")[row] == word
            np.testing.assert_allclose(reader.column("log_partition")[row], partition, **CLOSE)
            np.testing.assert_allclose(reader.column("answer_logprob")[row], logprob, **CLOSE)


@pytest.mark.slow
def test_every_embedding_path_reads_the_same_answers(baseline_model_dirs, mixed_images):
    """Packed suffixes, a cache row per prompt, full passes, the caches of several passes
    joined to decode or not: one answer per row."""
    path = baseline_model_dirs["qwen2_5_vl_untied"]
    found = []
    paths = (
        (True, True, 64),
        (True, True, 1),
        (True, False, 64),
        (True, False, 1),
        (False, False, 64),
    )
    for prefix_reuse, packed, rows in paths:
        settings = DiorSettings(
            model=str(path), device="cpu", prefix_reuse=prefix_reuse, batch_size=6
        )
        throughput = Throughput(packed_suffixes=packed, answer_rows=rows)
        embedder = DiorEmbedder(settings, throughput=throughput)
        vectors, answers = embedder.embed_with_answers(mixed_images, CONDITIONS)
        np.testing.assert_allclose(vectors, embedder.embed(mixed_images, CONDITIONS), atol=1e-5)
        found.append(answers)
    words = [[[a.word for a in row] for row in answers] for answers in found]
    assert all(one == words[0] for one in words[1:])
    assert len({w for row in words[0] for w in row}) > 1  # a test that could fail
    for answers in found[1:]:
        for mine, theirs in zip(found[0], answers, strict=True):
            np.testing.assert_allclose(
                [a.log_partition for a in mine], [a.log_partition for a in theirs], **CLOSE
            )


def test_layers_other_than_the_last_have_no_answers(tiny_model_dirs, mixed_images):
    path = tiny_model_dirs["qwen2_5_vl"]
    embedder = DiorEmbedder(DiorSettings(model=str(path), device="cpu", layer=1))
    assert embedder.describe().answers == "not-last-layer"
    _, answers = embedder.embed_with_answers(mixed_images[:2], ["color"])
    assert answers == [[None], [None]]
    both = DiorEmbedder(DiorSettings(model=str(path), device="cpu"), layers=[-1, 1])
    assert [both.describe(layer).answers for layer in (-1, 1)] == ["stored", "not-last-layer"]


def test_the_tiny_model_answers_in_words(mixed_images):
    from dior_search.data.synthetic import make_item

    items = [make_item(0, "test", i) for i in range(8)]
    embedder = DiorEmbedder(DiorSettings(model="tiny", device="cpu"))
    _, answers = embedder.embed_with_answers([image for _, image in items], ["object color"])
    right = sum(row[0].word == item.color for (item, _), row in zip(items, answers, strict=True))
    assert right >= 7
    assert all(-1.0 < row[0].logprob <= 0.0 for row in answers)


# -- cutting the answer into one word ----------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    from dior_search.models.loading import resolve_model_source

    return PreTrainedTokenizerFast.from_pretrained(resolve_model_source("tiny"))


def fed(tokenizer, pieces: list[str], logprob: float = -0.5) -> AnswerText:
    """An answer fed the tokens of each text piece one at a time, as greedy decoding feeds
    them (`<eos>`: the end of the turn)."""
    text = AnswerText()
    stops = frozenset({tokenizer.eos_token_id})
    for piece in pieces:
        if piece == "<eos>":
            tokens = [tokenizer.eos_token_id]
        else:
            tokens = tokenizer(piece, add_special_tokens=False)["input_ids"]
        for token in tokens:
            text.add(token, logprob, tokenizer, stops)
            if text.done:
                return text
    return text


def test_answer_rules(tokenizer):
    assert fed(tokenizer, ["Red", '"']).word() == "red"
    assert fed(tokenizer, [" green", "<eos>"]).word() == "green"
    assert fed(tokenizer, ["\n", "red"]).word() == ""  # a newline before any word: no answer
    assert fed(tokenizer, ["orange", "."]).word() == "orange"
    assert fed(tokenizer, ["red", " blue"]).word() == "red"
    assert fed(tokenizer, ["off", "-", "white", "<eos>"]).word() == "off-white"
    # The log-probability counts the tokens that spell the word, not the closing quote.
    spelled = len(tokenizer("Red", add_special_tokens=False)["input_ids"])
    assert fed(tokenizer, ["Red", '"']).logprob == pytest.approx(-0.5 * spelled)
    # At most MAX_ANSWER_TOKENS tokens, whatever the model goes on with.
    long = fed(tokenizer, ["a"] * 20)
    assert long.done and len(long.tokens) == 8


def test_words_normalised_as_answers_are():
    assert normalize_word('"Red."') == "red"
    assert normalize_word("  Off-White- ") == "off-white"
    assert query_word("RED") == "red"
    assert surface_forms("red") == ["red", " red", "Red", " Red", "RED", " RED"]
    with pytest.raises(UsageError, match="holds no word"):
        query_word(" !? ")
    with pytest.raises(UsageError, match="not one word"):
        query_word("light blue")


def test_a_word_the_tokenizer_cannot_encode_is_refused():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocabulary = {"[UNK]": 0, "red": 1, "Red": 2}
    model = Tokenizer(models.WordLevel(vocabulary, unk_token="[UNK]"))
    model.pre_tokenizer = pre_tokenizers.Whitespace()
    words = PreTrainedTokenizerFast(tokenizer_object=model, unk_token="[UNK]")
    assert sorted(first_tokens(words, "red")) == [1, 2]  # RED is unknown: left out
    with pytest.raises(UsageError, match="cannot encode"):
        first_tokens(words, "teal")
