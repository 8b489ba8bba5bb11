"""The bundled tiny model's wordings: what it was taught, what the command line warns about,
and that natural wordings retrieve by their aspect as well as the training phrase always did."""

import random

import pytest

from dior_search.cli.options import choose_model
from dior_search.data.synthetic import CONDITIONS, LABEL_VALUES
from dior_search.models.settings import EmbedderOptions
from dior_search.models.tiny_training import OWN_WORDING_SHARE, pick_wording
from dior_search.models.tiny_wordings import TINY_WORDINGS, capitalized, tiny_aspect


def test_the_collections_own_phrase_is_taught_first():
    assert set(TINY_WORDINGS) == set(CONDITIONS) == set(LABEL_VALUES)
    for aspect, wordings in TINY_WORDINGS.items():
        assert wordings[0] == CONDITIONS[aspect]
        assert len(set(wordings)) == len(wordings)
    every = [w for wordings in TINY_WORDINGS.values() for w in wordings]
    assert len(set(every)) == len(every)  # no wording names two aspects


@pytest.mark.parametrize(
    ("wording", "aspect"),
    [
        ("color", "color"),
        ("colour", "color"),
        ("Colour", "color"),
        ("object color", "color"),
        ("main color", "color"),
        ("background", "background"),
        ("backdrop", "background"),
        ("texture", "pattern"),
        ("print", "pattern"),
        ("size", "size"),
        ("object size", "size"),
        ("hue", None),
        ("COLOR", None),  # the model reads the text as given: capitals are other tokens
        (" color", None),
        ("shape", None),
    ],
)
def test_tiny_aspect(wording, aspect):
    assert tiny_aspect(wording) == aspect


def test_training_rows_take_every_wording_and_mostly_the_own_phrase():
    rng = random.Random(0)
    for aspect, wordings in TINY_WORDINGS.items():
        picked = [pick_wording(rng, aspect) for _ in range(4000)]
        assert {w for w in picked if w[0].islower()} == set(wordings)
        assert {tiny_aspect(w) for w in picked} == {aspect}
        own = sum(w in (wordings[0], capitalized(wordings[0])) for w in picked) / len(picked)
        assert abs(own - OWN_WORDING_SHARE) < 0.03


def warnings_of(capsys, collections, wordings, model="tiny"):
    capsys.readouterr()
    choose_model(EmbedderOptions(model=model), collections, wordings)
    return capsys.readouterr().err.splitlines()


def test_an_untaught_wording_is_one_warning_line_that_lists_the_taught_ones(capsys):
    lines = warnings_of(capsys, ["synthetic"], ["hue", "colour", "backdrop colour"])
    assert len(lines) == 1
    assert lines[0].startswith(
        "warning: the tiny model was not taught the wording 'hue', 'backdrop colour', only "
        "these: color: object color, color, colour,"
    )
    for wordings in TINY_WORDINGS.values():
        assert ", ".join(wordings) in lines[0]


def test_one_line_for_both_an_unknown_collection_and_an_untaught_wording(capsys):
    lines = warnings_of(capsys, ["photos-1234"], ["hue"])
    assert len(lines) == 1
    assert lines[0].startswith("warning: the tiny model knows only the generated synthetic images")
    assert "; it was not taught the wording 'hue'" in lines[0]


def test_taught_wordings_and_other_models_give_no_warning(capsys):
    assert warnings_of(capsys, ["synthetic"], ["color", "Texture", "object size"]) == []
    assert warnings_of(capsys, ["synthetic"], ["hue"], model="some/real-model") == []
