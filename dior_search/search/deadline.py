"""A request's deadline, checked between the steps of its work.

A server answers 504 when a request's time is up, but the worker thread doing its work
cannot be killed: the work itself looks at the clock between its steps (each filter, each
joined index, each shard's search) and stops there, so a timed-out request stops costing CPU
within one step of its deadline.
"""

from __future__ import annotations

import time

from dior_search.errors import DiorError


class DeadlineExceeded(DiorError):
    """A request ran out of time (before or during its work)."""

    http_status = 504


def check_deadline(deadline: float | None, doing: str = "searching") -> None:
    """DeadlineExceeded if `deadline` (a `time.monotonic()` value; None: none) has passed."""
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineExceeded(f"the request ran out of time while {doing}")
