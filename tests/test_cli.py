import pytest

from dior_search.cli import main

VERBS = ["demo"]


@pytest.mark.parametrize("verb", VERBS)
def test_help_for_each_verb(verb, capsys):
    assert main([verb, "--help"]) == 0
    assert "Usage" in capsys.readouterr().out


def test_top_level_help_lists_the_verbs(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for verb in VERBS:
        assert verb in out
    assert "--verbose" in out


def test_unknown_verb_is_one_line(capsys):
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: No such command 'frobnicate'."


def test_unknown_model_offline_is_one_line(capsys, tmp_path):
    code = main(
        [
            "demo",
            "--model",
            "no-such-org/no-such-model",
            "--data-dir",
            str(tmp_path),
            "--n-images",
            "4",
        ]
    )
    assert code == 4
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("error: cannot load model 'no-such-org/no-such-model'")
