"""`python -m dior_search` runs the CLI."""

from dior_search.cli import run

run()
