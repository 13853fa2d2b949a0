"""Output discipline: data to stdout, everything else to stderr."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from conceptlib.cli._readonly import print_json  # noqa: F401  (one JSON writer for every command)

#: Human data (tables) and JSON go here.
out = Console(soft_wrap=True, highlight=False)
#: Messages, warnings and progress go here.
err = Console(stderr=True, soft_wrap=True, highlight=False)


def warn(message: str) -> None:
    """A one-line warning on stderr."""
    err.print(f"Warning: {message}", markup=False)


def info(message: str) -> None:
    """A one-line message on stderr."""
    err.print(message, markup=False)


class StatusBar:
    """A rich progress bar on stderr, created on the first update and shown only on a terminal.

    Args:
        label: the word in front of the bar ("Adding", "Training", "render").
        enabled: False turns every update into a no-op (e.g. under ``--json``).
        min_total: totals below this draw nothing (a bar for one file is noise).
        elapsed: show the time elapsed instead of the time remaining.
    """

    def __init__(self, label: str, *, enabled: bool = True, min_total: int = 1, elapsed: bool = False) -> None:
        self._label = label
        self._enabled = enabled and err.is_terminal
        self._min_total = min_total
        self._elapsed = elapsed
        self._bar: Any = None
        self._task: Any = None

    def update(self, done: int, total: int, description: str = "") -> None:
        """Move the bar to ``done`` of ``total``."""
        if not self._enabled or total < self._min_total:
            return
        if self._bar is None:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            clock = TimeElapsedColumn() if self._elapsed else TimeRemainingColumn()
            self._bar = Progress(
                TextColumn(self._label), BarColumn(), MofNCompleteColumn(), clock,
                TextColumn("{task.description}"), console=err, transient=True,
            )  # fmt: skip
            self._bar.start()
            self._task = self._bar.add_task("", total=total)
        self._bar.update(self._task, completed=done, total=total, description=description)

    def close(self) -> None:
        """Remove the bar (it is transient)."""
        if self._bar is not None:
            self._bar.stop()
