"""What a user reads on an 80-column terminal (or in piped output): every verb's `--help` and a
query's result table, whole: no option, help text or path cut off; conventional metavars; text
printed literally; `--version`."""

import re
from pathlib import Path

import pytest
import typer
from cli_runs import TINY, image_folder, run_cli

from dior_search.cli import app, main
from dior_search.cli.app import console
from dior_search.version import __version__

WIDTH = 80
# typer's own type display (`<str>`, `<bool>`, `<list[str]>`), which the help must not show.
TYPE_METAVAR = re.compile(r"<[a-z_\[\], ]+>")


def squeezed(text: str) -> str:
    """`text` without whitespace: what is left of a wrapped paragraph however it was wrapped."""
    return "".join(text.split())


def verbs() -> dict[str, typer.core.TyperCommand]:
    group = typer.main.get_command(app)
    return {name: group.get_command(None, name) for name in group.commands}


@pytest.fixture
def narrow(monkeypatch):
    """An 80-column terminal for the help (click reads COLUMNS) and the tables (rich)."""
    monkeypatch.setenv("COLUMNS", str(WIDTH))
    monkeypatch.setattr(console, "width", WIDTH)


def help_text(capsys, *verb: str) -> str:
    run = run_cli(capsys, *verb, "--help")
    assert run.code == 0, run.err
    return run.out


@pytest.mark.parametrize("verb", sorted(verbs()))
def test_every_verbs_help_fits_80_columns_whole(verb, narrow, capsys):
    out = help_text(capsys, verb)
    assert max(len(line) for line in out.splitlines()) <= WIDTH, out
    whole = squeezed(out)
    command = verbs()[verb]
    assert squeezed(command.help.split("\n\n")[0]) in whole
    for param in command.params:
        for flag in [*param.opts, *param.secondary_opts]:
            if flag.startswith("-"):
                assert re.search(rf"(^|[\s,/]){re.escape(flag)}(\s|,|$)", out, re.M), flag
        if param.help:
            assert squeezed(param.help) in whole, (flag, param.help)
        if getattr(param, "is_flag", False):
            assert not re.search(rf"{re.escape(param.opts[-1])} [A-Z]", out), param.opts
    assert not TYPE_METAVAR.search(out), TYPE_METAVAR.search(out)
    assert "…" not in out


def test_top_level_help_lists_each_verb_whole(narrow, capsys):
    out = help_text(capsys)
    assert max(len(line) for line in out.splitlines()) <= WIDTH
    for name, command in verbs().items():
        first = command.help.split("\n\n")[0]
        assert squeezed(f"{name}{first}") in squeezed(out), name
    assert "--version" in out


def test_help_prints_brackets_and_names_values(narrow, capsys):
    out = help_text(capsys, "index")
    assert "pip install 'dior-search[milvus]'" in " ".join(out.split())
    assert re.search(r"^\s+--indexes DIR\s", out, re.M)
    assert re.search(r"^\s+-c, --condition TEXT\s", out, re.M)
    assert re.search(r"^\s+--shard-size N\s", out, re.M)
    assert re.search(r"^\s+--keep-missing\s+Keep", out, re.M)
    assert "[env var: DIOR_SEARCH_INDEXES; default: indexes]" in " ".join(out.split())
    query = help_text(capsys, "query")
    assert "Usage: dior-search query [OPTIONS] [IMAGE]" in query


def test_version(capsys):
    run = run_cli(capsys, "--version")
    assert (run.code, run.out, run.err) == (0, f"dior-search {__version__}\n", "")


# Long enough that an 80-column table cannot show them on one line.
LONG_NAMES = [
    "holidays/2024-summer/the-beach-near-the-lighthouse/IMG_20240712_183012_0001.png",
    "holidays/2024-summer/the-beach-near-the-lighthouse/IMG_20240712_183012_0002.png",
    "holidays/2024-summer/the-beach-near-the-lighthouse/IMG_20240712_183012_0003.png",
]


@pytest.fixture(scope="module")
def long_named_folder(tmp_path_factory) -> Path:
    """An unlabelled folder of long-named images, indexed by the tiny model under two
    conditions."""
    root = tmp_path_factory.mktemp("long")
    images = image_folder(root / "photos", LONG_NAMES)
    indexes = root / "indexes"
    for condition in ("color", "pattern"):
        args = ["index", "--images", images, "--indexes", indexes, "-c", condition, *TINY]
        assert main([str(a) for a in args]) == 0
    return root


@pytest.mark.slow
def test_query_table_folds_paths_at_80_columns(long_named_folder, narrow, capsys):
    root = long_named_folder
    args = ["query", "--images", root / "photos", "--indexes", root / "indexes", "--id", "0"]
    run = run_cli(capsys, *args, "-c", "color", "-k", "3", "--device", "cpu")
    assert run.code == 0, run.err
    assert max(len(line) for line in run.out.splitlines()) <= WIDTH, run.out
    # The path column holds each path whole, folded over lines: its cells, read down, spell it.
    cells = [
        line.split("│")[3].strip()
        for line in run.out.splitlines()
        if line.startswith("│") and line.count("│") >= 4
    ]
    spelled = "".join(cells).replace("path", "", 1)
    for name in LONG_NAMES:
        assert name in spelled, run.out
    assert "…" not in run.out
    # An unlabelled folder: no labels column (it would be empty).
    assert "labels" not in run.out


@pytest.mark.slow
def test_index_without_condition_resyncs_the_indexed_ones(long_named_folder, capsys):
    root = long_named_folder
    args = ["index", "--images", root / "photos", "--indexes", root / "indexes", *TINY]
    run = run_cli(capsys, *args)
    assert run.code == 0, run.err
    assert "re-syncing the conditions already indexed: color, pattern" in run.err
    assert "color: 0 added, 0 changed, 0 moved, 0 removed, 3 unchanged" in run.out
    assert "pattern: 0 added, 0 changed, 0 moved, 0 removed, 3 unchanged" in run.out


def test_index_without_condition_and_no_index_says_so(tmp_path, capsys):
    images = image_folder(tmp_path / "photos", ["a.png"])
    run = run_cli(capsys, "index", "--images", images, "--indexes", tmp_path / "ix", *TINY)
    assert run.code == 2, run.err
    assert (
        f"error: --images needs at least one --condition (any free text): there is no index "
        f"of {images} with model tiny in {tmp_path / 'ix'} to re-sync" in run.err
    )


def test_no_indexes_names_the_absolute_folder_and_the_option(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = run_cli(capsys, "query", "--id", "0", "-c", "color", "--dataset", "synthetic")
    assert run.code == 5
    assert run.err.strip() == (
        f"error: no indexes folder {tmp_path / 'indexes'}: run `dior-search index` first, or "
        "give the folder that holds them: --indexes DIR or $DIOR_SEARCH_INDEXES"
    )


def test_indexes_folder_from_the_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DIOR_SEARCH_INDEXES", str(tmp_path / "elsewhere"))
    run = run_cli(capsys, "facets", "-c", "color", "--dataset", "synthetic")
    assert run.code == 5
    assert f"no indexes folder {tmp_path / 'elsewhere'}:" in run.err
