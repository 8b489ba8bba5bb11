"""A built wheel is complete: installed without -e into a fresh environment, it indexes a
named dataset with the label table it ships and runs the demo, from a folder outside the
source tree."""

import csv
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dior_search.data.synthetic import make_item

REPO = Path(__file__).resolve().parents[1]
LEFT_OUT = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "datasets", "indexes", "*.egg-info", "__pycache__",
    ".*_cache", "tests",
)  # fmt: skip


def run(args, cwd, env):
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A venv holding only the wheel; its dependencies seen from this test environment."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=LEFT_OUT, symlinks=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["HF_HUB_OFFLINE"] = "1"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    run([*build, "--quiet", "-w", str(root / "dist"), str(source)], root, env)
    (wheel,) = (root / "dist").glob("dior_search-*.whl")
    venv = root / "venv"
    run([sys.executable, "-m", "venv", str(venv)], root, env)
    python = venv / "bin" / "python"
    install = [python, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet"]
    run([*install, str(wheel)], root, env)
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = Path(run([python, "-c", where], root, env).stdout.strip())
    # Dependencies from this environment: its site-packages as a path, its .pth files unread
    # (so an editable dior-search installed there stays out of sight).
    (purelib / "test-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = root / "elsewhere"
    work.mkdir()
    return venv / "bin", work, env, source


@pytest.mark.slow
def test_the_wheel_indexes_deepfashion_with_its_shipped_labels(installed):
    bin_dir, work, env, source = installed
    where = "import dior_search.data.collections as c; print(c.__file__, c.METADATA_DIR)"
    located = run([bin_dir / "python", "-c", where], work, env).stdout.split()
    assert all(str(REPO) not in path and str(source) not in path for path in located)
    assert Path(located[1], "LICENSE-reference-repo").is_file()
    with (REPO / "metadata" / "deepfashion.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))[:3]
    images = work / "datasets" / "deepfashion"
    images.mkdir(parents=True)
    for index, row in enumerate(rows):
        make_item(0, "test", index)[1].save(images / row["file_names"])
    command = [bin_dir / "dior-search", "index", "--dataset", "deepfashion", "-c", "category"]
    command += ["--model", "tiny", "--device", "cpu", "--datasets-dir", "datasets"]
    done = run(command, work, env)
    assert str(REPO) not in done.stdout + done.stderr
    index = work / "indexes" / "deepfashion" / "tiny" / "category"
    table = pq.read_table(index / "shard-00000.parquet")
    assert table.column("path").to_pylist() == [row["file_names"] for row in rows]
    assert table.column("label_category").to_pylist() == [row["clothing_category"] for row in rows]
    assert table.column("label_texture").to_pylist() == [row["texture"].strip() for row in rows]
    manifest = (index / "manifest.json").read_text()
    assert str(REPO) not in manifest and str(source) not in manifest


@pytest.mark.slow
def test_the_wheel_runs_the_demo_from_any_folder(installed):
    bin_dir, work, env, _ = installed
    demo = work / "demo"
    demo.mkdir()
    command = [bin_dir / "dior-search", "demo", "--n-images", "24", "--device", "cpu"]
    done = run(command, demo, env)
    assert "recall@1 on 24 synthetic test images, model tiny" in done.stdout
    # The demo's images in its own folder under the working directory (no label table).
    assert len(list((demo / "datasets" / "demo" / "test").glob("*.png"))) == 24
