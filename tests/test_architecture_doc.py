"""docs/architecture.md matches the tree: its table names every module of dior_search/, no
module that does not exist, and test files that exist."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dior_search"
DOC = ROOT / "docs" / "architecture.md"
# A table row: | `module.py` | what it owns | `tests/...py` |
ROW = re.compile(r"^\| `(?P<module>[\w/]+\.py)` \|.*\| `(?P<test>tests/[\w/]+\.py)` \|$")


def documented() -> dict[str, str]:
    """Module (relative to dior_search/) -> its test file, as the doc's table lists them."""
    rows = [ROW.match(line) for line in DOC.read_text().splitlines()]
    return {m["module"]: m["test"] for m in rows if m}


def holds_code(path: Path) -> bool:
    """Whether a module holds more than a docstring (an empty __init__.py needs no row)."""
    body = ast.parse(path.read_text()).body
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body)


def package_modules() -> set[str]:
    return {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "tiny_model" not in path.parts and (path.name != "__init__.py" or holds_code(path))
    }


def test_the_doc_names_every_module_and_no_other():
    named = set(documented())
    missing, extra = sorted(package_modules() - named), sorted(named - package_modules())
    assert not missing and not extra, (
        f"docs/architecture.md: add a row for {missing}; remove the rows of {extra}"
    )


def test_the_test_files_the_doc_names_exist():
    absent = sorted({test for test in documented().values() if not (ROOT / test).is_file()})
    assert not absent, f"docs/architecture.md names test files that do not exist: {absent}"


def test_the_table_is_read():
    # The rows are found at all (a changed table format would pass the tests above vacuously).
    assert {"search/searcher.py", "store/schema.py", "store/backend.py"} <= set(documented())
