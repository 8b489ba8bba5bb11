"""The command line as a user meets it: help for every verb, one-line errors, exit codes."""

import pytest

from dior_search.cli import main

# Each verb and options its help must show.
VERBS = {
    "index": ["--condition", "--images", "--index-type", "--model", "--positions"],
    "query": ["--id", "--condition", "--weight", "--json", "--sheet", "--nprobe"],
    "serve": ["--host", "--port", "--max-upload-mb", "--timeout"],
    "bench": ["--method", "--clip-model", "--text-encoder", "--json", "--model"],
    "demo": ["--n-images", "--data-dir", "--model", "--batch-size"],
}


@pytest.mark.parametrize("verb", VERBS)
def test_help_for_each_verb(verb, capsys):
    assert main([verb, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"Usage: dior-search {verb}" in out
    for option in VERBS[verb]:
        assert option in out, option


def test_top_level_help_lists_the_verbs(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for verb in VERBS:
        assert verb in out
    assert "--verbose" in out


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    return err


def test_unknown_verb_is_one_line(capsys):
    assert main(["frobnicate"]) == 2
    assert one_line_error(capsys) == "error: No such command 'frobnicate'."


def test_unknown_model_offline_is_one_line(capsys, tmp_path):
    code = main(
        [
            "demo",
            "--model",
            "no-such-org/no-such-model",
            "--data-dir",
            str(tmp_path),
            "--n-images",
            "8",
        ]
    )
    assert code == 4  # README: model error
    assert one_line_error(capsys).startswith("error: cannot load model 'no-such-org/no-such-model'")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["index", "--dataset", "nosuch"], "unknown dataset 'nosuch'; valid: synthetic"),
        (["index", "--images", ".", "--dataset", "synthetic"], "exactly one of --dataset"),
        (["index", "--dataset", "synthetic", "--shard-size", "0"], "--shard-size"),
        (["index", "--dataset", "synthetic", "--template", "odd"], "unknown prompt template"),
        (["index", "--dataset", "synthetic", "--positions", "odd"], "unknown position scheme"),
        (["index", "--dataset", "synthetic", "--part", "1"], "--part and --parts together"),
        (["query", "--id", "1", "-c", "color"], "--dataset NAME, --images DIR or --index"),
        (["query", "-c", "color", "--dataset", "synthetic"], "IMAGE or --id"),
        (["bench", "--method", "nosuch"], "unknown method 'nosuch'"),
        (["index", "--no-such-option"], "No such option"),
    ],
)
def test_usage_errors_exit_2(args, fragment, capsys):
    assert main(args) == 2  # README: usage error
    assert fragment in one_line_error(capsys)


def test_input_errors_exit_3(tmp_path, capsys):
    assert main(["index", "--images", str(tmp_path / "nowhere"), "-c", "x"]) == 3
    assert one_line_error(capsys) == f"error: image folder not found: {tmp_path / 'nowhere'}"
    assert main(["index", "--images", str(tmp_path), "-c", "x"]) == 3
    assert one_line_error(capsys) == f"error: no images in {tmp_path}"


def test_index_errors_exit_5(tmp_path, capsys):
    assert main(["query", "--id", "0", "--index", str(tmp_path)]) == 5
    assert one_line_error(capsys) == f"error: no index in {tmp_path} (no manifest.json)"
    args = ["query", "--id", "0", "-c", "color", "--dataset", "synthetic"]
    assert main([*args, "--indexes", str(tmp_path / "none")]) == 5
    assert "no indexes folder" in one_line_error(capsys)
    assert main([*args, "--indexes", str(tmp_path)]) == 5
    assert "no DIOR indexes of collection 'synthetic'" in one_line_error(capsys)


def test_interrupted_exits_130(tmp_path, capsys, monkeypatch):
    from dior_search.data import collections

    def interrupted(folder):
        raise KeyboardInterrupt

    monkeypatch.setattr(collections, "open_folder", interrupted)
    assert main(["index", "--images", str(tmp_path), "-c", "x"]) == 130
    assert one_line_error(capsys) == "error: interrupted"
