"""The bundled tiny model's wordings: what it was taught, that it understands them, and the one
warning line the command line prints for any other wording (issue 26: `-c color` gave silent
nonsense, every hit `color=small`)."""

from pathlib import Path

import pytest

from dior_search.cli.options import choose_model
from dior_search.data.images import load_image
from dior_search.data.synthetic import CONDITIONS, LABEL_VALUES, write_dataset
from dior_search.evaluation.metrics import retrieval_metrics
from dior_search.models.settings import EmbedderOptions
from dior_search.models.tiny_wordings import TINY_WORDINGS, known_wordings, tiny_aspect


def test_each_aspect_is_taught_its_collection_phrase_first_and_natural_wordings():
    assert set(TINY_WORDINGS) == set(CONDITIONS) == set(LABEL_VALUES)
    for aspect, wordings in TINY_WORDINGS.items():
        assert wordings[0] == CONDITIONS[aspect]
        assert aspect in wordings or aspect == "pattern", aspect
    assert {"color", "colour", "texture", "size", "background"} <= {
        w for wordings in TINY_WORDINGS.values() for w in wordings
    }


@pytest.mark.parametrize(
    ("wording", "aspect"),
    [
        ("object color", "color"),
        ("color", "color"),
        ("colour", "color"),
        ("background", "background"),
        ("backdrop", "background"),
        ("texture", "pattern"),
        ("size", "size"),
        ("hue", None),
        ("Pattern", None),  # the model reads the text as given: capitals are other tokens
        (" pattern", None),
    ],
)
def test_tiny_aspect(wording, aspect):
    assert tiny_aspect(wording) == aspect


@pytest.mark.slow
def test_the_model_answers_and_ranks_by_the_label_under_every_taught_wording(tmp_path: Path):
    """What `-c color` (or any taught wording) gives on images with known labels: the model's
    one-word answer is the label, and each image's nearest neighbour shares it."""
    from dior_search.models.dior import DiorEmbedder
    from dior_search.models.settings import DiorSettings

    items = write_dataset(tmp_path, {"test": 40}, labels=False)
    images = [load_image(tmp_path / item.file_name) for item in items]
    rows = [(aspect, w) for aspect, wordings in TINY_WORDINGS.items() for w in wordings]
    embedder = DiorEmbedder(DiorSettings(model="tiny", device="cpu", batch_size=16))
    vectors, answers = embedder.embed_with_answers(images, [w for _, w in rows])
    for column, (aspect, wording) in enumerate(rows):
        labels = [item.label(aspect) for item in items]
        said = [row[column].word if row[column] else None for row in answers]
        accuracy = sum(a == b for a, b in zip(said, labels, strict=True)) / len(labels)
        recall = retrieval_metrics(vectors[:, column], labels, ks=(1,))["recall@1"]
        assert accuracy >= 0.9 and recall >= 0.9, (wording, accuracy, recall)


def warnings_of(capsys, collections, wordings, model="tiny"):
    capsys.readouterr()
    choose_model(EmbedderOptions(model=model), collections, wordings)
    return capsys.readouterr().err.splitlines()


def test_an_untaught_wording_is_one_warning_line_that_lists_the_taught_ones(capsys):
    lines = warnings_of(capsys, ["synthetic"], ["color", "texture", "hue", "background colour"])
    assert len(lines) == 1
    assert lines[0].startswith(
        "warning: the tiny model was not taught the wording 'hue', 'background colour', only "
        "these: color: object color, color, colour, object colour, main color; background: "
        "background color, background, backdrop; pattern: pattern, texture; "
        "size: object size, size"
    )
    assert known_wordings() in lines[0]


def test_one_line_for_both_an_unknown_collection_and_an_untaught_wording(capsys):
    lines = warnings_of(capsys, ["photos-1234"], ["hue"])
    assert len(lines) == 1
    assert lines[0].startswith("warning: the tiny model knows only the generated synthetic images")
    assert "; it was not taught the wording 'hue'" in lines[0]


def test_taught_wordings_and_other_models_give_no_warning(capsys):
    assert warnings_of(capsys, ["synthetic"], ["color", "texture", "object size", "backdrop"]) == []
    assert warnings_of(capsys, ["synthetic"], ["hue"], model="some/real-model") == []
