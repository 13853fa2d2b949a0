"""The crash-safe store under a library's home: each way files change, beside its recovery.

A concept folder only ever changes as a whole, by ``rename`` (atomic) between ``concepts/``
and ``.staging/``; the index transaction that records the change runs around the rename, so
an exception undoes the move and a crash (kill -9, power loss) leaves something that
:func:`clean_staging` (run by ``reindex``, ``verify --repair`` and, for swaps and removes,
on open) brings back in step. The three primitives, each with the leftovers it can leave:

* :class:`Publish` (``add``): a complete folder staged as ``add-*`` moves in as a new concept.
  A crash before the rename leaves ``add-*`` (deleted); after it, a folder with no index row
  (indexed by the rebuild).
* :class:`Swap` (``update``): a complete folder staged as ``update-*``, holding the
  :data:`REPLACES_MARKER`, takes the place of a concept folder, which is parked as ``old-*``.
  A crash between the two renames leaves the new folder with its marker in ``.staging``:
  :func:`clean_staging` moves it in (the new version wins).
* :func:`retire` (``remove``): the folder leaves ``concepts/`` as ``remove-*`` in one rename,
  then is deleted at leisure; a crash leaves ``remove-*`` (deleted).

Every name here (``.staging``, the prefixes, the marker) is on disk in users' libraries, and
the recovery of today must read what older versions left: never rename one.

The domain operations (what goes into a staged folder, the index rows, names and tokens) live
in :mod:`conceptlib.library`; this module knows files and folders only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
from pathlib import Path
from types import TracebackType

from conceptlib._atomic import fsync_dir
from conceptlib._inputs import naming
from conceptlib.concept import IMAGES_DIR, MANIFEST_NAME, ORIGINAL_DIR, FileRecord
from conceptlib.slug import is_slug

__all__ = [
    "CONCEPTS_DIR",
    "REPLACES_MARKER",
    "STAGING_DIR",
    "Publish",
    "Swap",
    "clean_staging",
    "discard",
    "fsync_tree",
    "interrupted_swaps",
    "retire",
    "stage",
    "write_new",
]

STAGING_DIR = ".staging"
CONCEPTS_DIR = "concepts"
#: Written last into a staged replacement folder: "this complete folder replaces NAME".
REPLACES_MARKER = ".replaces"
# Staging prefixes (on disk: recovery tells leftovers apart by them).
ADD_PREFIX = "add-"  # a new concept being written
READ_PREFIX = "read-"  # an input copied in before it is decoded
UPDATE_PREFIX = "update-"  # a replacement folder being written
PARKED_PREFIX = "old-"  # the folder an update replaces, between the two renames
REMOVE_PREFIX = "remove-"  # a removed concept being deleted


# --- files in a staged folder --------------------------------------------------------------------


def write_new(dst: Path, data: bytes) -> FileRecord:
    """Write a new file, fsynced (inside a staging folder, where atomicity comes from the rename)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with naming(dst), open(dst, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return FileRecord("", hashlib.sha256(data).hexdigest(), len(data))


def fsync_tree(staging: Path) -> None:
    """Make a staged folder's entries durable before a rename publishes them."""
    # File contents were fsynced as written; the folders' entries need it too, before the
    # rename publishes them.
    for sub in (staging / ORIGINAL_DIR, staging / IMAGES_DIR):
        if sub.is_dir():
            fsync_dir(sub)
    fsync_dir(staging)


def discard(path: Path) -> None:
    """Delete a folder (or whatever is at ``path``), ignoring what is already gone."""
    shutil.rmtree(path, ignore_errors=True)
    if path.exists() or path.is_symlink():
        with contextlib.suppress(OSError):
            path.unlink()


def stage(staging_dir: Path, prefix: str, *, create: bool = True) -> Path:
    """A new unique path in ``.staging/`` (created unless ``create`` is False).

    Not ``tempfile.mkdtemp``: its folders are private (0700) and a staged folder becomes
    the concept's folder, which should get the user's usual permissions (umask).
    """
    staging_dir.mkdir(exist_ok=True)
    while True:
        path = staging_dir / f"{prefix}{secrets.token_hex(8)}"
        try:
            if create:
                path.mkdir()
            elif path.exists():
                continue
            return path
        except FileExistsError:
            continue


# --- publish: a new concept folder ---------------------------------------------------------------


class Publish:
    """Move a complete staged folder into ``concepts/`` as a new concept.

    Enter it *around* the index transaction, and call :meth:`move_in` inside it, so that a
    failure anywhere after the move (the row insert, the commit) takes the folder back out
    and index and files agree::

        with Publish(staging) as publish, registry.transaction() as tx:
            publish.move_in(target, manifest)
            tx.insert(...)

    Recovery: a crash after the move leaves a folder with no row; the rebuild indexes it.
    """

    def __init__(self, staging: Path) -> None:
        self.staging = staging
        self.moved: Path | None = None

    def __enter__(self) -> Publish:
        return self

    def move_in(self, target: Path, manifest: str) -> None:
        """Write the manifest (last, so the folder is complete) and rename the folder to ``target``."""
        write_new(self.staging / MANIFEST_NAME, manifest.encode("utf-8"))
        fsync_dir(self.staging)
        os.rename(self.staging, target)
        self.moved = target
        fsync_dir(target.parent)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is not None and self.moved is not None:
            # The transaction failed after the move: take the folder back out, so index
            # and files agree (a crash here instead leaves it for reindex to index).
            with contextlib.suppress(OSError):
                os.rename(self.moved, self.staging)


# --- swap: a new version of a concept folder -----------------------------------------------------


class Swap:
    """Swap a complete staged folder in for an existing concept folder, whole.

    The new folder is staged as ``update-<id>`` (:attr:`staging`; write the new files there),
    the current one is parked as ``old-<id>`` between the two renames. Enter it *around* the
    index transaction and call :meth:`swap_in` inside it: if anything fails after the swap
    (the row update, the commit), the old folder goes back; on leaving, whatever is left of
    the losing version is deleted. Recovery of a crash: :func:`clean_staging`.
    """

    def __init__(self, staging_dir: Path, folder: Path) -> None:
        self.staging = stage(staging_dir, UPDATE_PREFIX)
        self.parked = staging_dir / (PARKED_PREFIX + self.staging.name.removeprefix(UPDATE_PREFIX))
        self.folder = folder
        self.swapped = False

    def __enter__(self) -> Swap:
        return self

    def swap_in(self, name: str) -> None:
        """Mark the staged folder complete, then swap it in by two renames."""
        # Written last: its presence says the staged folder is complete, so
        # reindex can finish the swap if a crash separates the two renames.
        write_new(self.staging / REPLACES_MARKER, name.encode("utf-8"))
        fsync_tree(self.staging)
        os.rename(self.folder, self.parked)
        try:
            os.rename(self.staging, self.folder)
        except OSError:
            os.rename(self.parked, self.folder)
            raise
        self.swapped = True
        (self.folder / REPLACES_MARKER).unlink()
        fsync_dir(self.folder.parent)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        folder, parked, staging = self.folder, self.parked, self.staging
        try:
            if exc_type is None:
                self.swapped = False  # committed: the old version is history
            elif self.swapped:
                # The index transaction failed after the swap: put the old folder back.
                with contextlib.suppress(OSError):
                    os.rename(folder, staging)
                    os.rename(parked, folder)
                    self.swapped = False
        finally:
            if not folder.exists() and parked.exists():
                # Interrupted between the two renames: the old version goes back.
                with contextlib.suppress(OSError):
                    os.rename(parked, folder)
            if folder.exists() and not self.swapped:
                discard(parked)
                discard(staging)


# --- retire: a concept folder leaves ---------------------------------------------------------------


def retire(folder: Path, trash: Path) -> None:
    """Move a concept folder (if there) to ``trash`` (from ``stage(..., REMOVE_PREFIX, create=False)``).

    Out of ``concepts/`` in one rename; deleting the files (:func:`discard`) can then take its
    time (a crash leaves a staging leftover, not half a concept).
    """
    if folder.exists():
        os.rename(folder, trash)
        fsync_dir(folder.parent)


# --- recovery ----------------------------------------------------------------------------------------


def interrupted_swaps(staging_dir: Path) -> bool:
    """Whether ``.staging`` holds what an update or remove leaves when killed mid-way.

    Those leftovers leave the index wrong (new files with the old row, a row with no folder),
    so the library finishes them on open; other leftovers wait for ``reindex`` or ``verify``.
    """
    try:
        entries = list(staging_dir.iterdir())
    except OSError:
        return False
    return any(e.name.startswith((PARKED_PREFIX, REMOVE_PREFIX)) or (e / REPLACES_MARKER).is_file() for e in entries)


def clean_staging(staging_dir: Path, concepts_dir: Path) -> list[str]:
    """Finish interrupted swaps and delete everything else in ``.staging`` (lock held alone).

    Returns:
        One line per entry, saying what was done.
    """
    cleaned: list[str] = []
    if not staging_dir.is_dir():
        return cleaned
    for entry in sorted(staging_dir.iterdir()):
        marker = entry / REPLACES_MARKER
        if entry.is_dir() and marker.is_file():
            target_name = marker.read_text(encoding="utf-8").strip()
            if is_slug(target_name) and not (concepts_dir / target_name).exists():
                # A swap stopped between its two renames: the complete new folder wins.
                os.rename(entry, concepts_dir / target_name)
                (concepts_dir / target_name / REPLACES_MARKER).unlink()
                cleaned.append(f"finished replacing {target_name}")
                continue
        discard(entry)
        cleaned.append(f"deleted {STAGING_DIR}/{entry.name}")
    return cleaned
