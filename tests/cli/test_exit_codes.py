"""One table of exit codes (errors.EXIT_CODES, each error class's own `exit_code` and
`http_status`), README's "Exit codes" section checked against it, and every verb driven into
each error class it can reach: the documented code and one `error:` line, nothing more."""

import gc
import importlib
import pkgutil
import re
from pathlib import Path

import pytest
from cli_runs import TINY, error_line, image_folder, run_cli

import dior_search
from dior_search import errors, interrupts
from dior_search.errors import EXIT_CODES, DiorError, error_classes

README = Path(__file__).parents[2] / "README.md"
CLI_ERRORS_DOC = Path(__file__).parents[2] / "docs" / "cli-errors.md"
# The statuses docs/serving.md documents (403 and 431 come from the access guard, not a class).
HTTP_STATUSES = {400, 404, 409, 413, 415, 500, 504}


def readme_exit_codes() -> dict[int, str]:
    """README's "## Exit codes" table: code -> meaning."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Exit codes\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| (.+) \|$", section, flags=re.MULTILINE)
    return {int(code): meaning for code, meaning in rows}


def all_error_classes() -> list[type[DiorError]]:
    for module in pkgutil.walk_packages(dior_search.__path__, "dior_search."):
        if ".tiny_model" not in module.name:
            importlib.import_module(module.name)
    return error_classes()


def test_readme_exit_codes_are_the_codes_table():
    documented = readme_exit_codes()
    assert sorted(documented) == sorted(EXIT_CODES)
    for code, meaning in EXIT_CODES.items():
        assert documented[code].startswith(meaning), (code, documented[code])


def test_every_error_class_carries_a_documented_exit_code_and_an_http_status():
    classes = all_error_classes()
    assert len(classes) > 10  # the library's own, not only errors.py's
    for kind in classes:
        assert kind.exit_code in EXIT_CODES, kind
        assert kind.http_status in HTTP_STATUSES, kind
    # The base classes are the table: one per documented failure code.
    bases = [errors.UsageError, errors.InputError, errors.ModelError, errors.IndexStoreError]
    bases += [errors.RemovalRefused, errors.OutputError]
    assert [kind.exit_code for kind in bases] == [2, 3, 4, 5, 6, 7]
    assert interrupts.INTERRUPTED_EXIT == 130 and interrupts.TERMINATED_EXIT == 143


def test_http_status_does_not_depend_on_the_class_tree():
    """The server answers each class's own status (a deadline is a 504 whatever it subclasses;
    a missing index a 404 though it is an index error)."""
    from dior_search.data.decode_budget import DecodeQueueTimeout
    from dior_search.data.images import ImageTooLarge
    from dior_search.search.searcher import DeadlineExceeded, NoAnswers, NotIndexed
    from dior_search.serve.service import NotFound, TooLarge

    statuses = {
        DeadlineExceeded: 504,
        DecodeQueueTimeout: 504,
        NotIndexed: 404,
        NoAnswers: 404,
        NotFound: 404,
        TooLarge: 413,
        ImageTooLarge: 413,
        errors.UsageError: 400,
        errors.InputError: 400,
        errors.IndexStoreError: 500,
    }
    for kind, status in statuses.items():
        assert kind.http_status == status, kind
    assert not issubclass(DeadlineExceeded, errors.UsageError)


def documented_error_types() -> dict[str, tuple[int, int]]:
    """docs/cli-errors.md's table of every error type: name -> (exit code, HTTP status)."""
    text = CLI_ERRORS_DOC.read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(\w+)` \| (\d+) \| (\d+) \| .+ \|$", text, flags=re.MULTILINE)
    table = {name: (int(code), int(status)) for name, code, status in rows}
    assert len(table) == len(rows), "an error type documented twice"
    return table


def test_every_error_type_has_the_exit_code_and_http_status_its_row_documents():
    """A new error class needs its documented row: it cannot inherit a status unnoticed."""
    classes = all_error_classes()
    names = [kind.__name__ for kind in classes]
    assert len(set(names)) == len(names), "two error classes of one name"
    in_code = {kind.__name__: (kind.exit_code, kind.http_status) for kind in classes}
    documented = documented_error_types()
    assert sorted(in_code) == sorted(documented)
    for name, numbers in in_code.items():
        assert numbers == documented[name], name


def test_a_subclass_without_its_row_is_caught():
    """The check above sees a subclass that only inherits its numbers."""

    class QuietlyInherited(errors.UsageError):
        pass

    try:
        in_code = {kind.__name__ for kind in all_error_classes()}
        assert "QuietlyInherited" in in_code
        assert "QuietlyInherited" not in documented_error_types()
    finally:
        del QuietlyInherited
        gc.collect()  # gone from UsageError.__subclasses__() for the tests that follow
    assert "QuietlyInherited" not in {kind.__name__ for kind in error_classes()}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder of 6 images indexed by the tiny model under color and background (with
    answers), and the options that name it."""
    root = tmp_path_factory.mktemp("codes")
    folder = image_folder(root / "col", [f"{n:05d}.png" for n in range(6)])
    indexes = root / "indexes"
    from dior_search.cli import main

    assert main(["index", "--images", str(folder), "--indexes", str(indexes), *TINY,
                 "-c", "color", "-c", "background"]) == 0  # fmt: skip
    return root, ("--images", str(folder), "--indexes", str(indexes))


# (verb and arguments, code, a fragment of the message); {col} is the collection's options,
# {root} the workspace's folder.
CASES = [
    # index
    (["index", "{col}", *TINY, "-c", "color", "--layer", "-2", "--answers"], 2, "cannot have"),
    (["index", "--images", "", "-c", "color"], 2, "empty path"),
    (["index", "--dataset", "synthetic", "-c", "nosuch", "--datasets-dir", "{root}/ds"], 2,
     "'nosuch' is not a condition of the synthetic dataset"),
    (["index", "{col}", *TINY, "-c", "color", "--device", "banana"], 2, "unknown device"),
    (["index", "{col}", *TINY, "-c", "color "], 2, "begins or ends with a space"),
    (["index", "--images", "{root}/nope", *TINY, "-c", "color"], 3, "nope"),
    (["index", "{col}", "--model", "{root}/no-model", "-c", "color"], 4, "no-model"),
    (["index", "{col}", *TINY, "-c", "color", "--store", "milvus://localhost:99999"], 2,
     "Port out of range"),
    # query
    (["query", "{col}", "-c", "color", "--id", "0", "--store", "milvus://localhost:99999"], 2,
     "--store milvus://localhost:99999"),
    (["query", "{col}", "-c", "", "--id", "0"], 2, "cannot be empty"),
    (["query", "", "{col}", "-c", "color"], 2, "empty path"),
    (["query", "{col}", "-c", "color ", "--id", "0"], 2, "begins or ends with a space"),
    (["query", "{col}", "-c", "color", "--id", "0", "--where", "color=two words"], 2, "one word"),
    (["query", "{col}", "--text", "small", "-c", "color", "--weight", "1"], 2, "--weight"),
    (["query", "{col}", "-c", "color", "--id", "0", "--device", "banana"], 2, "'banana'"),
    (["query", "{col}", "-c", "color", "--id", "0", "--dtype", "float8"], 2, "'float8'"),
    (["query", "{col}", "-c", "color", "--id", "0", "--nprobe", "2097152"], 2, "not 2097152"),
    (["query", "{col}", "-c", "color", "{root}/missing.png"], 3, "missing.png"),
    (["query", "{col}", "-c", "nosuch", "--id", "0"], 5, "no index for condition 'nosuch'"),
    (["query", "--index", "{index}", "-c", "pattern", "--id", "0"], 5, "not 'pattern'"),
    (["query", "{col}", "-c", "color", "--id", "0", "--sheet", "/nonexistent/x.png"], 7,
     "/nonexistent"),
    # facets
    (["facets", "{col}", "-c", ""], 2, "cannot be empty"),
    (["facets", "{col}", "-c", "color", "--where", "color=two words"], 2, "one word"),
    (["facets", "{col}", "-c", "nosuch"], 5, "no index for condition 'nosuch'"),
    (["facets", "{col}", "-c", "color", "--store", "milvus-lite:{root}/none.db"], 5, "none.db"),
    # export
    (["export", "", "{col}"], 2, "empty path"),
    (["export", "{root}/out", "{col}", "-c", ""], 2, "cannot be empty"),
    (["export", "{root}/out", "{col}", "-c", "nosuch"], 5, "nosuch"),
    (["export", "/etc/passwd", "{col}"], 7, "/etc/passwd is not a folder"),
    (["export", "/dev/null", "{col}"], 7, "/dev/null is not a folder"),
    (["export", "/proc/nope", "{col}"], 7, "/proc/nope"),
    # compact
    (["compact", "{col}", "-c", ""], 2, "cannot be empty"),
    (["compact", "{col}", "--threshold", "2"], 2, "--threshold"),
    (["compact", "{col}", "-c", "nosuch"], 5, "no index for condition 'nosuch'"),
    # bench
    (["bench", "--dataset", "synthetic", "--datasets-dir", "{root}/ds", *TINY, "--layer", "0",
      "--method", "dior"], 2, "layer 0"),
    (["bench", "--dataset", "synthetic", "--datasets-dir", "{root}/ds", *TINY, "--layer", "0"],
     2, "layer 0"),
    (["bench", "--dataset", "synthetic", "--datasets-dir", "{root}/ds", "--model",
      "{root}/no-model", "--method", "dior"], 4, "no-model"),
    (["bench", "--dataset", "synthetic", "--json", "/nonexistent/x.json"], 7, "/nonexistent"),
    # demo
    (["demo", "--layer", "0", "--data-dir", "{root}/demo"], 2, "layer 0"),
    (["demo", "--device", "banana"], 2, "unknown device"),
    (["demo", "--model", "{root}/no-model", "--data-dir", "{root}/demo"], 4, "no-model"),
    # serve
    (["serve", "--port", "70000"], 2, "--port"),
    (["serve", "--images", ""], 2, "empty path"),
    (["serve", "--device", "banana", "--indexes", "{root}/indexes"], 2, "unknown device"),
    (["serve", "--indexes", "{root}/empty"], 5, "empty"),
    # no verb of that name
    (["nosuch"], 2, "nosuch"),
]  # fmt: skip


def expand(argument: str, root: Path, collection: tuple[str, ...]) -> list[str]:
    if argument == "{col}":
        return list(collection)
    index = root / "indexes"
    found = next(index.glob("col-*/tiny/color"), index)
    return [argument.replace("{root}", str(root)).replace("{index}", str(found))]


@pytest.mark.parametrize(("args", "code", "fragment"), CASES, ids=lambda v: str(v)[:60])
def test_every_verb_into_each_class_it_reaches(workspace, capsys, args, code, fragment):
    root, collection = workspace
    argv = [part for argument in args for part in expand(argument, root, collection)]
    line = error_line(run_cli(capsys, *argv), code)
    assert fragment in line, line
    assert line != "error:" and line.strip() != "error:"


def test_a_refused_index_run_writes_nothing(workspace, capsys):
    root, collection = workspace
    indexes = root / "refused"
    folder = collection[1]
    run = run_cli(capsys, "index", "--images", folder, "--indexes", indexes, *TINY,
                  "-c", "color", "--layer", "-2", "--answers")  # fmt: skip
    error_line(run, 2)
    assert not indexes.exists()


def test_no_verb_prints_the_help_and_no_error_line(capsys):
    run = run_cli(capsys)
    assert run.code == 2
    assert "error" not in run.err + run.out
    assert "Usage" in run.out + run.err


def test_a_typed_backslash_is_quoted_as_typed(workspace, capsys):
    _, collection = workspace
    line = error_line(run_cli(capsys, "query", *collection, "--text", "\\t"), 2)
    assert "--text '\\t' asks about no condition" in line


def test_an_index_folder_that_is_not_the_condition_asked_is_refused(workspace, capsys):
    """`query --index DIR -c pattern` on the colour index searched colour before."""
    root, _ = workspace
    directory = next((root / "indexes").glob("col-*/tiny/color"))
    same = run_cli(capsys, "query", "--index", directory, "-c", "color", "--id", 0, "--json")
    assert same.code == 0, same.err
    error_line(run_cli(capsys, "query", "--index", directory, "-c", "pattern", "--id", 0), 5)


def test_a_named_datasets_condition_is_indexed_and_others_refused(tmp_path, capsys):
    """A typo under a dataset was embedded as free text before (400 images)."""
    args = ["index", "--dataset", "synthetic", "--datasets-dir", tmp_path / "ds",
            "--indexes", tmp_path / "ix", *TINY]  # fmt: skip
    error_line(run_cli(capsys, *args, "-c", "nosuch"), 2)
    assert not (tmp_path / "ix").exists()
