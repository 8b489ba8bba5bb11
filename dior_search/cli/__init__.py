"""The `dior-search` command: a thin typer layer, one module per verb, over the library.

Each verb parses its options, calls one library function, and renders the answer; typer and
rich live only here.
"""

# Importing each verb's module registers it on the app.
from dior_search.cli import (  # noqa: F401
    bench,
    compact,
    demo,
    export,
    facets,
    groups,
    index,
    query,
    serve,
)
from dior_search.cli.app import app, main, run

__all__ = ["app", "main", "run"]
