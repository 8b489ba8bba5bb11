"""The typer app, its consoles, and `main`: every failure becomes one line and an exit code."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import threading
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

# typer vendors click and exports no base class of its command-line errors.
from typer._click.exceptions import ClickException, NoArgsIsHelpError

from dior_search import interrupts
from dior_search.cli.help_format import HelpGroup
from dior_search.data.paths import shown_character
from dior_search.errors import DiorError

app = typer.Typer(
    name="dior-search",
    help="Conditional image search with DIOR embeddings from vision-language models.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain help that reflows to the terminal, printed literally (see cli.help_format).
    cls=HelpGroup,
    rich_markup_mode=None,
)
console = Console()
# Messages on stderr stay one line each, whatever the terminal width: logs and grep read them.
err_console = Console(stderr=True, soft_wrap=True)


def print_version(asked: bool) -> None:
    """`--version`: the installed version, then exit."""
    if asked:
        from dior_search.version import __version__

        print(f"dior-search {__version__}")
        raise typer.Exit()


@app.callback()
def configure(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens.")] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=print_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Conditional image search with DIOR embeddings from vision-language models."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        quiet_libraries()


def quiet_libraries() -> None:
    """Keep third-party progress bars and load reports off the terminal."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; every failure becomes one line on stderr and a non-zero exit code."""
    try:
        code = app(args=argv, prog_name="dior-search", standalone_mode=False)
    except DiorError as exc:
        return error_line(str(exc), exc.exit_code)
    except NoArgsIsHelpError as exc:  # no verb: the help was printed, and it is no error
        if exc.format_message().strip():
            err_console.print(exc.format_message(), markup=False, highlight=False)
        return exc.exit_code
    except ClickException as exc:
        return error_line(exc.format_message(), exc.exit_code)
    except typer.Exit as exc:
        return exc.exit_code
    except (KeyboardInterrupt, typer.Abort):
        code = interrupts.INTERRUPTED_EXIT
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return error_line(f"{where}{exc.strerror or exc}", 1)
    except MemoryError:
        return error_line("out of memory", 1)
    except Exception as exc:  # a bug: still one line; --verbose logs the traceback
        logging.getLogger(__name__).info("unexpected error", exc_info=True)
        return error_line(f"unexpected {type(exc).__name__}: {exc}", 1)
    # Without standalone mode typer returns 130 for an interrupted command rather than raising;
    # an interrupt that a library swallowed still ends the run as one.
    if code == interrupts.INTERRUPTED_EXIT or interrupts.received():
        return error_line(interrupts.message(), interrupts.exit_code())
    return 0


def error_line(message: str, code: int) -> int:
    """Print `message` as one `error:` line on stderr (escaped: never markup, never two
    lines, never a character that cannot print) and return `code`.

    Only what cannot print is escaped: a backslash the user typed shows as one backslash
    (`--text '\\t'` is quoted as `'\\t'`, not doubled), since messages quote values as given.
    """
    text = message.strip() or "failed (no reason given)"
    if not text.isprintable():
        text = "".join(c if c.isprintable() else shown_character(c) for c in text)
    err_console.print(f"[red]error:[/red] {escape(text)}", highlight=False)
    return code


def run() -> None:
    """The `dior-search` command (see `dior_search.__main__`)."""
    interrupts.install()
    try:
        code = main()
        flush_outputs()
    except KeyboardInterrupt:  # in the instant after main's own handling
        code = error_line(interrupts.message(), interrupts.exit_code())
    interrupts.ignore()
    end_process(code)


def flush_outputs() -> None:
    for stream in (sys.stdout, sys.stderr):
        # A closed pipe (`| head`): nothing more can be shown.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()


def end_process(code: int) -> None:
    """Exit with `code` now that the run is over and every store is closed.

    The interpreter's own teardown after a Milvus Lite run takes seconds in native code
    (its server's threads), in which no Ctrl+C can end the run: it used to exit 0 after a
    Ctrl+C there. So the exit handlers run (logging's flush, finalizers) and the process ends
    at once, unless a thread is still running, which the normal exit waits for.
    """
    if threading.active_count() > 1:
        sys.exit(code)
    atexit._run_exitfuncs()
    flush_outputs()
    os._exit(code)
