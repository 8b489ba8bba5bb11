"""The bundled tiny model's wordings: what it was taught, and the one warning line the command
line prints for any other wording (issue 26: `-c color` gave silent nonsense)."""

import pytest

from dior_search.cli.options import choose_model
from dior_search.data.synthetic import CONDITIONS, LABEL_VALUES
from dior_search.models.settings import EmbedderOptions
from dior_search.models.tiny_wordings import TINY_WORDINGS, known_wordings, tiny_aspect


def test_the_taught_wordings_are_the_collections_own_phrases():
    """The committed weights were trained on data.synthetic.CONDITIONS' phrases alone."""
    assert set(TINY_WORDINGS) == set(CONDITIONS) == set(LABEL_VALUES)
    for aspect, wordings in TINY_WORDINGS.items():
        assert wordings == (CONDITIONS[aspect],)


@pytest.mark.parametrize(
    ("wording", "aspect"),
    [
        ("object color", "color"),
        ("background color", "background"),
        ("pattern", "pattern"),
        ("object size", "size"),
        ("color", None),
        ("texture", None),
        ("Pattern", None),  # the model reads the text as given: capitals are other tokens
        (" pattern", None),
    ],
)
def test_tiny_aspect(wording, aspect):
    assert tiny_aspect(wording) == aspect


def warnings_of(capsys, collections, wordings, model="tiny"):
    capsys.readouterr()
    choose_model(EmbedderOptions(model=model), collections, wordings)
    return capsys.readouterr().err.splitlines()


def test_an_untaught_wording_is_one_warning_line_that_lists_the_taught_ones(capsys):
    lines = warnings_of(capsys, ["synthetic"], ["color", "pattern", "backdrop colour"])
    assert len(lines) == 1
    assert lines[0].startswith(
        "warning: the tiny model was not taught the wording 'color', 'backdrop colour', only "
        "these: color: object color; background: background color; pattern: pattern; "
        "size: object size"
    )
    assert known_wordings() in lines[0]


def test_one_line_for_both_an_unknown_collection_and_an_untaught_wording(capsys):
    lines = warnings_of(capsys, ["photos-1234"], ["hue"])
    assert len(lines) == 1
    assert lines[0].startswith("warning: the tiny model knows only the generated synthetic images")
    assert "; it was not taught the wording 'hue'" in lines[0]


def test_taught_wordings_and_other_models_give_no_warning(capsys):
    assert warnings_of(capsys, ["synthetic"], ["object color", "pattern", "object size"]) == []
    assert warnings_of(capsys, ["synthetic"], ["hue"], model="some/real-model") == []
