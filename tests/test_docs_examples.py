"""Every shell example in README.md and docs/ runs, in order, or says why it cannot.

A ```bash block whose first line is `# needs: gpu` or `# needs: network` is not run (a GPU, or
a download: pip, a model from the hub). Every other ```bash block of a page runs, in the
page's order, in one fresh temporary folder per page, so a page's examples must chain: each
works after the ones above it. A block whose first line is `# exits: N` must end with exit
code N (an example of an error); every other block must exit 0. Output is not compared: it
changes with the machine, and the commands' own tests check it.

What the folder holds before a page's first block, as a new user's would:
- README.md: nothing (a fresh folder); `.venv` is a link to the environment the tests run in,
  as `make demo` would have made it.
- docs pages: `photos/` (20 generated images, no label table) and `photo.jpg`, standing in for
  the reader's own, and `datasets/synthetic/` with a 24-image test split (the dataset as
  `--dataset synthetic` generates it on first use, smaller, so the pages run in minutes).

HOME is the page's folder (so `~/photos` is that folder's `photos/`), HF_HUB_OFFLINE=1, and
`dior-search` is the installed command, run from this checkout. `dior-search serve` starts the
server in the background on a free port (the examples' `--port` and the port in their URLs are
replaced by it), returns once it listens, and the server is stopped after the page's last block.

Shell examples in any other fence (```sh, ```shell, ```console, or an unlabelled fence that
starts with a command) are an error: they would escape this test.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from dior_search.data.synthetic import write_dataset

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
MARKS = ("# needs: gpu", "# needs: network")
SHELL_FENCES = {"sh", "shell", "console", "zsh", "bash-session", "shell-session"}
COMMAND_START = re.compile(r"^\s*(\$ |dior-search |pip |python3? |make |curl |accelerate )")
EXITS = re.compile(r"^# exits: (\d+)$")
URL_PORT = re.compile(r"\b(127\.0\.0\.1|localhost):\d+")
BLOCK_TIMEOUT_S = 600


@dataclass(frozen=True)
class Fence:
    language: str
    text: str
    line: int  # 1-based line of the opening fence


def fences(markdown: str) -> list[Fence]:
    """The fenced code blocks of a Markdown text, in order (``` and ~~~ fences)."""
    found: list[Fence] = []
    lines = markdown.splitlines()
    index = 0
    while index < len(lines):
        opening = re.match(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)", lines[index])
        if opening is None:
            index += 1
            continue
        indent, marker, language = opening.groups()
        body: list[str] = []
        end = index + 1
        while end < len(lines) and not lines[end].strip().startswith(marker):
            body.append(lines[end].removeprefix(indent))
            end += 1
        found.append(Fence(language.lower(), "\n".join(body) + "\n", index + 1))
        index = end + 1
    return found


def needs(block: Fence) -> str | None:
    """The block's `# needs:` mark, or None when it runs here."""
    first = block.text.lstrip("\n").splitlines()[0].strip() if block.text.strip() else ""
    return first if first in MARKS else None


def expected_exit(block: Fence) -> int:
    first = block.text.lstrip("\n").splitlines()[0].strip()
    match = EXITS.match(first)
    return int(match.group(1)) if match else 0


def test_every_shell_example_is_a_bash_block():
    """No command hides in a fence this test does not run or check."""
    hidden = []
    for page in PAGES:
        for block in fences(page.read_text()):
            first = next((line for line in block.text.splitlines() if line.strip()), "")
            if block.language in SHELL_FENCES or (
                block.language == "" and COMMAND_START.match(first)
            ):
                hidden.append(f"{page.relative_to(ROOT)}:{block.line}: {first.strip()}")
    assert not hidden, "shell examples outside ```bash fences:\n" + "\n".join(hidden)


def test_fence_parser_reads_marks_and_exit_codes():
    text = "x\n```bash\n# needs: gpu\nrun\n```\n```bash\n# exits: 2\nbad\n```\n```\nout\n```\n"
    blocks = fences(text)
    assert [b.language for b in blocks] == ["bash", "bash", ""]
    assert needs(blocks[0]) == "# needs: gpu" and needs(blocks[1]) is None
    assert expected_exit(blocks[1]) == 2 and expected_exit(blocks[0]) == 0


def test_readme_walkthrough_is_unmarked():
    """The new user's path is run, not excused: README's walkthrough blocks carry no mark."""
    blocks = [b for b in fences((ROOT / "README.md").read_text()) if b.language == "bash"]
    walkthrough = [b for b in blocks if "dior-search index --images photos" in b.text]
    assert walkthrough and all(needs(b) is None for b in walkthrough)


@pytest.fixture(scope="session")
def staged(tmp_path_factory) -> Path:
    """What a docs page's folder holds before its first block (see the module's docstring)."""
    root = tmp_path_factory.mktemp("docs-staged")
    write_dataset(root / "datasets" / "synthetic", {"test": 24})
    photos = write_dataset(root / "photos", {"test": 20}, seed=7, labels=False)
    first = root / "photos" / photos[0].file_name
    with Image.open(first) as image:
        image.convert("RGB").save(root / "photo.jpg", quality=92)
    return root


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


WRAPPER = r"""#!/usr/bin/env bash
# dior-search as the examples call it; `serve` starts in the background (see the test).
if [ "$1" = serve ]; then
  args=(); skip=0
  for a in "$@"; do
    if [ "$skip" = 1 ]; then skip=0; continue; fi
    case "$a" in --port) skip=1; continue;; --port=*) continue;; esac
    args+=("$a")
  done
  if [ -s "$DOCS_SERVE_PID" ]; then
    kill -INT "$(cat "$DOCS_SERVE_PID")" 2>/dev/null
    while kill -0 "$(cat "$DOCS_SERVE_PID")" 2>/dev/null; do sleep 0.2; done
  fi
  "$DOCS_REAL" "${args[@]}" --port "$DOCS_PORT" >>"$DOCS_SERVE_LOG" 2>&1 &
  pid=$!
  echo "$pid" >"$DOCS_SERVE_PID"
  for _ in $(seq 1 1200); do
    if ! kill -0 "$pid" 2>/dev/null; then wait "$pid"; exit $?; fi
    if (echo >"/dev/tcp/127.0.0.1/$DOCS_PORT") 2>/dev/null; then exit 0; fi
    sleep 0.25
  done
  echo "serve did not listen within 300 s" >&2
  exit 124
fi
exec "$DOCS_REAL" "$@"
"""


def stop_server(pid_file: Path) -> None:
    """Stop the page's server (the one process this test started), Ctrl+C first."""
    if not pid_file.is_file() or not pid_file.read_text().strip():
        return
    pid = int(pid_file.read_text())
    for sig, wait_s in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        for _ in range(int(wait_s / 0.1)):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def run_page(page: Path, folder: Path, tools: Path) -> list[str]:
    """Run the page's unmarked ```bash blocks in order in `folder`; the failures, described."""
    real = Path(sys.executable).with_name("dior-search")
    assert real.is_file(), f"the installed command is missing: {real}"
    tools.mkdir(exist_ok=True)
    wrapper = tools / "dior-search"
    wrapper.write_text(WRAPPER)
    wrapper.chmod(0o755)
    port = free_port()
    pid_file = folder / ".docs-serve.pid"
    env = {
        **os.environ,
        "HOME": str(folder),
        "HF_HUB_OFFLINE": "1",
        "PATH": f"{tools}{os.pathsep}{real.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "DOCS_REAL": str(real),
        "DOCS_PORT": str(port),
        "DOCS_SERVE_PID": str(pid_file),
        "DOCS_SERVE_LOG": str(folder / ".docs-serve.log"),
        "COLUMNS": "100",
    }
    failures: list[str] = []
    try:
        for block in fences(page.read_text()):
            if block.language != "bash" or needs(block) is not None:
                continue
            script = "set -eo pipefail\n" + URL_PORT.sub(f"127.0.0.1:{port}", block.text)
            try:
                done = subprocess.run(
                    ["bash", "-c", script],
                    cwd=folder,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=BLOCK_TIMEOUT_S,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                failures.append(f"line {block.line}: timed out after {BLOCK_TIMEOUT_S} s")
                break
            if done.returncode != expected_exit(block):
                failures.append(
                    f"line {block.line}: exit {done.returncode}, expected "
                    f"{expected_exit(block)}\n{block.text}--- stderr ---\n{done.stderr[-3000:]}"
                )
                break  # the blocks below build on this one
    finally:
        stop_server(pid_file)
    return failures


@pytest.mark.slow
def test_readme_examples_run_in_a_fresh_folder(tmp_path):
    """The new user's path: README's unmarked blocks, verbatim, in an empty folder."""
    folder = tmp_path / "fresh"
    folder.mkdir()
    (folder / ".venv").symlink_to(Path(sys.prefix))
    failures = run_page(ROOT / "README.md", folder, tmp_path / "tools")
    assert not failures, "\n".join(failures)


@pytest.mark.slow
@pytest.mark.parametrize(
    "page", [p for p in PAGES if p.parent != ROOT], ids=lambda p: p.relative_to(ROOT).as_posix()
)
def test_docs_page_examples_run(page, staged, tmp_path):
    blocks = [b for b in fences(page.read_text()) if b.language == "bash" and needs(b) is None]
    if not blocks:
        return  # nothing to run; the marks and fences are checked above
    folder = tmp_path / "page"
    shutil.copytree(staged, folder, symlinks=True)
    failures = run_page(page, folder, tmp_path / "tools")
    assert not failures, "\n".join(failures)


def test_readme_lists_every_command_once():
    """README's one-line-per-command table follows the CLI's verbs."""
    import dior_search.cli  # noqa: F401  (registers the verbs)
    from dior_search.cli.app import app

    verbs = sorted(c.name or c.callback.__name__ for c in app.registered_commands if c.callback)
    section = (ROOT / "README.md").read_text().split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `dior-search ([a-z-]+)` \|", section, re.MULTILINE)
    assert sorted(listed) == verbs
