"""Map exceptions to one-line messages with a next step, in one place.

Commands never catch errors themselves: :func:`render_error` turns whatever escapes into a
single line on stderr and an exit code (2 for bad input, 1 otherwise).
"""

from __future__ import annotations

from collections.abc import Callable

from conceptlib.errors import BadInputError, ConceptlibError

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


def render_error(err: BaseException) -> tuple[str, int]:
    """Return the one-line message for ``err`` and the exit code to use."""
    for etype, fmt, code in [*_hub_errors(), *ERROR_TABLE]:
        if isinstance(err, etype):
            message, hint = fmt(err)
            if code is None:
                code = getattr(err, "exit_code", 1)
                if isinstance(err, BadInputError):
                    code = 2
            line = f"Error: {message}"
            if hint:
                line += f" (hint: {hint})"
            return " ".join(line.split("\n")), int(code)
    first = str(err).splitlines()[0] if str(err) else ""
    return (
        f"Error: unexpected {type(err).__name__}: {first} "
        "(hint: rerun with CONCEPTLIB_DEBUG=1 for the traceback and report it)",
        1,
    )
