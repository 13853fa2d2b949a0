"""Output discipline: data to stdout, everything else to stderr."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

#: Human data (tables) and JSON go here.
out = Console(soft_wrap=True, highlight=False)
#: Messages, warnings and progress go here.
err = Console(stderr=True, soft_wrap=True, highlight=False)


def print_json(data: Any) -> None:
    """Write ``data`` as indented JSON to stdout (no colour codes, stable key order)."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def warn(message: str) -> None:
    """A one-line warning on stderr."""
    err.print(f"Warning: {message}", markup=False)


def info(message: str) -> None:
    """A one-line message on stderr."""
    err.print(message, markup=False)
