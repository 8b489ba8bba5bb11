"""The layer contract of docs/architecture.md is checked, and catches an upward import."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    """import-linter over the package copied into `tree`, with the project's contracts."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(tree / "pyproject.toml")],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_an_upward_import_breaks_the_contract(tmp_path):
    shutil.copytree(
        ROOT / "dior_search", tmp_path / "dior_search", ignore=shutil.ignore_patterns("tiny_model")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    kept = lint(tmp_path)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert "0 broken" in kept.stdout

    manifest = tmp_path / "dior_search" / "store" / "manifest.py"
    manifest.write_text(manifest.read_text() + "\nimport dior_search.search.searcher\n")
    broken = lint(tmp_path)
    assert broken.returncode == 1
    assert "dior_search.store is not allowed to import dior_search.search" in broken.stdout
    assert "dior_search.store.manifest -> dior_search.search.searcher" in broken.stdout
