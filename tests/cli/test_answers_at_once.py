"""The command line answers at once (issue 26): usage errors are found before any model
library is imported, an unreachable hub is one line without retries, and the process ends as
soon as the run does (a Ctrl+C in its last moments is still exit 130, never ignored)."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_runs import image_folder

REPOSITORY = Path(__file__).parents[2]
MODEL_LIBRARIES = ("torch", "transformers", "faiss")
PROBE = (
    "import sys\n"
    "from dior_search.cli import main\n"
    "code = main(sys.argv[1:])\n"
    f"print('LOADED', *[m for m in {MODEL_LIBRARIES!r} if m in sys.modules], file=sys.stderr)\n"
    "sys.exit(code)\n"
)
USAGE_ERRORS = [
    ["query"],
    ["query", "--images", "x", "-c", "a", "--id", "0", "--device", "banana"],
    ["query", "--images", "x", "-c", "a", "--id", "0", "--where", "a=two words"],
    ["query", "--images", "x", "-c", "a", "--id", "0", "--nprobe", "0"],
    ["index", "--images", "x", "-c", "a", "--batch-size", "0"],
    ["index", "--dataset", "synthetic", "-c", "nosuch"],
    ["index", "--images", "x", "-c", "a", "--store", "milvus://h:99999"],
    ["facets", "--images", "x", "-c", ""],
    ["export", "out", "--images", "x", "-c", ""],
    ["compact", "--threshold", "2"],
    ["bench", "--distance", "nosuch"],
    ["demo", "--batch-size", "0"],
    ["serve", "--port", "70000"],
    ["query", "--help"],
]


def probe(args, tmp_path, **env):
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY), **env}
    return subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize("args", USAGE_ERRORS, ids=" ".join)
def test_usage_errors_load_no_model_library(args, tmp_path):
    done = probe(args, tmp_path)
    lines = done.stderr.splitlines()
    assert lines[-1] == "LOADED", done.stderr  # none of torch, transformers, faiss
    if args[-1] != "--help":
        assert done.returncode == 2, done.stderr
        assert len(lines) == 2 and lines[0].startswith("error: "), done.stderr


def test_an_unreachable_hub_is_one_line_without_retries(tmp_path):
    """Without HF_HUB_OFFLINE, the default model (not cached) stalled ~30 s behind retry
    warnings; now the hub is tried once and the run is one line."""
    environment = {key: value for key, value in os.environ.items() if key != "HF_HUB_OFFLINE"}
    environment.update(
        PYTHONPATH=str(REPOSITORY), HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="http://127.0.0.1:1"
    )
    folder = image_folder(tmp_path / "photos", ["a.png"])
    done = subprocess.run(
        [sys.executable, "-m", "dior_search", "index", "--images", str(folder), "-c", "color",
         "--indexes", str(tmp_path / "ix")],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 4, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr  # no "Retrying in ...s" warnings
    assert "Retrying" not in done.stderr
    assert "not in the Hugging Face cache" in done.stderr
    assert "cached files.;" not in done.stderr and "it is the default model" in done.stderr
    assert not (tmp_path / "ix").exists()


def test_the_hub_probe_says_unreachable_for_a_closed_port():
    from dior_search.cli.hub import reachable

    assert not reachable("http://127.0.0.1:1", timeout=2)


def ending(monkeypatch):
    """app.run with its command done (exit 0), recording how the process would end: the
    exit handlers and the signal settings of this (pytest's) process are left alone."""
    app = importlib.import_module("dior_search.cli.app")
    ended: list[int] = []
    monkeypatch.setattr(app, "main", lambda: 0)
    monkeypatch.setattr(app.os, "_exit", ended.append)
    monkeypatch.setattr(app.atexit, "_run_exitfuncs", lambda: None)
    monkeypatch.setattr(app.interrupts, "install", lambda: None)
    monkeypatch.setattr(app.interrupts, "ignore", lambda: None)
    monkeypatch.setattr(app.threading, "active_count", lambda: 1)  # pytest's threads aside
    return app, ended


def test_an_interrupt_as_the_run_ends_is_exit_130(monkeypatch, capsys):
    """A Ctrl+C after the command's work, while the process ends, was ignored (exit 0 after
    seconds of Milvus Lite's teardown); now the process ends at once, and an interrupt before
    that is 130 with its line."""
    app, ended = ending(monkeypatch)
    interrupts = [KeyboardInterrupt()]

    def flush() -> None:
        if interrupts:
            raise interrupts.pop()

    monkeypatch.setattr(app, "flush_outputs", flush)
    app.run()
    assert ended == [130]
    assert capsys.readouterr().err.strip() == "error: interrupted"


def test_the_process_ends_without_the_interpreters_teardown(monkeypatch):
    app, ended = ending(monkeypatch)
    app.run()
    assert ended == [0]
