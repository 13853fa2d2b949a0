"""Configuration read from the environment at call time (never at import time).

Reading per call keeps tests simple (set an environment variable, nothing to patch) and lets a
long-running process see changes.
"""

from __future__ import annotations

import os
from pathlib import Path

_TRUE = {"1", "true", "yes", "on", "y", "t"}


def is_true(value: str | None) -> bool:
    """Return True for the usual spellings of "yes" in environment variables."""
    return value is not None and value.strip().lower() in _TRUE


def debug() -> bool:
    """Whether ``CONCEPTLIB_DEBUG`` asks for full tracebacks."""
    return is_true(os.environ.get("CONCEPTLIB_DEBUG"))


def home(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Resolve the library folder: ``explicit``, else ``CONCEPTLIB_HOME``, else the user data dir.

    Args:
        explicit: a folder given on the command line (``--home``), if any.

    Returns:
        The absolute path of the library folder (not created here).
    """
    if explicit is not None:
        return Path(explicit).expanduser().resolve()
    env = os.environ.get("CONCEPTLIB_HOME")
    if env:
        return Path(env).expanduser().resolve()
    from platformdirs import user_data_dir

    return Path(user_data_dir("conceptlib", appauthor=False)).resolve()
