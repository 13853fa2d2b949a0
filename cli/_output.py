"""Output discipline: data to stdout, everything else to stderr."""

from __future__ import annotations

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
