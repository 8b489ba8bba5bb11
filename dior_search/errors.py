"""The project's exception type: what the CLI turns into one red line and an exit code."""


class DiorError(Exception):
    """A failure the user can act on; the message says what was wrong and what is valid."""

    exit_code = 1


class UsageError(DiorError):
    """The command line asked for something that does not exist (a verb, an option value)."""

    exit_code = 2


class InputError(DiorError):
    """An input file (image, label table) is missing or unreadable."""

    exit_code = 3


class ModelError(DiorError):
    """A model could not be loaded or does not fit the requested use."""

    exit_code = 4


class IndexStoreError(DiorError):
    """An index directory is missing, damaged, locked or of another kind than asked for."""

    exit_code = 5


class RemovalRefused(DiorError):
    """A run stopped before changing anything: it would remove much of an index unasked."""

    exit_code = 6


class OutputError(DiorError):
    """An output file (a contact sheet, JSON, a chart, the demo's images) cannot be written."""

    exit_code = 7


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name if it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
