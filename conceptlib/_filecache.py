"""What a file's bytes gave, computed once per version of the file: kept in ``<home>/cache/``.

AUTOMATIC1111 keeps its checkpoint hashes in ``cache.json`` keyed by file name and modification
time; conceptlib does the same for the two things it would otherwise recompute on every run:

* ``hashes.json``: each weight file's digests (sha256, AutoV2, legacy, addnet), seconds per GB;
* ``models.json``: a model's description (family, prediction type, tokenizer vocabulary hash,
  token-norm statistics, text-encoder fingerprints), which reads the text encoder's token matrix.

An entry is used only while the files it was computed from have the same path, size,
modification time (nanoseconds) and inode as when it was written: a touched, rewritten or
replaced file is read again. :func:`identity` is that stamp.

The cache is only ever a shortcut, never a source of truth:

* a cache file that does not parse, is too large, or holds an entry of the wrong shape is
  ignored (as if empty) and rewritten whole by the next write;
* writes are atomic (a temporary file renamed over the old one), so a reader sees a whole old or
  whole new file; writers take ``cache/.lock`` and merge with what is on disk, so two commands
  writing at once both land;
* a home that cannot be written (read-only, full) costs the shortcut, never the command.

Imports point down: errors-free, torch-free; :mod:`conceptlib.models` uses it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conceptlib._atomic import atomic_write_bytes, file_lock

__all__ = ["CACHE_DIR", "FileCache", "identity"]

#: The folder under the library home.
CACHE_DIR = "cache"
#: Bumped when what an entry holds changes meaning: older files are then ignored and rewritten.
FORMAT_VERSION = 1
#: A cache file larger than this is not read (thousands of models take well under 10 MiB).
MAX_CACHE_BYTES = 64 << 20
#: Entries kept per file; the oldest written go first (a user with more models re-reads some).
MAX_ENTRIES = 2000
#: How long a write waits for another command's write before it gives the shortcut up.
LOCK_WAIT_S = 10.0

Stamp = list[int]


def identity(path: str | os.PathLike[str]) -> Stamp:
    """The stamp an entry is valid for: size, modification time (ns) and inode of ``path``.

    The inode is 0 where the platform has none; a file replaced by another (a new download
    renamed over it) has a new inode even when size and time agree.

    Raises:
        OSError: the file cannot be stat'ed.
    """
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino]


class FileCache:
    """One JSON table of the cache: ``key -> (stamp, value)``.

    Args:
        home: the library folder.
        name: the table (``hashes`` or ``models``); the file is ``<home>/cache/<name>.json``.
        check: called on a stored value; an entry whose value it rejects (returns False or
            raises) is treated as missing.
    """

    def __init__(self, home: Path, name: str, check: Callable[[Any], bool]) -> None:
        self.folder = home / CACHE_DIR
        self.path = self.folder / f"{name}.json"
        self._check = check
        self._read: dict[str, Any] | None = None

    # --- reading -------------------------------------------------------------------------------
    def _entries(self) -> dict[str, Any]:
        """The table on disk, or an empty one when it is missing, too large or damaged."""
        try:
            with open(self.path, "rb") as handle:
                data = handle.read(MAX_CACHE_BYTES + 1)
        except OSError:
            return {}
        if len(data) > MAX_CACHE_BYTES:
            return {}
        try:
            table = json.loads(data)
        except (ValueError, RecursionError):
            return {}
        if not isinstance(table, dict) or table.get("version") != FORMAT_VERSION or not isinstance(table.get("entries"), dict):
            return {}
        return table["entries"]

    def get(self, key: str, stamp: Stamp) -> Any | None:
        """The value stored for ``key`` while its files still have ``stamp``, else None.

        The table is read once per instance (a model's weight files ask one after the other);
        a new instance sees what other commands wrote since.
        """
        if self._read is None:
            self._read = self._entries()
        entry = self._read.get(key)
        if not isinstance(entry, dict) or entry.get("stamp") != stamp:
            return None
        value = entry.get("value")
        try:
            return value if self._check(value) else None
        except Exception:  # a value of the wrong shape is a damaged entry: recompute it
            return None

    # --- writing -------------------------------------------------------------------------------
    def put(self, key: str, stamp: Stamp, value: Any) -> None:
        """Store ``value`` for ``key`` at ``stamp``; a failure to write is silent (see the module)."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with file_lock(self.folder / ".lock", exclusive=True, wait_s=LOCK_WAIT_S) as held:
                if not held:
                    return
                entries = {k: v for k, v in self._entries().items() if isinstance(v, dict) and v.get("stamp") is not None}
                entries.pop(key, None)
                entries[key] = {"stamp": stamp, "value": value, "written": time.time()}
                if len(entries) > MAX_ENTRIES:
                    oldest = sorted(entries, key=lambda k: _written(entries[k]))
                    for gone in oldest[: len(entries) - MAX_ENTRIES]:
                        del entries[gone]
                data = json.dumps({"version": FORMAT_VERSION, "entries": entries}, separators=(",", ":"), allow_nan=False)
                atomic_write_bytes(self.path, data.encode("utf-8"))
                self._read = entries
        except (OSError, ValueError):
            # A read-only or full home, a value JSON cannot hold: the next run computes it again.
            return


def _written(entry: Any) -> float:
    value = entry.get("written") if isinstance(entry, dict) else None
    return float(value) if isinstance(value, (int, float)) else 0.0
