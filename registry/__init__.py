"""The persistent index of the concept library (``<home>/index.sqlite``).

The index is derived data: every concept's ``concept.json`` is the source of truth and
``conceptlib reindex`` rebuilds the index from them. Importing this package is cheap; sqlmodel
is imported only when a :class:`~conceptlib.registry.store.Registry` is opened.

>>> from conceptlib.registry import open_registry
>>> registry = open_registry("sqlite:///index.sqlite")   # creates and migrates
"""

from __future__ import annotations

from conceptlib.registry.store import (
    IndexReader,
    Registry,
    SqliteReader,
    Writer,
    default_url,
    sqlite_path,
)

__all__ = ["IndexReader", "Registry", "SqliteReader", "Writer", "default_url", "open_registry", "sqlite_path"]


def open_registry(url: str) -> Registry:
    """Open (creating and migrating as needed) the index at ``url``.

    Args:
        url: a SQLAlchemy URL, e.g. ``sqlite:///home/me/.local/share/conceptlib/index.sqlite``.

    Returns:
        The :class:`Registry`, with every migration applied.

    Raises:
        UsageError: the URL names a database other than SQLite.
    """
    return Registry(url)
