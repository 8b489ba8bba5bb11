"""The project's exception types: each says what the CLI exits with and what the server answers.

Every error class carries its exit code and its HTTP status itself (class attributes
`exit_code`, `http_status`), so neither the CLI nor the server keeps a table of its own; a
subclass inherits both and overrides what differs (`NotIndexed` is an index error, 5, that the
server answers 404). `EXIT_CODES` is the one list of the codes a run ends with; README's
"Exit codes" section is checked against it by a test.
"""

from __future__ import annotations

import math

# Every code `dior-search` exits with, and what it means (README's "Exit codes" table).
EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "other error (a bug: please report it)",
    2: "usage error",
    3: "input error",
    4: "model error",
    5: "index error",
    6: "refused",
    7: "output error",
    130: "interrupted (Ctrl+C)",
    143: "terminated (SIGTERM)",
}


class DiorError(Exception):
    """A failure the user can act on; the message says what was wrong and what is valid."""

    exit_code = 1
    http_status = 500


class UsageError(DiorError):
    """The command line asked for something that does not exist (a verb, an option value)."""

    exit_code = 2
    http_status = 400


class InputError(DiorError):
    """An input file (image, label table) is missing or unreadable."""

    exit_code = 3
    http_status = 400


class ModelError(DiorError):
    """A model could not be loaded or does not fit the requested use."""

    exit_code = 4
    http_status = 500


class IndexStoreError(DiorError):
    """An index directory is missing, damaged, locked or of another kind than asked for."""

    exit_code = 5
    http_status = 500


class RemovalRefused(DiorError):
    """A run stopped before changing anything: it would remove much of an index unasked."""

    exit_code = 6
    http_status = 409


class OutputError(DiorError):
    """An output file (a contact sheet, JSON, a chart, the demo's images) cannot be written."""

    exit_code = 7
    http_status = 500


def error_classes() -> list[type[DiorError]]:
    """Every error class defined so far (of the modules imported), the base first."""
    found: list[type[DiorError]] = []
    pending: list[type[DiorError]] = [DiorError]
    while pending:
        kind = pending.pop(0)
        found.append(kind)
        pending += [k for k in kind.__subclasses__() if k not in found and k not in pending]
    return found


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name if it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def number_text(value: float) -> str:
    """A number as a message shows it: every digit of a whole number (2097152, never
    2.09715e+06), the shortest exact form of any other."""
    if math.isfinite(value) and float(value).is_integer():
        return str(int(value))
    return repr(float(value))
