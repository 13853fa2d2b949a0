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


class NoEmbeddingInImageError(UnknownFormatError):
    """An image (PNG, WebP) that carries no embedding: a picture, not a concept."""


class CorruptFileError(EmbeddingFileError):
    """A known container whose bytes are truncated or inconsistent."""

    default_hint = "download or copy the file again; it is damaged"


class ResourceLimitError(EmbeddingFileError):
    """The file, or something it unpacks to, is larger than any embedding needs (a decompression
    bomb, an absurd header, a huge JSON payload); refused before the memory or time was spent."""

    default_hint = "no real embedding is this large; if a tool you trust wrote it, report it with the file's size"


class UnsafePickleError(EmbeddingFileError):
    """A pickle asks for something outside the allowlist; nothing of it was executed."""

    default_hint = (
        "conceptlib never runs code from a file; if you trust its author, re-save the vectors "
        "as .safetensors with their own tool"
    )


class EmbeddingStructureError(EmbeddingFileError):
    """The container is fine but its content is not a usable embedding (keys, rank, sizes)."""


class IsHypernetworkError(EmbeddingStructureError):
    """A hypernetwork where an embedding was expected (read it with :mod:`conceptlib.hypernet`)."""


class IsOptimizerStateError(EmbeddingStructureError):
    """AUTOMATIC1111's ``NAME.pt.optim`` optimizer state where an embedding was expected
    (:func:`conceptlib.hypernet.describe_optimizer_state` says what it holds)."""


class HypernetworkStructureError(EmbeddingStructureError):
    """A hypernetwork file whose modules or fields do not make a network."""


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


class NameTooLongError(BadInputError, OSError):
    """A file name the file system cannot store (most allow 255 bytes per name)."""

    default_hint = "choose a shorter name"


class UsageError(BadInputError):
    """Arguments that contradict each other or name nothing."""


class MissingDependencyError(ConceptlibError, ImportError):
    """An optional dependency is needed for this operation."""

    exit_code = 2


# --- Hugging Face Hub (conceptlib.hub) -----------------------------------------------------------
# conceptlib.hub turns huggingface_hub's errors into these, because only it knows the repository,
# revision and operation concerned; the client's own exception stays reachable as __cause__.


class HubError(ConceptlibError):
    """A Hub operation failed; ``repo_id`` names the repository concerned."""

    def __init__(self, message: str, *, repo_id: str | None = None, hint: str | None = None) -> None:
        self.repo_id = repo_id
        super().__init__(message, hint=hint)


class NotAConceptRepoError(HubError, BadInputError):
    """The repository holds no textual-inversion embedding, or several and none was chosen."""

    exit_code = 2


class HubNotFoundError(HubError, BadInputError, LookupError):
    """The Hub (or, offline, the local cache) has no such repository, revision or file.

    Attributes:
        repo_id: the repository asked for.
        revision: the branch, tag or commit asked for, when one was.
    """

    exit_code = 2

    def __init__(
        self, message: str, *, repo_id: str | None = None, revision: str | None = None, hint: str | None = None
    ) -> None:
        self.revision = revision
        super().__init__(message, repo_id=repo_id, hint=hint)


class HubRepoNotFoundError(HubNotFoundError):
    """No such repository, or a private one this token cannot see (the Hub answers both alike)."""

    default_hint = "check the repository id; for a private one, log in with `hf auth login` or set HF_TOKEN"


class HubRevisionNotFoundError(HubNotFoundError):
    """The repository exists but has no such branch, tag or commit."""

    default_hint = "check the branch, tag or commit id; leave out @REVISION for main"


class HubNotCachedError(HubNotFoundError):
    """Offline (``HF_HUB_OFFLINE``), and the repository, revision or file is not in the local cache."""

    default_hint = "unset HF_HUB_OFFLINE and pull it once; later offline pulls resolve from the cache"


class HubAuthError(HubError, BadInputError):
    """The Hub refused the credentials (401) or their rights (403)."""

    exit_code = 2
    default_hint = "log in with `hf auth login` or set HF_TOKEN (a token with write access to push)"


class HubRequestError(HubError, BadInputError):
    """The Hub refused a request with another 4xx answer (a conflict, a bad request, ...).

    Attributes:
        status: the HTTP status the Hub answered.
        server_message: what the Hub said about it, when it said something.
    """

    exit_code = 2
    default_hint = (
        "the Hub refused the request, so nothing changed there; if its reason points at conceptlib, "
        "rerun with CONCEPTLIB_DEBUG=1 and report it"
    )

    def __init__(
        self, message: str, *, status: int, server_message: str | None = None, repo_id: str | None = None, hint: str | None = None
    ) -> None:
        self.status = status
        self.server_message = server_message
        super().__init__(message, repo_id=repo_id, hint=hint)


