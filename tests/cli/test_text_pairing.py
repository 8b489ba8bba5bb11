"""`query --text`: `CONDITION=WORD` (the HTTP API's form) names its condition; a bare WORD
pairs with the `-c` options in their order, one to one, where there is no query image. The
pairing reads the parsed options only (no re-reading of the command line), so how `--text` and
`-c` interleave does not matter."""

import json

import pytest
from cli_runs import TINY, error_line, image_folder, run_cli

from dior_search.cli.query_terms import text_words
from dior_search.errors import UsageError


def test_a_bare_word_pairs_with_its_condition_as_the_named_form_does():
    assert text_words(("red",), ("color",), False) == {"color": "red"}
    assert text_words(("color=red",), (), False) == {"color": "red"}
    assert text_words(("red", "stripes"), ("color", "pattern"), False) == {
        "color": "red",
        "pattern": "stripes",
    }
    assert text_words(("pattern=stripes", "color=red"), ("color",), True) == {
        "pattern": "stripes",
        "color": "red",
    }


@pytest.mark.parametrize(
    ("texts", "conditions", "by_example", "message"),
    [
        (("red",), (), False, "--text 'red' asks about no condition: write --text CONDITION=WORD"),
        (("red", "blue"), ("color",), False, "write --text CONDITION=WORD"),
        (("red",), ("color", "pattern"), False, "write --text CONDITION=WORD"),
        (("red", "pattern=stripes"), ("color",), False, "write --text CONDITION=WORD"),
        (("red",), ("color",), True, "--text 'red' asks about no condition"),
        (("color=red", "color=blue"), (), False, "two --text words under 'color'"),
        (("color=",), (), False, "--text 'color=' names no value after '='"),
    ],
)
def test_a_bare_word_the_conditions_do_not_pair_names_the_form(
    texts, conditions, by_example, message
):
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        text_words(texts, conditions, by_example)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """Eight images indexed by the tiny model under color and pattern, with answers."""
    root = tmp_path_factory.mktemp("pairing")
    folder = image_folder(root / "col", [f"{n:05d}.png" for n in range(8)])
    options = ("--images", str(folder), "--indexes", str(root / "indexes"))
    from dior_search.cli import main

    assert main(["index", *options, *TINY, "-c", "color", "-c", "pattern"]) == 0
    return options


def test_both_forms_and_any_option_order_give_one_answer(indexed, capsys):
    forms = [
        ["--text", "color=red", "--text", "pattern=stripes"],
        ["--text", "pattern=stripes", "--text", "color=red"],
        ["-c", "color", "-c", "pattern", "--text", "red", "--text", "stripes"],
        ["--text", "red", "-c", "color", "--text", "stripes", "-c", "pattern"],
        ["--text", "red", "--text", "stripes", "-c", "color", "-c", "pattern"],
    ]
    answers = []
    for form in forms:
        run = run_cli(capsys, "query", *indexed, *form, "--json", "-k", "8")
        assert run.code == 0, run.err
        answers.append(json.loads(run.out))
    assert answers[0] and all(answer == answers[0] for answer in answers)
    # A bare word pairs with the -c at its own place: the other order asks another question.
    swapped = run_cli(capsys, "query", *indexed, "-c", "pattern", "-c", "color",
                      "--text", "red", "--text", "stripes", "--json", "-k", "8")  # fmt: skip
    named = run_cli(capsys, "query", *indexed, "--text", "pattern=red",
                    "--text", "color=stripes", "--json", "-k", "8")  # fmt: skip
    assert json.loads(swapped.out) == json.loads(named.out)


def test_a_bare_word_with_a_query_image_is_one_line_naming_the_form(indexed, capsys):
    run = run_cli(capsys, "query", *indexed, "--id", "0", "--text", "red", "-c", "color")
    assert error_line(run, 2) == (
        "error: --text 'red' asks about no condition: write --text CONDITION=WORD"
    )
