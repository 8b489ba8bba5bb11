"""Ctrl+C and SIGTERM at any moment, and the options that took odd values: one line each,
the documented exit code, and an index that is still whole."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_runs import TINY, TINY_WARNING, error_line, image_folder, run_cli

from dior_search.store.reader import IndexReader


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    names = [f"{n:03d}.png" for n in range(16)]
    return image_folder(tmp_path_factory.mktemp("signals") / "photos", names)


def command(folder, indexes):
    return [
        sys.executable, "-m", "dior_search", "index", "--images", str(folder), "-c", "color",
        "--indexes", str(indexes), *TINY, "--shard-size", "8", "--batch-size", "1",
    ]  # fmt: skip


def handles_sigterm(pid: int) -> bool:
    """Whether process `pid` has its own SIGTERM handler: dior-search's first act."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(
        next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16
    )
    return bool(caught & (1 << (signal.SIGTERM - 1)))


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
@pytest.mark.parametrize(
    ("sent", "code", "message"),
    [(signal.SIGINT, 130, "error: interrupted"), (signal.SIGTERM, 143, "error: terminated")],
)
def test_a_signal_at_any_moment_is_one_line(folder, tmp_path, sent, code, message):
    """From dior-search's first line of code (before the CLI's modules are imported, before
    typer runs, while the model loads, while embedding); the interpreter's own start, before
    any of the package runs, is Python's."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for delay in (0.0, 0.3, 2.0):
        indexes = tmp_path / f"after-{delay}"
        process = subprocess.Popen(
            command(folder, indexes), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 30
        while not handles_sigterm(process.pid):
            assert time.monotonic() < deadline
            time.sleep(0.001)
        time.sleep(delay)
        process.send_signal(sent)
        out, err = process.communicate(timeout=120)
        assert process.returncode == code, (delay, err.decode())
        lines = [line for line in err.decode().splitlines() if not line.startswith(TINY_WARNING)]
        assert lines == [message], (delay, err.decode())
        assert b"Traceback" not in out
        if delay < 2.0:
            continue
        # What was written (by a run stopped while the model loads or embeds) is an index
        # the next run completes.
        finish = subprocess.run(command(folder, indexes), env=env, capture_output=True)
        assert finish.returncode == 0, finish.stderr.decode()
        (directory,) = indexes.glob("*/tiny/color")
        reader = IndexReader(directory)
        assert sorted(reader.paths()) == sorted(p.name for p in folder.iterdir())


def test_interrupted_in_process_exits_130_in_one_line(folder, tmp_path, capsys, monkeypatch):
    from dior_search.indexing import sync as index_run

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(index_run, "embed_items", interrupt)
    run = run_cli(capsys, "index", "--images", folder, "-c", "color", "--indexes", tmp_path, *TINY)
    assert error_line(run, 130) == "error: interrupted"


SWALLOWED = """
import os, signal, sys
import dior_search.cli
from dior_search import __main__ as entry, interrupts
interrupts.install()
try:
    os.kill(os.getpid(), signal.{name})
    for _ in range(10**7):
        pass
except BaseException:  # a library's bare `except:`
    pass
sys.argv = ["dior-search", "--help"]
entry.run()
"""


@pytest.mark.parametrize(
    ("name", "code", "message"),
    [("SIGINT", 130, "error: interrupted"), ("SIGTERM", 143, "error: terminated")],
)
def test_an_interrupt_a_library_swallowed_still_ends_the_run(name, code, message):
    done = subprocess.run(
        [sys.executable, "-c", SWALLOWED.format(name=name)], capture_output=True, timeout=60
    )
    assert (done.returncode, done.stderr.decode().strip()) == (code, message)
    assert done.stdout == b""  # the command (--help) did not run


@pytest.mark.parametrize("value", ["0", "-1"])
def test_max_pixels_below_one_is_refused(folder, tmp_path, capsys, value):
    args = ["index", "--images", folder, "-c", "color", "--indexes", tmp_path, *TINY]
    run = run_cli(capsys, *args, "--max-pixels", value)
    assert error_line(run, 2) == f"error: --max-pixels must be at least 1 pixel, not {value}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch can use CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:3"])
def test_cuda_on_a_cpu_only_torch_is_one_line(folder, tmp_path, capsys, device):
    args = ["index", "--images", folder, "-c", "color", "--indexes", tmp_path, "--model", "tiny"]
    line = error_line(run_cli(capsys, *args, "--device", device), 2)
    assert line == (
        f"error: --device {device}: this torch cannot use CUDA (a CPU-only build, or no GPU "
        "visible); use --device cpu or auto"
    )
    assert "--device mps: dior-search runs on cpu or cuda" in error_line(
        run_cli(capsys, *args, "--device", "mps"), 2
    )


def test_shard_size_on_resume_is_kept_and_said(folder, tmp_path, capsys):
    args = ["index", "--images", folder, "-c", "color", "--indexes", tmp_path, *TINY]
    assert run_cli(capsys, *args, "--shard-size", "6").code == 0
    run = run_cli(capsys, *args, "--shard-size", "5")
    assert run.code == 0
    assert (
        "color: the index keeps its shard size of 6 vectors (--shard-size 5 applies to new indexes)"
    ) in run.out.splitlines()
    assert "shard size" not in run_cli(capsys, *args).out  # not asked: nothing to say
    (directory,) = tmp_path.glob("*/tiny/color")
    assert [s.rows for s in IndexReader(directory).manifest.shards] == [6, 6, 4]


def test_serve_options_out_of_range(tmp_path, capsys):
    for option, value in [
        ("--port", "-1"),
        ("--port", "70000"),
        ("--max-upload-mb", "nan"),
        ("--max-megapixels", "inf"),
        ("--timeout", "0"),
        ("--timeout", "-1"),
        ("--max-k", "0"),
    ]:
        run = run_cli(capsys, "serve", "--indexes", tmp_path, option, value)
        assert error_line(run, 2), (option, value)


def test_query_k_below_one(tmp_path, capsys):
    # Checked before the index is opened (there is none here).
    for k in ("0", str(10**30)):
        run = run_cli(capsys, "query", "--id", "0", "--index", tmp_path, "-k", k, "--json")
        assert error_line(run, 2) == "error: k must be between 1 and 1000000"
    run = run_cli(capsys, "query", "--id", "0", "--index", tmp_path, "-k", "5")
    assert error_line(run, 5).startswith("error: no index in")  # k is fine, the index is not
