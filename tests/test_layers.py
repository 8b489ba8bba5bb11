"""The layer contract of docs/architecture.md is checked, and catches an upward import."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: import-linter's own dependency reads TOML
    import tomli as tomllib

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


# The store's public modules (docs/architecture.md); every other module of store/ is a
# backend's own (or shared by the backends only), forbidden to the layers above.
STORE_PUBLIC = {"backend", "schema", "stores", "export"}


def store_contract() -> dict[str, list[str]]:
    """The forbidden contract that keeps the layers above the store on its public modules."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    (contract,) = [c for c in contracts if "public modules" in c["name"]]
    return dict(contract)


def test_the_store_contract_forbids_every_module_but_the_public_ones():
    modules = {
        p.stem if p.suffix == ".py" else p.name
        for p in (ROOT / "dior_search" / "store").iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()
    }
    listed = store_contract()["forbidden_modules"]
    forbidden = {m.removeprefix("dior_search.store.") for m in listed}
    assert forbidden | STORE_PUBLIC == modules, (
        f"not in the contract: {sorted(modules - forbidden - STORE_PUBLIC)}; "
        f"no such module: {sorted((forbidden | STORE_PUBLIC) - modules)}"
    )
    assert not forbidden & STORE_PUBLIC


@pytest.mark.slow
def test_a_search_module_importing_a_store_internal_breaks_the_store_contract(tmp_path):
    shutil.copytree(
        ROOT / "dior_search", tmp_path / "dior_search", ignore=shutil.ignore_patterns("tiny_model")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    words = tmp_path / "dior_search" / "search" / "words.py"
    words.write_text(words.read_text() + "\nfrom dior_search.store import shards\n")
    broken = lint(tmp_path)
    assert broken.returncode == 1
    assert "The layers above the store use only its public modules BROKEN" in " ".join(
        broken.stdout.replace("(docs/architecture.md) ", "").split()
    )
    assert "dior_search.search is not allowed to import dior_search.store.shards" in broken.stdout
    assert "dior_search.search.words -> dior_search.store.shards" in broken.stdout
    # The other contracts still hold: the store contract alone caught it.
    assert "Contracts: 3 kept, 1 broken." in broken.stdout