class HubIntegrityError(HubError, BadInputError):
    """Downloaded bytes do not match the hash the Hub lists for them; nothing was imported."""

    exit_code = 2
    default_hint = "pull again later; if it persists, the repository or a proxy serves damaged files"


class HubUnavailableError(HubError):
    """The Hub kept failing (5xx, 429 rate limit, dropped connections) after retries.

    The hint says what the failure left behind and what to do, which depends on the operation
    (a pull imports nothing half-way; a push may or may not have committed), so
    :mod:`conceptlib.hub` passes one; the default is only the common part.
    """

    default_hint = "check your connection and try again later"


# --- The concept library (conceptlib.library, conceptlib.registry) -------------------------------


class ConceptNotFoundError(BadInputError, KeyError):
    """No concept has this name; ``suggestions`` lists the closest names."""

    def __init__(self, name: str, *, suggestions: list[str] | None = None) -> None:
        self.name = name
        self.suggestions = list(suggestions or [])
        if self.suggestions:
            hint = "did you mean " + ", ".join(self.suggestions) + "?"
        else:
            hint = "run `conceptlib list` to see the concepts in the library"
        super().__init__(f"no concept named {name!r} in the library", hint=hint)


class AmbiguousConceptError(BadInputError, LookupError):
    """A token that several concepts use (one per base-model family), given where one is meant."""

    def __init__(self, token: str, owners: list[str]) -> None:
        self.token = token
        self.owners = list(owners)
        super().__init__(
            f"{token!r} is the token of {len(owners)} concepts: {', '.join(owners)}",
            hint="name the one you mean",
        )


class ConceptExistsError(BadInputError):
    """A concept with this name already exists."""

    def __init__(self, name: str, *, hint: str | None = None) -> None:
        self.name = name
        super().__init__(
            f"a concept named {name!r} already exists",
            hint=hint or "choose another name with --name, or remove the existing one first",
        )


class TokenInUseError(BadInputError):
    """The token is already used by another concept of the same base-model family."""

    def __init__(self, token: str, *, family: str, used_by: str, path: str | None = None) -> None:
        self.token = token
        self.family = family
        self.used_by = used_by
        super().__init__(
            f"the token {token!r} is already used by {used_by!r} ({family})",
            path=path,
            hint="pass --token with another word for this concept",
        )


class DuplicateConceptError(BadInputError):
    """The same vectors (same content hash) are already in the library under another name."""

    def __init__(self, existing: str, content_hash: str, *, path: str | None = None) -> None:
        self.existing = existing
        self.content_hash = content_hash
        super().__init__(
            f"the same vectors are already in the library as {existing!r}",
            path=path,
            hint=f"see `conceptlib show {existing}`",
        )


class InvalidNameError(BadInputError):
    """A name, token or tag that cannot be stored (empty, control characters, too long)."""


# --- Files from the wild (conceptlib._inputs, conceptlib._images) ---------------------------------


class UnsafeLinkError(BadInputError):
    """A symbolic link leads out of the folder being read, or nowhere; it was not followed."""


class NotRegularFileError(BadInputError):
    """A FIFO, socket or device where a file was expected; it was not opened for reading."""


class TextFileError(BadInputError):
    """A small text file (``token_identifier.txt``, ``type_of_concept.txt``) that cannot be used."""


class ImageFileError(BadInputError):
    """A file named as an image that is not one, or is too large to take in."""


class InputReadError(EmbeddingFileError):
    """Reading an input failed in a way no check foresaw; the other inputs are still read."""

    default_hint = "the file is probably damaged; rerun with CONCEPTLIB_DEBUG=1 for the traceback and report it"


class LibraryCorruptError(ConceptlibError):
    """The library's files or index are damaged in a way the operation cannot work around."""

    default_hint = "run `conceptlib verify` to see the damage and `conceptlib verify --repair` to fix what can be fixed"


class IndexDamagedError(LibraryCorruptError):
    """The index file is not a readable SQLite database (truncated, overwritten, malformed pages).

    The index is derived data, so this is never a loss: ``reindex`` moves the damaged file aside
    and rebuilds the index from the concept folders.
    """

    exit_code = 2
    default_hint = "run `conceptlib reindex`: it moves the damaged index aside and rebuilds it from the concept folders"


class ConceptDamagedError(LibraryCorruptError):
    """A concept's stored embedding no longer holds the vectors its manifest records."""

    exit_code = 2
    default_hint = "run `conceptlib verify --repair`: it rebuilds the embedding from the concept's original file"


