"""Progress bars on stderr for the long verbs (index, bench, demo)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class RateColumn(ProgressColumn):
    """Items per second, as measured so far."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:.1f} {self.unit}/s", style="cyan")


class ProgressBar:
    """A rich bar with rate and ETA on stderr, shown from the moment the total is known."""

    def __init__(self, label: str, unit: str, console: Console) -> None:
        self.progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            RateColumn(unit),
            TimeRemainingColumn(),
            console=console,
        )
        self.label = label
        self.task: TaskID | None = None

    def start(self, total: int) -> None:
        self.task = self.progress.add_task(self.label, total=total)
        self.progress.start()

    def stage(self, label: str, total: int) -> None:
        """Start a new task on the same bar display, for a run of several stages."""
        if self.task is not None:
            self.progress.update(self.task, visible=False)
        self.label = label
        self.start(total)

    def advance(self, n: int) -> None:
        if self.task is not None:
            self.progress.advance(self.task, n)


@contextmanager
def progress_bar(label: str, unit: str, console: Console) -> Iterator[ProgressBar]:
    bar = ProgressBar(label, unit, console)
    try:
        yield bar
    except BaseException:
        # The bar goes away (and off a terminal is never printed): the error that follows is
        # the run's only line on stderr.
        bar.progress.live.transient = True
        bar.progress.live.stop()
        raise
    if bar.task is not None:
        bar.progress.stop()
