"""One exception hierarchy for conceptlib.

Every error a user can cause derives from :class:`BadInputError` (the CLI exits with code 2
for those). Errors carry structured fields (``path``, ``hint``) so the CLI can render one line
that says which file, what is wrong and what to do next, and so library callers can react
programmatically. Built-in exception types are mixed in where the meaning matches, so existing
``except ValueError`` / ``except FileNotFoundError`` code keeps working.
"""

from __future__ import annotations

import os


class ConceptlibError(Exception):
    """Root of every error raised on purpose by conceptlib.

    Args:
        message: what is wrong, without the file name (it is prefixed from ``path``).
        path: the file or folder concerned, if any.
        hint: the next step for the user ("convert it with ...").
    """

    exit_code: int = 1
    default_hint: str | None = None

    def __init__(
        self, message: str, *, path: str | os.PathLike[str] | None = None, hint: str | None = None
    ) -> None:
        self.message = message
        self.path = os.fspath(path) if path is not None else None
        self.hint = hint if hint is not None else self.default_hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class BadInputError(ConceptlibError, ValueError):
    """The user gave something conceptlib cannot use (exit code 2)."""

    exit_code = 2


class EmbeddingFileError(BadInputError):
    """A file cannot be read as a textual-inversion embedding."""


class GitLFSPointerError(EmbeddingFileError):
    """The file is a Git LFS pointer, not the real content."""

    default_hint = "the repository was cloned without git-lfs: run `git lfs install && git lfs pull`"


class UnknownFormatError(EmbeddingFileError):
    """The bytes are not any embedding container conceptlib knows."""

    default_hint = "run `conceptlib convert --help` for the formats conceptlib reads"


class CorruptFileError(EmbeddingFileError):
    """A known container whose bytes are truncated or inconsistent."""

    default_hint = "download or copy the file again; it is damaged"


class UnsafePickleError(EmbeddingFileError):
    """A pickle asks for something outside the allowlist; nothing of it was executed."""

    default_hint = (
        "conceptlib never runs code from a file; if you trust its author, re-save the vectors "
        "as .safetensors with their own tool"
    )


class EmbeddingStructureError(EmbeddingFileError):
    """The container is fine but its content is not a usable embedding (keys, rank, sizes)."""


class UnknownEncoderError(EmbeddingStructureError):
    """A vector width that belongs to no Stable Diffusion text encoder."""


class NonFiniteError(BadInputError):
    """The vectors contain NaN or Inf (an error only when strict checking is asked for)."""

    default_hint = "the concept was damaged in training (too high a learning rate or fp16 overflow); retrain or pick an earlier checkpoint"


class FormatCapabilityError(BadInputError):
    """The target format cannot hold this embedding (e.g. SDXL vectors in a single-encoder format)."""


class DestinationExistsError(BadInputError, FileExistsError):
    """Refusing to overwrite an existing file."""

    default_hint = "pass --force to overwrite it"


class UsageError(BadInputError):
    """Arguments that contradict each other or name nothing."""


class MissingDependencyError(ConceptlibError, ImportError):
    """An optional dependency is needed for this operation."""

    exit_code = 2
