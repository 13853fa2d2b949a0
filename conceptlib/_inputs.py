"""Reading files and folders from the wild: no link leads out of them, no token file lies.

This is the one bounded, link-safe reader of conceptlib (:class:`Folder`, :func:`read_named`)
and its one token-file reader (:func:`read_folder_words`, :func:`read_token_text`): the
embedding readers (:mod:`conceptlib.formats`) and the library (through
:mod:`conceptlib._snapshots`) both read through them. A leaf: it imports nothing of conceptlib
but :mod:`conceptlib.errors`, :mod:`conceptlib._terminal` and :mod:`conceptlib._images`.

Symbolic links. A folder conceptlib reads (a concept folder, a folder given to ``add``,
``validate`` or ``--images``, a repository ``preview`` reads) is read without following any
link that leaves it:

* a link whose target, fully resolved, stays inside the folder being read is read as that
  target (a concept folder may link ``learned_embeds.bin`` to ``v2/learned_embeds.bin``);
* a link that leads outside the folder, or nowhere (dangling, a loop), is skipped and
  reported, and never opened: ``token_identifier.txt -> /etc/hostname`` never becomes a
  token, ``README.md -> ~/.ssh/id_rsa`` is never copied into the library;
* a link to a folder is not descended into (its target, inside, is read where it is);
* anything that is not a regular file or a folder (a FIFO, a socket, a device) is skipped.

For a concept folder, "the folder being read" is the concept folder itself, even when it was
found inside a larger folder given to ``add``.

A batch (``add``, ``validate`` of a folder) lists what it skipped in its report. A single read
has no report to list it in: :func:`conceptlib.formats.read` (``inspect``, ``convert``) refuses
instead, with an :class:`~conceptlib.errors.UnsafeLinkError` naming the file, when a file it
would read (a learned_embeds file, the token or type file, the other file of an SDXL pair) is
such a link.

What a user names on the command line is followed like any tool follows it: ``conceptlib add
~/link-to-folder`` reads the folder the link points to, and ``add link.pt`` the file.

Each file is opened component by component from a descriptor of the folder, every component
with ``O_NOFOLLOW``, then checked with ``fstat``: a link swapped in between the check and the
read makes the open fail instead of being followed. Hard links cannot be told apart from
ordinary files (a hard link *is* the file, and git checkouts and package caches make many);
a hard link to a file outside the folder, which only someone allowed to write that folder
*and* read that file can make, is read as the folder's own file. Without ``O_NOFOLLOW`` and
``dir_fd`` support (Windows), the same decision is made from resolved paths, without the
protection against a link swapped in mid-read.

Inputs are copied into a private folder (a *snapshot*, :mod:`conceptlib._snapshots`) before
anything decodes them, so what is decoded, what is hashed and what the library keeps are the
same bytes.

Token files. ``token_identifier.txt`` and ``type_of_concept.txt`` are UTF-8; a byte order mark
at the start and whitespace around the word are not part of it; a file that is not UTF-8, or
holds control or invisible characters (NUL, escape sequences, bidi overrides, zero-width
characters), is an error that names the file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from conceptlib._terminal import invisible_characters, printable
from conceptlib.errors import (
    BadInputError,
    ConceptlibError,
    NotRegularFileError,
    TextFileError,
    UnsafeLinkError,
)

if TYPE_CHECKING:
    from conceptlib.embedding import Embedding

__all__ = [
    "Entry",
    "Folder",
    "Skipped",
    "concerns_the_library",
    "copy_images",
    "naming",
    "read_folder_words",
    "read_named",
    "read_token_text",
    "refusal",
    "renamed",
    "unexpected_reason",
]

TOKEN_FILE = "token_identifier.txt"
TYPE_FILE = "type_of_concept.txt"
#: A token file holds one word; anything this large is not one.
MAX_TOKEN_FILE_BYTES = 4096

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)
#: Whether files can be opened relative to a folder descriptor, never following a link.
_FD_WALK = bool(_O_NOFOLLOW and _O_DIRECTORY) and os.open in os.supports_dir_fd and os.stat in os.supports_dir_fd
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Skipped:
    """Something met while reading that was left alone, and why (one line).

    Attributes:
        path: where it is, as the user would write it.
        reason: why it was not read.
    """

    path: str
    reason: str
    error: BaseException | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Entry:
    """One entry of a folder that may be read.

    Attributes:
        name: its name.
        rel: its path inside the folder being read, as listed (``concept_images/0.png``).
        kind: ``file`` or ``dir``.
        linked: reached through a symbolic link that stays inside the folder.
    """

    name: str
    rel: str
    kind: str
    linked: bool = False


def _size(n: int) -> str:
    if n < 2**20:
        return f"{n:,} bytes"  # a token file's 4 KiB would read "0 MiB"
    mib = n / 2**20
    return f"{mib:.0f} MiB" if mib >= 10 else f"{mib:.1f} MiB"


def _too_large(size: int, limit: int, what: str) -> str:
    article = "an" if what[:1] in "aeiou" else "a"
    return f"is {_size(size)}, more than the {_size(limit)} {article} {what} may have"


def renamed(exc: OSError, path: Path) -> OSError:
    """``exc`` again, naming ``path`` (what the user wrote) instead of an internal one."""
    return type(exc)(exc.errno, exc.strerror or str(exc), os.fspath(path))


@contextlib.contextmanager
def naming(path: str | os.PathLike[str]) -> Iterator[None]:
    """Give an ``OSError`` raised by writing ``path`` its file name (``write()`` gives none).

    A full disk is then reported on the file being written, which tells a batch that the
    library or the machine is at fault (see :func:`concerns_the_library`), not the input.
    """
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            raise renamed(exc, Path(path)) from None
        raise


def _regular(fd: int, shown: Path) -> os.stat_result:
    """``fstat`` of an opened input, refusing folders, FIFOs, sockets and devices."""
    info = os.fstat(fd)
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(errno.EISDIR, "Is a directory", os.fspath(shown))
    if not stat.S_ISREG(info.st_mode):
        raise NotRegularFileError("is not a regular file (a FIFO, socket or device): not read", path=shown)
    return info


def _read_fd(fd: int, shown: Path, limit: int, what: str, error: type[BadInputError]) -> bytes:
    size = _regular(fd, shown).st_size
    if size > limit:
        raise error(_too_large(size, limit, what), path=shown)
    chunks: list[bytes] = []
    total = 0
    while True:
        # The size may grow while reading (a file being written): the limit holds anyway.
        try:
            block = os.read(fd, _CHUNK)
        except OSError as exc:  # an I/O error (a bad disk, /proc/self/mem) names the file too
            raise renamed(exc, shown) from None
        if not block:
            break
        total += len(block)
        if total > limit:
            raise error(_too_large(total, limit, what), path=shown)
        chunks.append(block)
    return b"".join(chunks)


def read_named(path: str | os.PathLike[str], *, limit: int, what: str = "file", error: type[BadInputError] = BadInputError) -> bytes:
    """The bytes of a file the user named, following links as the user asked.

    FIFOs and devices are refused without blocking on them; more than ``limit`` bytes is an
    ``error`` naming the file.
    """
    shown = Path(path)
    try:
        fd = os.open(shown, os.O_RDONLY | _O_NONBLOCK | _O_CLOEXEC | _O_BINARY)
    except OSError as exc:
        raise renamed(exc, shown) from None
    try:
        return _read_fd(fd, shown, limit, what, error)
    finally:
        os.close(fd)


class Folder:
    """A folder whose files are read without following a link out of it.

    Args:
        path: the folder; a link to a folder is followed here (the user named it).
        links: follow links that stay inside the folder; False refuses every link (the
            library's own folders, which conceptlib fills with regular files only).

    Raises:
        OSError: the folder cannot be opened (missing, not a folder, no permission).

    Example:
        >>> with Folder("cat-toy") as folder:  # doctest: +SKIP
        ...     token = folder.read_bytes("token_identifier.txt", limit=65536)
    """

    def __init__(self, path: str | os.PathLike[str], *, links: bool = True) -> None:
        self.path = Path(path)
        self.real = Path(os.path.realpath(self.path))
        self._links = links
        self._fd: int | None = None
        if _FD_WALK:
            try:
                self._fd = os.open(self.real, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
            except OSError as exc:
                raise renamed(exc, self.path) from None
        elif not self.real.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", os.fspath(self.path))

    def close(self) -> None:
        """Release the folder's descriptor."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Folder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _link_target(self, rel: str) -> str:
        """The text of the first link on the way to ``rel``, for messages."""
        current = self.real
        for part in [p for p in rel.split("/") if p]:
            current = current / part
            if current.is_symlink():
                with contextlib.suppress(OSError):
                    return printable(os.readlink(current))
                break
        return "?"

    def where(self, rel: str) -> str:
        """The path inside the folder that ``rel`` names once links inside it are resolved.

        Raises:
            UnsafeLinkError: a link on the way leads out of the folder, or nowhere.
            FileNotFoundError: there is nothing at ``rel`` (and no link on the way).
        """
        shown = self.path / rel
        try:
            real = Path(os.path.realpath(self.real / rel))
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # a link became a file while being resolved
                raise UnsafeLinkError("changed while being read: not read", path=shown) from None
            raise renamed(exc, shown) from None
        if not self._links and real != Path(os.path.normpath(self.real / rel)):
            raise UnsafeLinkError(
                f"is a symbolic link (to {self._link_target(rel)}), where conceptlib keeps only regular files: not read", path=shown
            )
        if real != self.real and not real.is_relative_to(self.real):
            raise UnsafeLinkError(
                f"is a symbolic link leading out of {printable(self.path.name or str(self.path))}/ "
                f"(to {self._link_target(rel)}): not read",
                path=shown,
            )
        if not os.path.lexists(real):
            target = self._link_target(rel)
            if target != "?":
                raise UnsafeLinkError(f"is a symbolic link to nothing (to {target}): not read", path=shown)
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", os.fspath(shown))
        return real.relative_to(self.real).as_posix()

    def _open(self, rel: str, *, directory: bool) -> int:
        """A descriptor of ``rel``, opened without following any link on the way."""
        shown = self.path / rel
        inner = self.where(rel)
        parts = [p for p in inner.split("/") if p and p != "."]
        if self._fd is None:  # pragma: no cover - platforms without dir_fd (Windows)
            flags = os.O_RDONLY | _O_BINARY | (_O_DIRECTORY if directory else _O_NONBLOCK) | _O_NOFOLLOW
            try:
                return os.open(self.real.joinpath(*parts), flags)
            except OSError as exc:
                raise renamed(exc, shown) from None
        fd = os.dup(self._fd)
        try:
            for i, part in enumerate(parts):
                last = i == len(parts) - 1
                flags = os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC
                flags |= _O_DIRECTORY if (directory or not last) else _O_NONBLOCK
                try:
                    next_fd = os.open(part, flags, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.EMLINK) or (exc.errno == errno.ENOTDIR and not last):
                        # where() saw no link there: one was swapped in since.
                        raise UnsafeLinkError("became a symbolic link while being read: not read", path=shown) from None
                    raise renamed(exc, shown) from None
                os.close(fd)
                fd = next_fd
            return fd
        except BaseException:
            os.close(fd)
            raise

    def read_bytes(self, rel: str, *, limit: int, what: str = "file", error: type[BadInputError] = BadInputError) -> bytes:
        """The bytes of the file at ``rel``.

        Raises:
            UnsafeLinkError: ``rel`` is (or passes through) a link leading out, or nowhere.
            NotRegularFileError: a FIFO, socket or device.
            BadInputError: (``error``) more than ``limit`` bytes.
            OSError: it cannot be read (missing, a folder, permissions).
        """
        fd = self._open(rel, directory=False)
        try:
            return _read_fd(fd, self.path / rel, limit, what, error)
        finally:
            os.close(fd)

    def copy(self, rel: str, dest: Path, *, limit: int, what: str = "file", error: type[BadInputError] = BadInputError) -> None:
        """Copy the file at ``rel`` to the new file ``dest`` (streamed: embeddings can be large)."""
        shown = self.path / rel
        fd = self._open(rel, directory=False)
        try:
            size = _regular(fd, shown).st_size
            if size > limit:
                raise error(_too_large(size, limit, what), path=shown)
            dest.parent.mkdir(parents=True, exist_ok=True)
            total = 0
            with naming(dest), open(dest, "xb") as out:
                while block := os.read(fd, _CHUNK):
                    total += len(block)
                    if total > limit:
                        raise error(_too_large(total, limit, what), path=shown)
                    out.write(block)
        finally:
            os.close(fd)

    def entries(self, sub: str = "") -> tuple[list[Entry], list[Skipped]]:
        """The files and folders in ``sub`` (sorted by name), and the entries left alone.

        Links leading out of the folder or nowhere, and what is neither a regular file nor a
        folder, are in the second list with the reason; nothing of them is read.
        """
        found: list[Entry] = []
        skipped: list[Skipped] = []
        fd = self._open(sub, directory=True) if self._fd is not None else None
        try:
            names = sorted(os.listdir(fd if fd is not None else self.real / self.where(sub)))
            for name in names:
                rel = f"{sub}/{name}" if sub else name
                shown = self.path / rel
                try:
                    info = os.stat(name, dir_fd=fd, follow_symlinks=False) if fd is not None else os.lstat(self.real / self.where(sub) / name)
                    linked = stat.S_ISLNK(info.st_mode)
                    if linked:
                        inner = self.where(rel)
                        info = os.stat(inner, dir_fd=self._fd, follow_symlinks=False) if self._fd is not None else os.lstat(self.real / inner)
                        if stat.S_ISLNK(info.st_mode):
                            raise UnsafeLinkError("is a symbolic link that leads round in a loop: not read", path=shown)
                except UnsafeLinkError as exc:
                    skipped.append(Skipped(os.fspath(shown), exc.message, exc))
                    continue
                except OSError as exc:
                    skipped.append(Skipped(os.fspath(shown), f"cannot be looked at: {exc.strerror or exc}", renamed(exc, shown)))
                    continue
                if stat.S_ISDIR(info.st_mode):
                    found.append(Entry(name, rel, "dir", linked))
                elif stat.S_ISREG(info.st_mode):
                    found.append(Entry(name, rel, "file", linked))
                else:
                    refusal = NotRegularFileError("is not a regular file (a FIFO, socket or device): not read", path=shown)
                    skipped.append(Skipped(os.fspath(shown), refusal.message, refusal))
        finally:
            if fd is not None:
                os.close(fd)
        return found, skipped


# --- token files ---------------------------------------------------------------------------------


def read_token_text(data: bytes, path: str | os.PathLike[str]) -> str:
    """The word a ``token_identifier.txt`` or ``type_of_concept.txt`` holds ('' when blank).

    A UTF-8 byte order mark at the start and whitespace and line ends around the word are not
    part of it.

    Raises:
        TextFileError: too large, not UTF-8, or holding control or invisible characters; the
            message names the file (and the characters, escaped).
    """
    if len(data) > MAX_TOKEN_FILE_BYTES:
        raise TextFileError(_too_large(len(data), MAX_TOKEN_FILE_BYTES, "token file"), path=path)
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TextFileError(
            f"is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})", path=path, hint="save it as UTF-8"
        ) from None
    # Only these: str.strip() would also drop \x1c-\x1f and other controls silently.
    word = text.strip(" \t\r\n")
    hidden = invisible_characters(word)
    if hidden:
        raise TextFileError(
            f"holds control or invisible characters ({', '.join(hidden)}) that no prompt can contain: '{printable(word)}'",
            path=path,
            hint="write the word alone, in printable characters",
        )
    return word


def read_folder_words(folder: Folder, embedding: Embedding) -> bool:
    """Take ``embedding``'s token and type from ``folder``'s token and type files, if it has them.

    ``token_identifier.txt`` replaces the token (and makes the format ``concepts-library``);
    ``type_of_concept.txt`` sets ``metadata["concept_type"]``. Each is read through
    ``folder`` (bounded, never through a link out of it) and decoded by
    :func:`read_token_text`; a missing or blank file changes nothing.

    Returns:
        Whether the token now comes from the token file.

    Raises:
        TextFileError: a file larger than :data:`MAX_TOKEN_FILE_BYTES`, not UTF-8, or holding
            control or invisible characters; the message names it.
        UnsafeLinkError: a file is a link leading out of ``folder``, or nowhere.
        NotRegularFileError: a file is a FIFO, socket or device.
    """

    def word(name: str) -> str | None:
        try:
            data = folder.read_bytes(name, limit=MAX_TOKEN_FILE_BYTES, what="token file", error=TextFileError)
        except FileNotFoundError:
            return None
        return read_token_text(data, folder.path / name)

    token = word(TOKEN_FILE)
    if token is not None:
        embedding.source_format = "concepts-library"
        if token:
            embedding.token = token
    concept_type = word(TYPE_FILE)
    if concept_type:
        embedding.metadata["concept_type"] = concept_type.lower()
    return bool(token)


def refusal(exc: BaseException, *, unreadable: str = "cannot be read: ") -> str:
    """The reason a file was left out, in one line (``unreadable`` goes before an OS error's words)."""
    if isinstance(exc, ConceptlibError):
        return exc.message + (f" (hint: {exc.hint})" if exc.hint else "")
    if isinstance(exc, OSError):
        return f"{unreadable}{exc.strerror or exc}"
    return str(exc)


def copy_images(
    sources: list[tuple[Path, Path | None]], dest: str | os.PathLike[str]
) -> tuple[list[Path], list[Skipped]]:
    """Copy images that are what they claim into the new folder ``dest``, numbered in order.

    Args:
        sources: ``(image, folder it was found in or None when the user named it)`` each.
        dest: where the copies go (created).

    Returns:
        The copies (``<n>/<name>``: two folders' ``0.png`` stay apart, names unchanged), and
        the images refused with the reason.
    """
    from conceptlib._images import MAX_IMAGE_BYTES, check_image
    from conceptlib.errors import ImageFileError

    out = Path(dest)
    copied: list[Path] = []
    skipped: list[Skipped] = []
    for n, (path, within) in enumerate(sources):
        try:
            if within is None:
                data = read_named(path, limit=MAX_IMAGE_BYTES, what="image", error=ImageFileError)
            else:
                with Folder(within) as folder:
                    data = folder.read_bytes(path.relative_to(within).as_posix(), limit=MAX_IMAGE_BYTES, what="image", error=ImageFileError)
            check_image(data, path)
        except (BadInputError, OSError) as exc:
            skipped.append(Skipped(os.fspath(path), refusal(exc)))
            continue
        target = out / str(n) / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        with naming(target), open(target, "xb") as handle:
            handle.write(data)
        copied.append(target)
    return copied, skipped


def unexpected_reason(exc: BaseException) -> str:
    """One bounded line for an exception no check foresaw: its type and first line."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"unexpected {type(exc).__name__}" + (f": {printable(first)}" if first else "")


#: errno values that say the disk or file system is at fault, not the file being read.
_SYSTEM_ERRNOS = frozenset(
    e for e in (getattr(errno, n, None) for n in ("ENOSPC", "EDQUOT", "EFBIG", "EROFS", "ENOMEM", "EMFILE", "ENFILE")) if e is not None
)


def concerns_the_library(exc: BaseException, home: str | os.PathLike[str] | None = None) -> bool:
    """Whether ``exc`` is about the library or the machine rather than one input.

    A batch records an input's own problems and goes on; these stop it, because every later
    input would meet them too: a damaged or busy library, an SQLite error, a full or
    read-only disk, no memory or file descriptors left, and any error on a file inside
    ``home``.
    """
    from conceptlib.errors import ConceptDamagedError, LibraryBusyError, LibraryCorruptError

    if isinstance(exc, ConceptDamagedError):
        return False  # one concept's stored vectors, not the library as a whole
    if isinstance(exc, (LibraryCorruptError, LibraryBusyError, MemoryError)):
        return True
    if type(exc).__module__.split(".")[0] in ("sqlite3", "sqlalchemy"):
        return True
    if isinstance(exc, OSError):
        if exc.errno in _SYSTEM_ERRNOS:
            return True
        if home is not None and exc.filename:
            with contextlib.suppress(OSError, ValueError):
                return Path(os.path.abspath(exc.filename)).is_relative_to(os.path.abspath(home))
    return False
