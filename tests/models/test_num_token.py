"""`num_token` (the reference's `--num_token`): the prompt token N from the end instead of the
last, equal to a full forward pass read at that position, for every family, position scheme,
batch size and prefix-reuse mode the equality tests of the last token cover."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runs import error_line, run_cli, synthetic_datasets
from test_prefix_reuse import CONDITIONS, FAMILIES, SAME, cosine_rows
from transformers import AutoModel

from dior_search.errors import UsageError
from dior_search.models.dior import DiorEmbedder
from dior_search.models.prompts import build_prompt
from dior_search.models.settings import DiorSettings, EmbedderOptions

# -2: the token before the last; -6: in every suffix of the four CONDITIONS' prompts (where they
# differ), but before the one suffix token of a single prompt's split: full passes there.
POSITIONS = (-2, -6)


def embedder(path: Path, **overrides: object) -> DiorEmbedder:
    settings = DiorSettings(model=str(path), device="cpu", **overrides)  # type: ignore[arg-type]
    return DiorEmbedder(settings)


@pytest.fixture(scope="module")
def forward_done() -> dict[tuple[str, str, int], np.ndarray]:
    return {}


@pytest.fixture
def full_forward(tiny_model_dirs, mixed_images, forward_done):
    """Hugging Face's full forward pass per (image, prompt), its hidden states at `layers`
    read `num_token` from the end: (images, CONDITIONS, layers, dim), computed once."""

    def states(family: str, scheme: str, num_token: int, layers=(-1,)) -> np.ndarray:
        key = (family, scheme, num_token, tuple(layers))
        if key not in forward_done:
            builder = embedder(tiny_model_dirs[family], position_scheme=scheme).inputs
            whole = AutoModel.from_pretrained(tiny_model_dirs[family]).eval()
            out = []
            for image in mixed_images:
                row = []
                for condition in CONDITIONS:
                    batch = builder.build([image], [build_prompt("describe", condition)])
                    with torch.inference_mode():
                        hidden = whole(**batch.inputs, output_hidden_states=True).hidden_states
                    at = int(batch.last_index[0]) + num_token + 1
                    row.append([hidden[layer][0, at].numpy() for layer in layers])
                out.append(row)
            forward_done[key] = np.asarray(out)
        return forward_done[key]

    return states


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("scheme", ["reference", "native"])
@pytest.mark.parametrize("num_token", POSITIONS)
@pytest.mark.parametrize(
    ("prefix_reuse", "columns", "batch_size"),
    [
        (True, [0, 1, 2, 3], 9),
        (True, [0, 1, 2, 3], 20),
        (True, [0], 2),
        (True, [1], 1),
        (False, [0, 1, 2, 3], 7),
        (False, [2], 1),
    ],
    ids=["reuse-c4-b9", "reuse-c4-b20", "reuse-c1-b2", "reuse-none-b1", "full-c4-b7", "full-c1"],
)
def test_equals_a_full_forward_read_at_that_position(
    tiny_model_dirs, mixed_images, full_forward, caplog, family, scheme, num_token,
    prefix_reuse, columns, batch_size,
):  # fmt: skip
    model = embedder(
        tiny_model_dirs[family],
        position_scheme=scheme,
        num_token=num_token,
        prefix_reuse=prefix_reuse,
        batch_size=batch_size,
    )
    conditions = [CONDITIONS[c] for c in columns]
    with caplog.at_level(logging.INFO):
        vectors = model.embed(mixed_images, conditions)
    # A single prompt's split leaves one suffix token: the position lies before it, and that
    # call runs full passes; four prompts differ early enough to read it in their suffixes.
    fell_back = "full forward passes for these prompts" in caplog.text
    assert fell_back == (prefix_reuse and len(columns) == 1)
    assert "prefix reuse is off" not in caplog.text
    expected = full_forward(family, scheme, num_token)[:, columns, 0]
    assert vectors.shape == expected.shape
    assert cosine_rows(vectors, expected).min() >= SAME
    # The test can fail: the last token's state is another vector.
    last = full_forward(family, scheme, -1)[:, columns, 0]
    assert cosine_rows(vectors, last).max() < 0.999


@pytest.mark.parametrize("prefix_reuse", [True, False])
def test_several_layers_at_that_position(mixed_images, prefix_reuse):
    layers = [-1, 2, 3, -4]
    model = DiorEmbedder(
        DiorSettings(model="tiny", device="cpu", batch_size=4, num_token=-3,
                     prefix_reuse=prefix_reuse),
        layers,
    )  # fmt: skip
    stacked = model.embed_layers(mixed_images, CONDITIONS)
    hidden = [layer % (model.n_layers + 1) for layer in layers]
    builder = model.inputs
    whole = AutoModel.from_pretrained(model.source).eval()
    for i, image in enumerate(mixed_images[:2]):
        for j, condition in enumerate(CONDITIONS):
            batch = builder.build([image], [build_prompt("describe", condition)])
            with torch.inference_mode():
                states = whole(**batch.inputs, output_hidden_states=True).hidden_states
            at = int(batch.last_index[0]) - 2
            for k, index in enumerate(hidden):
                assert cosine_rows(stacked[i, j, k], states[index][0, at].numpy()) >= SAME


def test_answers_are_still_the_last_tokens(mixed_images):
    default = DiorEmbedder(DiorSettings(model="tiny", device="cpu", batch_size=4))
    shifted = DiorEmbedder(DiorSettings(model="tiny", device="cpu", batch_size=4, num_token=-2))
    conditions = ["object color", "pattern"]
    last, answers = default.embed_with_answers(mixed_images, conditions)
    vectors, shifted_answers = shifted.embed_with_answers(mixed_images, conditions)
    assert shifted_answers == answers
    assert cosine_rows(vectors, last).max() < 0.999
    np.testing.assert_allclose(vectors, shifted.embed(mixed_images, conditions), atol=1e-5)
    # Its vectors are not the last input's: no text query scores by them.
    assert not shifted.describe().reads_last_input and default.describe().reads_last_input


def test_bad_positions_are_refused(mixed_images):
    with pytest.raises(UsageError, match=r"-1 \(the last token\), -2, \.\.\.; got 0"):
        DiorSettings(model="tiny", num_token=0)
    with pytest.raises(UsageError, match="applies to --source last_input only"):
        EmbedderOptions(num_token=-2, source="first_output")
    far = DiorEmbedder(DiorSettings(model="tiny", device="cpu", num_token=-100_000))
    with pytest.raises(UsageError, match="-100000 is before the start of a prompt of"):
        far.embed(mixed_images[:1], ["object color", None])


def test_recorded_in_the_manifest_and_read_back_by_a_query(tmp_path, capsys):
    datasets = synthetic_datasets(tmp_path / "datasets", 10)
    common = ["--dataset", "synthetic", "--datasets-dir", datasets, "--indexes", tmp_path / "ix"]
    index = run_cli(capsys, "index", *common, "-c", "color", "--device", "cpu", "--num-token", "-2")
    assert index.code == 0, index.err
    folder = tmp_path / "ix" / "synthetic" / "tiny+num_token--2" / "color"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["embedder"]["num_token"] == -2
    # A query embeds its image as the index did: an indexed image finds itself, identical.
    image = next((datasets / "synthetic").glob("**/*.png"))
    query = run_cli(capsys, "query", image, "--indexes", tmp_path / "ix", "--dataset",
                    "synthetic", "-c", "color", "--device", "cpu", "--json")  # fmt: skip
    assert query.code == 0, query.err
    top = json.loads(query.out)[0]
    assert top["path"].endswith(image.name) and top["score"] > 0.99999
    bad = run_cli(capsys, "index", *common, "-c", "color", "--num_token", "1")
    assert "got 1" in error_line(bad, 2)
    # Words score by the last token's output head: not by another token's vectors.
    words = run_cli(capsys, "query", "--text", "red", "-c", "color", "--indexes", tmp_path / "ix",
                    "--dataset", "synthetic")  # fmt: skip
    assert "holds prompt token -2's vectors" in error_line(words, 5)
