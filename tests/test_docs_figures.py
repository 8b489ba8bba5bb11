"""The docs' figures are the benchmarks' results: generated from benchmarks/results/*.json."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def figures_module():
    spec = importlib.util.spec_from_file_location(
        "docs_figures", ROOT / "scripts" / "docs_figures.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["docs_figures"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def figures():
    return figures_module()


def test_generated_tables_and_plots_match_the_results_files(figures):
    """Re-measuring changes the JSON; `python scripts/docs_figures.py` must then be re-run."""
    assert figures.stale() == []


def test_every_figures_region_has_its_results_file(figures):
    regions = [
        match.group("name")
        for page in figures.PAGES
        for match in figures.REGION.finditer(page.read_text())
    ]
    assert regions, "no generated figures in the docs"
    for name in regions:
        assert name in figures.RENDERERS, name
        files = [figures.RESULTS / f"{name}.json", *figures.RESULTS.glob(f"{name}-*.json")]
        assert any(path.is_file() for path in files), name
    # The throughput and search-scale plots are drawn from their results, and shown.
    assert (ROOT / "docs" / "figures" / "throughput.svg").is_file()
    assert "figures/search-scale.svg" in (ROOT / "docs" / "benchmarks.md").read_text()


def test_every_results_file_says_where_it_came_from():
    """A figure without its conditions misleads: each file names its machine and origin."""
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        record = json.loads(path.read_text())
        assert record["command"] and record["figures"], path.name
        assert record["machine"], path.name
        measured = record.get("measured_at") and record.get("commit")
        assert measured or "transcribed" in record.get("source", ""), path.name


def test_a_changed_result_changes_the_page(figures, tmp_path, monkeypatch):
    """The table is the data: change a figure in a copy of the results and the page follows."""
    results = tmp_path / "results"
    results.mkdir()
    for path in figures.RESULTS.glob("*.json"):
        (results / path.name).write_text(path.read_text())
    record = json.loads((results / "search_scale.json").read_text())
    record["figures"]["rows"][0]["recall"] = 0.123
    (results / "search_scale.json").write_text(json.dumps(record))
    monkeypatch.setattr(figures, "RESULTS", results)
    page = "x\n<!-- figures: search_scale -->\nold\n<!-- /figures -->\ny\n"
    rendered = figures.render_page(page)
    assert "| 0.123 |" in rendered and "old" not in rendered
    assert rendered.startswith("x\n<!-- figures: search_scale -->\n| N |")
    assert rendered.endswith("<!-- /figures -->\ny\n")
    assert re.search(r"\*`benchmarks/results/search_scale.json`: .*transcribed", rendered)
    svg = figures.search_scale_svg()
    assert svg.startswith("<svg") and svg.count("<circle") >= 4
