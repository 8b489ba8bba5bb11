"""The public Python API: the docs' example runs as written, and importing stays light."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

import dior_search
from dior_search.data.synthetic import write_dataset

LIBRARY_PAGE = Path(__file__).resolve().parents[1] / "docs" / "library.md"


def page_code(page: Path) -> str:
    """The first Python block of a docs page."""
    found = re.search(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.DOTALL)
    assert found is not None, f"no Python example in {page}"
    return found[1]


@pytest.mark.slow
def test_the_library_page_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # A small split written first: the example's collection is what labels.csv lists.
    write_dataset(tmp_path / "datasets" / "synthetic", {"test": 24})
    namespace: dict[str, object] = {}
    exec(compile(page_code(LIBRARY_PAGE), str(LIBRARY_PAGE), "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "(1, 2, 128)"
    collection = namespace["collection"]
    by_image, by_id, both = namespace["by_image"], namespace["by_id"], namespace["both"]
    # The query image is indexed: it is its own nearest neighbour, as the id query's is.
    assert by_image.hits[0].path == collection.items[0].path
    assert by_id.hits[0].id == 7 and by_id.query.id == 7
    assert [hit.rank for hit in both.hits] == [1, 2, 3, 4, 5]
    assert set(both.hits[0].scores) == {"color", "background"}
    assert len(printed) == 1 + len(both.hits) + 2
    # In words: the images the model calls red first; facets count its answers.
    red = namespace["red"]
    assert red.hits[0].answers == {"color": "red"} and red.hits[0].scored_by == {"color": "answer"}
    on_black = namespace["red_on_black"].hits  # the tiny model tells every background
    assert on_black and all(h.labels["background"] == "black" for h in on_black)


def test_every_public_name_resolves():
    for name in dior_search.__all__:
        assert getattr(dior_search, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        dior_search.nope  # noqa: B018


def test_importing_the_package_and_its_cli_loads_no_model_library():
    code = (
        "import sys, dior_search, dior_search.cli; "
        "print(sorted({'torch', 'transformers', 'faiss', 'pyarrow'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
