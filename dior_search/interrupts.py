"""Ctrl+C and SIGTERM: both end a run the same way, at any moment.

SIGTERM (what `kill`, systemd and container runtimes send) is turned into the same
KeyboardInterrupt as Ctrl+C, so the same clean-up runs (writers abort and release their
locks; at most the shard in progress is lost) and the CLI prints one line; `terminated()`
tells the two apart for the exit status (130 for Ctrl+C, 143 for SIGTERM). This module
imports nothing of the package, so the entry point can install it before the heavy imports.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

INTERRUPTED_EXIT = 130
TERMINATED_EXIT = 143
_terminated = threading.Event()


def on_sigterm(signum: int, frame: FrameType | None) -> None:
    _terminated.set()
    raise KeyboardInterrupt


def install() -> None:
    """Handle SIGTERM like Ctrl+C (in the main thread; elsewhere signals cannot be set)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)


def ignore() -> None:
    """Ignore both from now on: the run has ended and the process is exiting."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # CPython ends a process by killing itself with SIGINT (exit status -2, not ours) once a
    # KeyboardInterrupt has left code that exec() ran from a string, even if it was caught
    # since: dataclasses create their methods that way, so an interrupt while a module
    # imports often does. Running such code again clears that mark.
    exec("")


def terminated() -> bool:
    """Whether the interrupt was SIGTERM rather than Ctrl+C."""
    return _terminated.is_set()


def exit_code() -> int:
    return TERMINATED_EXIT if terminated() else INTERRUPTED_EXIT


def message() -> str:
    return "terminated" if terminated() else "interrupted"
