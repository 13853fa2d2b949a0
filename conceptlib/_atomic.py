"""Atomic file writes: temporary file in the same folder, fsync, rename, fsync the folder.

A reader (or a crash) sees either the old file or the whole new one, never a partial write.
Writers that must not interleave (the library, the caches) take a :func:`file_lock` first.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from conceptlib.errors import ConceptlibError, DestinationExistsError, NameTooLongError

# Read once at import (single-threaded then): os.umask can only be read by setting it.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


try:  # POSIX advisory locks; Windows has no shared flock
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: Whether :func:`file_lock` really locks (False on Windows, where it always yields True).
HAS_FLOCK = fcntl is not None


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str], *, exclusive: bool, wait_s: float) -> Iterator[bool]:
    """Hold an advisory ``flock`` on ``path`` (created if missing) while the block runs.

    Args:
        path: the lock file.
        exclusive: alone, or shared with other shared holders.
        wait_s: how long to wait for another holder, polling; 0 tries once.

    Yields:
        Whether the lock is held: False when it stayed taken for ``wait_s``. Without flock
        (Windows) nothing is locked and it yields True. Closing the file (or the process
        dying) releases the lock.
    """
    if fcntl is None:  # pragma: no cover - Windows
        yield True
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, mode)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.01)
        yield True
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries so a rename inside it survives a power cut (no-op on Windows)."""
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], *, exclusive: bool = False) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path`` for binary writing; on success rename it over ``path``.

    On any exception the temporary file is removed and ``path`` is untouched.

    Args:
        path: the file to write.
        exclusive: never replace an existing ``path`` (a ``DestinationExistsError``), even
            one another process creates while this one writes: the finished file is put in
            place with a hard link, which the file system refuses atomically when the name is
            taken. Where hard links are not supported, an existence check just before the
            rename is the best left.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{_short(target.name)}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise _naming(exc, target) from None
    tmp = Path(tmp_name)
    if os.name != "nt":
        # mkstemp creates 0600; give the file the mode open() would (exports land in shared
        # folders such as a web UI's embeddings/).
        os.fchmod(fd, 0o666 & ~_UMASK)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            _link_new(tmp, target)
        else:
            os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, OSError) and not isinstance(exc, ConceptlibError) and exc.filename in (None, tmp_name, str(tmp)):
            raise _naming(exc, target) from None
        raise
    fsync_dir(target.parent)


# What a file system without hard links answers to link() (FAT and exFAT: EPERM; some network
# shares: EOPNOTSUPP/ENOTSUP or ENOSYS; a name's link count at its limit: EMLINK).
_NO_HARD_LINKS = frozenset(
    getattr(errno, name) for name in ("EPERM", "EOPNOTSUPP", "ENOTSUP", "ENOSYS", "EMLINK", "EXDEV") if hasattr(errno, name)
)


def _link_new(tmp: Path, target: Path) -> None:
    """Put ``tmp`` in place as ``target`` only if no file (or link) of that name exists."""
    try:
        os.link(tmp, target, follow_symlinks=False)
    except FileExistsError:
        raise DestinationExistsError("already exists", path=target) from None
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise  # a full disk, say: the caller names the file
        # No hard links here (FAT, some network shares): check, then rename.
        if os.path.lexists(target):
            raise DestinationExistsError("already exists", path=target) from None
        os.replace(tmp, target)
        return
    tmp.unlink()


def _short(name: str, limit: int = 80) -> str:
    """At most ``limit`` bytes of ``name``, whole characters: a temporary name must fit where ``name`` fits.

    A valid name of 255 bytes can be 63 emoji; 80 of its characters would be 320 bytes.
    """
    short = name[:limit]
    while len(os.fsencode(short)) > limit:
        short = short[:-1]
    return short


def _naming(exc: OSError, target: Path) -> OSError:
    """``exc`` again, naming the file the caller writes: the temporary name means nothing to a user.

    A name the file system cannot store is the caller's input, not a failure of the machine.
    """
    if exc.errno == errno.ENAMETOOLONG:
        size = len(os.fsencode(target.name))
        return NameTooLongError(f"the file name is {size} bytes, too long for this file system", path=target)
    return type(exc)(exc.errno, exc.strerror or str(exc), os.fspath(target))


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (``exclusive``: never over an existing file)."""
    with atomic_open(path, exclusive=exclusive) as handle:
        handle.write(data)
