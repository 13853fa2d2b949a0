"""Output discipline: data to stdout, everything else to stderr, nothing a terminal obeys.

Names, tokens, metadata and file names come from strangers' files. Commands escape each such
field where they print it (``conceptlib._terminal.printable``, which also bounds its length);
the consoles here are the backstop: rich markup (``[bold]``, ``[link=...]``) and emoji codes
(``:cat:``) are off unless a call asks for them, and every string printed has its control,
bidi and other invisible characters escaped, so no escape sequence reaches the terminal.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

from conceptlib._terminal import printable
from conceptlib.cli._readonly import print_json  # noqa: F401  (one JSON writer for every command)


class SafeConsole(Console):
    """A rich Console that escapes invisible characters in every string it prints.

    Strings are escaped whole, newlines and tabs included: print one line per call. Rich
    renderables (tables, ``Text``) pass unchanged; build their cells with ``Text(...)``, which
    rich never reads as markup.
    """

    def print(self, *objects: Any, **kwargs: Any) -> None:
        """``Console.print`` with every string's invisible characters escaped."""
        super().print(*(printable(o, None) if isinstance(o, str) else o for o in objects), **kwargs)


#: Human data (tables) and JSON go here.
out = SafeConsole(soft_wrap=True, highlight=False, markup=False, emoji=False)
#: Messages, warnings and progress go here.
err = SafeConsole(stderr=True, soft_wrap=True, highlight=False, markup=False, emoji=False)


def warn(message: str) -> None:
    """A one-line warning on stderr (escaped and bounded like error lines)."""
    from conceptlib.cli._errors import one_line

    err.print(one_line("Warning:", message), markup=False)


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
            # markup=False: the description is a file name, which may hold "[bold]" or "[link=...]".
            self._bar = Progress(
                TextColumn(self._label, markup=False), BarColumn(), MofNCompleteColumn(), clock,
                TextColumn("{task.description}", markup=False), console=err, transient=True,
            )  # fmt: skip
            self._bar.start()
            self._task = self._bar.add_task("", total=total)
        self._bar.update(self._task, completed=done, total=total, description=printable(description, 40))

    def close(self) -> None:
        """Remove the bar (it is transient)."""
        if self._bar is not None:
            self._bar.stop()