class LibraryBusyError(ConceptlibError):
    """Another process held the library's lock for too long."""

    default_hint = "another conceptlib command is running on this library (reindex, verify --repair); try again when it ends"


# --- Base models (conceptlib.models) -------------------------------------------------------------


class ModelError(BadInputError):
    """A base model cannot be read, recognised or found."""


class UnknownModelError(ModelError):
    """The folder or file is not a Stable Diffusion 1.x/2.x/XL model conceptlib recognises."""

    default_hint = (
        "pass a diffusers folder (with model_index.json), a .safetensors/.ckpt checkpoint, "
        "or a family name: sd1, sd2, sd2-v, sdxl"
    )


class ModelConfigError(ModelError):
    """A single-file checkpoint's diffusers configs are missing, unreachable or of another model."""

    default_hint = (
        "pass --model-config a diffusers folder or Hub repo of the same model (its JSON configs and "
        "tokenizer are enough), or run once online so they are cached"
    )


class ModelWeightsMissingError(ModelError):
    """A diffusers folder with configs but no weight files for a component that must load.

    Reading a model (validation, ``models inspect``) needs only its configs and tokenizer;
    rendering, previews and training load the weights, and this says which are missing
    before anything is loaded or written. ``components`` lists them (``unet``, ``vae``, ...).
    """

    default_hint = (
        "download the weight files into it (e.g. unet/diffusion_pytorch_model.safetensors, "
        "text_encoder/model.safetensors), pass a .safetensors checkpoint, or try with a tiny "
        "model made by `conceptlib models create-tiny DIR`"
    )

    def __init__(self, message: str, *, path: str | os.PathLike[str], components: list[str], hint: str | None = None) -> None:
        self.components = list(components)
        super().__init__(message, path=path, hint=hint)


class ModelNotFoundError(ModelError):
    """No file, folder, registered model or family has this name; ``name`` holds what was asked."""

    def __init__(self, name: str, *, known: list[str] | None = None, hint: str | None = None) -> None:
        self.name = name
        self.known = list(known or [])
        if hint is None:
            registered = f"registered: {', '.join(self.known)}; " if self.known else ""
            hint = (
                f"{registered}register one with `conceptlib models add PATH`, "
                "or pass a path or a family name (sd1, sd2, sd2-v, sdxl)"
            )
        super().__init__(f"no model named {name!r}: not a path, a registered model or a family", hint=hint)


# --- Training (conceptlib.train) -------------------------------------------------------------------


class TrainingImageError(BadInputError):
    """A training image is missing, unreadable or unusable; ``path`` names the file or folder."""


class TrainingDivergedError(BadInputError):
    """The loss became NaN or Inf; training stopped and the last good checkpoint was kept.

    Attributes:
        step: the optimizer step at which the loss stopped being finite.
        checkpoint: the last good checkpoint file, or None when none was written yet.
    """

    def __init__(self, message: str, *, step: int, checkpoint: str | None = None, hint: str | None = None) -> None:
        self.step = step
        self.checkpoint = checkpoint
        super().__init__(message, hint=hint)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`conceptlib.train.train`: still a ``KeyboardInterrupt`` (so broad
    ``except Exception`` handlers do not swallow it), telling where the run can resume.

    Attributes:
        step: the optimizer steps done when it stopped.
        checkpoint: the run's checkpoint file, or None when none was written yet.
        checkpoint_step: the step that checkpoint holds.
    """

    def __init__(self, step: int, checkpoint: str | None, checkpoint_step: int | None) -> None:
        self.step, self.checkpoint, self.checkpoint_step = step, checkpoint, checkpoint_step
        super().__init__(f"training interrupted at step {step}")


class InterruptedRunError(ConceptlibError):
    """A run stopped by the user, reported as one line with how to continue (exit code 130)."""

    exit_code = 130


class TrainingTokenError(BadInputError):
    """The token to train collides with the model's vocabulary (found before any step runs)."""

    default_hint = "pass --token with a made-up word in angle brackets, e.g. <my-cat>"


# --- Rendering (conceptlib.render, conceptlib.preview) -------------------------------------------


class ConceptDoesNotFitError(BadInputError):
    """A concept named in a prompt does not fit the model; ``findings`` holds validation's results.

    Args:
        name: the concept's name.
        message: why, in validation's words ("embedding width 1024 fits SD 2.x, ...").
        findings: every validation finding for the concept, when validation ran.
        hint: the next step, when the message does not already say it.
    """

    def __init__(self, name: str, message: str, *, findings: list[object] | None = None, hint: str | None = None) -> None:
        self.name = name
        self.findings = list(findings or [])
        super().__init__(f"concept {name!r} does not fit the model: {message}", hint=hint)
