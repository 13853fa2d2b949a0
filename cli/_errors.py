"""Map exceptions to one-line messages with a next step, in one place.

Commands never catch errors themselves: :func:`render_error` turns whatever escapes into a
single line on stderr and an exit code (2 for bad input, 1 otherwise).
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from conceptlib._terminal import printable
from conceptlib.errors import BadInputError, ConceptlibError

#: The longest error or warning line, in characters. Messages quote file-controlled text (a
#: pickle's repr can be 6 MB); this is the backstop after each field's own bound.
MAX_LINE_CHARS = 1000
#: The longest hint: the hint is the next step, so the message is cut first.
_MAX_HINT_CHARS = 300

# Ordered (type, formatter): the first isinstance match wins. Each formatter returns
# (message, hint or None).
Formatter = Callable[[BaseException], tuple[str, str | None]]


def _conceptlib(err: BaseException) -> tuple[str, str | None]:
    assert isinstance(err, ConceptlibError)
    return str(err), err.hint


def _file_not_found(err: BaseException) -> tuple[str, str | None]:
    assert isinstance(err, FileNotFoundError)
    return f"{err.filename}: no such file or folder", "check the path"


def _permission(err: BaseException) -> tuple[str, str | None]:
    assert isinstance(err, PermissionError)
    return f"{err.filename}: permission denied", "check the file's permissions"


def _is_a_directory(err: BaseException) -> tuple[str, str | None]:
    assert isinstance(err, IsADirectoryError)
    return f"{err.filename}: is a folder, expected a file", None


def _not_a_directory(err: BaseException) -> tuple[str, str | None]:
    assert isinstance(err, NotADirectoryError)
    return f"{err.filename}: a part of this path is a file, not a folder", "check the path"


def _file_exists(err: BaseException) -> tuple[str, str | None]:
    assert isinstance(err, FileExistsError)
    import os.path

    if err.filename and not os.path.isdir(err.filename):
        # What conceptlib creates exclusively raises DestinationExistsError; a bare one comes
        # from making a folder where a file already sits.
        return f"{err.filename}: is a file, where a folder is needed", "check the path"
    return f"{err.filename}: already exists", "choose another path or remove it"


def _os_error(err: BaseException) -> tuple[str, str | None]:
    # Disk full, read-only file system, I/O errors: not the user's input, but still one line
    # that names the path (every conceptlib write is atomic, so nothing is half-written).
    assert isinstance(err, OSError)
    reason = err.strerror or str(err)
    if isinstance(err, (ConnectionError, TimeoutError)):
        return reason, "check your connection and try again"
    return (f"{err.filename}: {reason}" if err.filename else reason), "check the disk and the path"


def _hub_errors() -> list[tuple[type[BaseException], Formatter, int]]:
    # Imported lazily and only if huggingface_hub is already loaded, to keep start-up cheap.
    import sys

    if "huggingface_hub" not in sys.modules:
        return []
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    return [
        (GatedRepoError, lambda e: ("the repository is gated: " + str(e).splitlines()[0], "accept its terms on the Hub, then `hf auth login`"), 2),
        (RepositoryNotFoundError, lambda e: ("repository not found: " + str(e).splitlines()[0], "check the repo id, or log in with `hf auth login` if it is private"), 2),
        (RevisionNotFoundError, lambda e: ("revision not found: " + str(e).splitlines()[0], "check the branch, tag or commit"), 2),
        (LocalEntryNotFoundError, lambda e: ("not in the local cache and offline: " + str(e).splitlines()[0], "unset HF_HUB_OFFLINE or pull it once online"), 2),
    ]


ERROR_TABLE: list[tuple[type[BaseException], Formatter, int | None]] = [
    (ConceptlibError, _conceptlib, None),  # exit code from the error itself
    (IsADirectoryError, _is_a_directory, 2),
    (FileNotFoundError, _file_not_found, 2),
    (PermissionError, _permission, 2),
    (NotADirectoryError, _not_a_directory, 2),
    (FileExistsError, _file_exists, 2),
    (OSError, _os_error, 1),
]


def _bounded(text: str, limit: int) -> str:
    """``text`` on one line, invisible characters escaped, at most ``limit`` characters."""
    # printable() cuts before it escapes (escaping 6 MB would take seconds) and says how much
    # it left out; room is kept for that note. One escaped character takes up to ten, so the
    # result is cut again if escapes made it longer.
    flat = " ".join(text.split("\n"))
    shown = printable(flat, None if len(flat) <= limit else max(limit - 30, 1))
    if len(shown) > limit:
        shown = shown[: limit - 1] + "…"
    return shown


def one_line(prefix: str, message: str, hint: str | None = None) -> str:
    """``PREFIX message (hint: hint)``: one line of at most :data:`MAX_LINE_CHARS` characters.

    Newlines become spaces, every other invisible character is escaped (``\\x1b``), and the
    message is cut (marked ``…``) so that the hint, the next step, always fits.

    Args:
        prefix: ``"Error:"`` or ``"Warning:"``.
        message: what happened; may quote text from files.
        hint: the next step, or None.
    """
    tail = f" (hint: {_bounded(hint, _MAX_HINT_CHARS)})" if hint else ""
    return f"{prefix} {_bounded(message, MAX_LINE_CHARS - len(prefix) - 1 - len(tail))}{tail}"


def render_error(err: BaseException) -> tuple[str, int]:
    """Return the one-line message for ``err`` and the exit code to use.

    The line is safe to print: file-controlled text in it is escaped and the whole line is at
    most :data:`MAX_LINE_CHARS` characters.
    """
    for etype, fmt, code in [*_hub_errors(), *ERROR_TABLE]:
        if isinstance(err, etype):
            message, hint = fmt(err)
            if code is None:
                code = getattr(err, "exit_code", 1)
                if isinstance(err, BadInputError):
                    code = 2
            return one_line("Error:", message, hint), int(code)
    text = str(err)
    first = text.splitlines()[0] if text else ""
    return (
        one_line("Error:", f"unexpected {type(err).__name__}: {first}", "rerun with CONCEPTLIB_DEBUG=1 for the traceback and report it"),
        1,
    )


# --- warnings --------------------------------------------------------------------------------

# numpy's floating-point warnings ("overflow encountered in multiply") on the vectors of a
# file: conceptlib reports NaN/Inf values itself, and arithmetic on huge but finite values
# (AUTOMATIC1111's checksum of 1e38 vectors) is expected to overflow.
_NUMPY_FLOAT_WARNING = r"(overflow|invalid value|divide by zero|underflow) encountered"
# Addressed to developers of the code that calls the library (conceptlib), not to its users.
_DEVELOPER_WARNINGS: tuple[type[Warning], ...] = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


def _describe_warning(message: Warning | str, category: type[Warning]) -> str:
    text = str(message).strip()
    first = text.splitlines()[0] if text else category.__name__
    if category.__name__ == "DecompressionBombWarning":  # Pillow, not imported to check
        return f"a very large image: {first}"
    return first


@contextlib.contextmanager
def library_warnings(stream: TextIO | None = None) -> Iterator[None]:
    """Turn warnings raised inside the block into one ``Warning: ...`` line each, or nothing.

    Python prints a warning as two lines with a source line of whichever library raised it
    (numpy, Pillow, torch). Inside this block each distinct warning is written once as one
    line on stderr, escaped and bounded like error lines; numpy's floating-point warnings and
    deprecation notices are dropped. ``python -W ...`` or ``PYTHONWARNINGS`` keep their say.

    Args:
        stream: where lines go (default: ``sys.stderr`` at the time of the warning).
    """
    seen: set[str] = set()

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: str | None = None) -> None:
        text = one_line("Warning:", _describe_warning(message, category))
        if text in seen:
            return
        seen.add(text)
        target = stream or sys.stderr
        target.write(text + "\n")
        target.flush()

    with warnings.catch_warnings():
        if not sys.warnoptions:
            warnings.filterwarnings("ignore", message=_NUMPY_FLOAT_WARNING, category=RuntimeWarning)
            for category in _DEVELOPER_WARNINGS:
                warnings.filterwarnings("ignore", category=category)
        warnings.showwarning = show
        yield
