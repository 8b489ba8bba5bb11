"""`python -m dior_search` and the `dior-search` command: run the CLI.

The CLI's modules take about half a second to import (torch, transformers); Ctrl+C or
SIGTERM in that time ends the run as it would during a command: one line, exit 130 (143).
"""

import sys

from dior_search import interrupts


def run() -> None:
    interrupts.install()
    try:
        from dior_search.cli import run as run_cli
    except KeyboardInterrupt:
        interrupts.ignore()
        sys.stderr.write(f"error: {interrupts.message()}\n")
        sys.exit(interrupts.exit_code())
    run_cli()


if __name__ == "__main__":
    run()
