"""The concept library: a folder of concepts plus a SQLite index of them.

>>> from conceptlib.library import Library
>>> lib = Library.open()                              # $CONCEPTLIB_HOME or the user data dir
>>> report = lib.add(["EasyNegative.safetensors"], type="negative", tags=["quality"])
>>> [c.name for c in report.added]
['easynegative']
>>> lib.search("negative")[0].token
'EasyNegative'

Layout of ``<home>``::

    concepts/<name>/concept.json           the manifest: the source of truth
    concepts/<name>/embedding.safetensors  the vectors in canonical form ("conceptlib" format)
    concepts/<name>/hypernetwork.safetensors  a hypernetwork item's canonical form, instead
    concepts/<name>/original/...           the imported files, byte for byte
    concepts/<name>/images/...             sample or training images
    index.sqlite                           derived from the manifests; `reindex` rebuilds it
    .staging/                              concepts being written (empty when idle)
    .lock                                  writers share it; reindex and verify take it alone

Crash safety. A concept is written completely into ``.staging/``, fsynced, then moved into
``concepts/`` with one ``rename`` (atomic), then indexed in one transaction. Whatever moment a
crash hits, the library holds the whole concept or none of it, and ``reindex`` (which deletes
staging leftovers and rebuilds the index from the manifests) brings index and files back in
step. Changes to an existing concept write its manifest atomically, and replacing a concept's
files swaps whole folders, with a marker that lets ``reindex`` finish an interrupted swap.

Kinds. An item is an embedding (a concept proper) or a hypernetwork (``Concept.kind``): both
are listed, searched, tagged, renamed, removed, verified and re-indexed alike; the readers of
vectors (:meth:`Library.embedding`, signatures, merge) take embeddings only and name a
hypernetwork for what it is, and :meth:`Library.hypernetwork` reads one.

Where things live. This module holds :class:`Library` and the domain: what goes into a concept
(add, update, rename, tag, remove, export, verify), names and tokens, the index rows, the lock.
The store primitives that move folders (:class:`~conceptlib.library._store.Publish` a new
concept, :class:`~conceptlib.library._store.Swap` a new version in,
:func:`~conceptlib.library._store.retire` one) live in :mod:`conceptlib.library._store`, each
beside the recovery of what it leaves when killed, so a new operation that changes files
reuses one of them instead of repeating the rename-and-undo; ``Library`` delegates to them.

Concurrency. Several processes may add at once: each check that must be unique (name, token
within a family, content hash) is made inside the ``BEGIN IMMEDIATE`` transaction that also
moves the folder into place, so two writers can never both pass it.

Files from the wild. Every input is first copied into ``.staging`` without following a link
out of the folder it is read from (:mod:`conceptlib._inputs` states the rule), its images are
checked as what they claim (:mod:`conceptlib._images`), and only that copy is decoded, hashed
and kept; a concept folder therefore only ever holds regular files. In a batch, each input's
problem is that input's (reported as rejected or skipped, and the others go on); a problem of
the library or the machine (a damaged index, a full disk) stops the batch.
"""

from __future__ import annotations

import builtins
import contextlib
import difflib
import hashlib
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conceptlib import config
from conceptlib._atomic import HAS_FLOCK, atomic_write_bytes, file_lock, fsync_dir
from conceptlib._images import IMAGE_SUFFIXES
from conceptlib._inputs import (
    Folder,
    concerns_the_library,
    copy_images,
    naming,
    refusal,
)
from conceptlib._terminal import invisible_characters, printable
from conceptlib.concept import (
    CONCEPT_TYPES,
    EMBEDDING_NAME,
    HYPERNETWORK_NAME,
    IMAGES_DIR,
    KINDS,
    MANIFEST_NAME,
    ORIGINAL_DIR,
    Concept,
    ConceptRow,
    ConceptSummary,
    FileRecord,
    now,
)
from conceptlib.errors import (
    AmbiguousConceptError,
    BadInputError,
    ConceptDamagedError,
    ConceptExistsError,
    ConceptlibError,
    ConceptNotFoundError,
    DuplicateConceptError,
    EmbeddingStructureError,
    FormatCapabilityError,
    IndexDamagedError,
    InvalidNameError,
    IsHypernetworkError,
    LibraryBusyError,
    LibraryCorruptError,
    NoEmbeddingInImageError,
    TokenInUseError,
    UsageError,
)
from conceptlib.families import FAMILIES, family_key_of
from conceptlib.layout import SKIP_PLAIN_IMAGE, SKIP_THUMBNAIL  # noqa: F401 - SKIP_THUMBNAIL: importable here as before layout existed
from conceptlib.library import _store
from conceptlib.library._store import CONCEPTS_DIR, REPLACES_MARKER, STAGING_DIR
from conceptlib.registry.store import IndexReader, SqliteReader, default_url, sqlite_path
from conceptlib.slug import MAX_STEM_BYTES, is_slug, numbered, portable_stem, safe_stem, slugify

if TYPE_CHECKING:
    from conceptlib._snapshots import Snapshot
    from conceptlib.embedding import Embedding
    from conceptlib.library._similar import _Table
    from conceptlib.registry.store import Registry, Writer


__all__ = [
    "AddReport",
    "NearDuplicate",
    "Duplicate",
    "ExportedConcept",
    "Library",
    "Problem",
    "ReindexReport",
    "Rejected",
    "VerifyReport",
]

LOCK_FILE = ".lock"
#: How long a writer waits for reindex/verify (and they for writers) before giving up.
LOCK_TIMEOUT_S = 300.0
MAX_TOKEN_CHARS = 1000
MAX_TAG_CHARS = 64
#: Formats whose loaders (AUTOMATIC1111, ComfyUI) take the prompt word from the file name.
STEM_IS_PROMPT_WORD = {"a1111", "png", "sdxl", "sdxl-pt", "emb-params", "emb-params-pt"}
#: ``--for`` targets: format for single-encoder and for SDXL concepts. Every target reads these
#: safetensors layouts (no pickle) at every width and vector count, SDXL included: AUTOMATIC1111
#: (``emb_params``, ``clip_l``/``clip_g`` since 1.6), ComfyUI (its SDXL tokenizer picks
#: ``clip_l``/``clip_g`` by key), InvokeAI (``emb_params``; ``clip_g``/``clip_l`` in 3.x and
#: later; a diffusers ``{token: [n, w]}`` file only with one 1-D vector, so never that). All
#: three take the prompt word from the file stem.
UI_FORMATS: dict[str, tuple[str, str]] = {
    "a1111": ("emb-params", "sdxl"),
    "comfyui": ("emb-params", "sdxl"),
    "invokeai": ("emb-params", "sdxl"),
}
#: How a prompt names an exported file's stem in each target (``{}`` is the stem).
UI_PROMPTS: dict[str, str] = {"a1111": "{}", "comfyui": "embedding:{}", "invokeai": "<{}>"}
# What a prompt word may not hold, per target, on top of what no file name may hold
# (:func:`conceptlib.slug.portable_stem`). AUTOMATIC1111 matches the stem by CLIP tokens
# (case-insensitive), but ( ) [ ] { } : \ | are its prompt syntax (emphasis, weights, escapes,
# alternation, wildcards). ComfyUI cuts `embedding:NAME` at the first space, reads ( ) as
# weights and strips commas around NAME. InvokeAI finds triggers with <[a-zA-Z0-9., _-]+>.
# None of them is helped by a space.
_NOT_IN_WORD = re.compile(r"[\s()\[\]{}<>:\"/\\|?*,]")
_NOT_IN_INVOKEAI_WORD = re.compile(r"[^A-Za-z0-9._-]")
_DASH_RUNS = re.compile(r"-{2,}")


def ui_word(text: str, target: str, *, max_bytes: int = MAX_STEM_BYTES) -> str:
    """The file stem (and prompt word) for ``text`` in a ``--for`` target, or ``""``.

    The stem is the word a user types, so it must survive the target's prompt parser and be a
    portable file name on Windows, macOS and Linux: :func:`conceptlib.slug.portable_stem`
    (NFC, no invisible characters, no leading or trailing dot, dash or space, not a Windows
    device name, at most ``max_bytes`` UTF-8 bytes; the suffix comes on top: < 255), refusing
    also what the target's prompt parser reads as syntax (:data:`_NOT_IN_WORD`; InvokeAI: ASCII
    letters, digits, ``.``, ``_``, ``-`` only). Runs of refused characters become one ``-``.

    Args:
        text: the concept's prompt word (its token without ``<>``).
        target: a key of :data:`UI_FORMATS`.
        max_bytes: the longest stem.

    Example:
        >>> ui_word("cat toy (v2)", "comfyui")
        'cat-toy-v2'
        >>> ui_word("铃兰", "invokeai")
        ''
    """
    word = portable_stem(text, refuse=_NOT_IN_INVOKEAI_WORD if target == "invokeai" else _NOT_IN_WORD, max_bytes=max_bytes)
    # A typed "-(" next to a refused character would read as "--": one dash per break.
    return _DASH_RUNS.sub("-", word)


def concept_word(concept: Concept, target: str) -> str:
    """The word a concept goes by in a ``--for`` target (and its exported file's stem): its
    prompt word made :func:`ui_word`, else its name's, else ``concept-`` and its hash."""
    return ui_word(concept.prompt_word, target) or ui_word(concept.name, target) or f"concept-{concept.content_hash[:12]}"


def network_word(concept: Concept) -> str:
    """A hypernetwork item's word as a file stem (``WORD.pt``, which AUTOMATIC1111 and ComfyUI
    call it by): its token made a stem every platform stores, else its name."""
    return portable_stem(concept.token) or concept.name


def check_network_word(word: str) -> str:
    """``word`` if a prompt can call a hypernetwork by it (``<hypernet:WORD:1>``), else
    :class:`InvalidNameError`."""
    if word.startswith("<") or ":" in word:
        raise InvalidNameError(f"{word!r} cannot be called as <hypernet:{word}:1>", hint="give a plain word, e.g. --token ink")
    return word


Progress = Callable[[int, int, Path], None]


# --- reports -----------------------------------------------------------------------------------


@dataclass
class Duplicate:
    """An input whose vectors are already in the library.

    Attributes:
        path: the input file or folder.
        existing: the name of the concept that holds the same vectors.
        content_hash: the shared content hash.
    """

    path: str
    existing: str
    content_hash: str
    error: DuplicateConceptError | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "existing": self.existing, "content_hash": self.content_hash}


@dataclass
class NearDuplicate:
    """An added concept whose vectors are close to another concept's, not the same.

    Attributes:
        name: the concept just added.
        existing: the concept it is close to.
        score: their set similarity (:mod:`conceptlib.similarity`; 1 is the same directions).
    """

    name: str
    existing: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "existing": self.existing, "score": round(self.score, 4)}


@dataclass
class Rejected:
    """An input that was not added, and why (one line, with the next step when there is one)."""

    path: str
    reason: str
    error: BaseException | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "reason": self.reason}


@dataclass
class AddReport:
    """What :meth:`Library.add` did with each input.

    Attributes:
        added: the new concepts.
        duplicates: inputs whose vectors were already in the library (not added again).
        rejected: inputs that could not be added, with reasons.
        skipped: images met while searching folders that hold no embedding (AUTOMATIC1111's
            ``*.preview.png`` thumbnails, sample pictures), left alone as AUTOMATIC1111 leaves
            them; not counted as inputs.
        near_duplicates: added concepts close to one already there (a re-upload saved in
            another dtype, another training step), by :data:`conceptlib.similarity.NEAR_DUPLICATE`.
    """

    added: list[Concept] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    skipped: list[Rejected] = field(default_factory=list)
    near_duplicates: list[NearDuplicate] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Number of inputs considered."""
        return len(self.added) + len(self.duplicates) + len(self.rejected)

    def one(self) -> Concept:
        """The single concept added, for callers that add one input.

        Raises:
            DuplicateConceptError: the input was a duplicate.
            BadInputError: the input was rejected (the original error: a subclass naming the
                problem, or ``FileNotFoundError`` for a missing path).
        """
        if self.rejected:
            error = self.rejected[0].error
            if error is not None:
                raise error
            raise BadInputError(self.rejected[0].reason, path=self.rejected[0].path)
        if self.duplicates:
            dup = self.duplicates[0]
            raise dup.error or DuplicateConceptError(dup.existing, dup.content_hash, path=dup.path)
        if len(self.added) != 1:
            raise UsageError(f"{len(self.added)} concepts were added, not one")
        return self.added[0]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``conceptlib add --json``)."""
        return {
            "added": [_summary_dict(c) for c in self.added],
            "duplicates": [d.to_dict() for d in self.duplicates],
            "rejected": [r.to_dict() for r in self.rejected],
            "skipped": [r.to_dict() for r in self.skipped],
            "near_duplicates": [n.to_dict() for n in self.near_duplicates],
        }


@dataclass
class Problem:
    """Something :meth:`Library.verify` found wrong.

    Attributes:
        kind: ``staging``, ``manifest``, ``name``, ``embedding``, ``original``, ``image``,
            ``unindexed``, ``missing``, ``stale``, ``search``, ``token``, ``duplicate``, ``stray``,
            ``link``.
        where: the concept name or the path concerned.
        message: one line.
        repairable: whether ``verify --repair`` fixes it.
    """

    kind: str
    where: str
    message: str
    repairable: bool = False

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "where": self.where, "message": self.message, "repairable": self.repairable}


@dataclass
class ReindexReport:
    """What :meth:`Library.reindex` did.

    Attributes:
        indexed: concepts now in the index.
        cleaned: staging leftovers and stray files deleted, interrupted changes finished.
        problems: concept folders that could not be indexed, and conflicts between manifests.
    """

    indexed: int
    cleaned: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"indexed": self.indexed, "cleaned": list(self.cleaned), "problems": [p.to_dict() for p in self.problems]}


@dataclass
class VerifyReport:
    """What :meth:`Library.verify` found (after repairing, when asked to).

    Attributes:
        checked: concept folders checked.
        problems: what is still wrong; empty means the library is clean.
        repaired: what ``repair=True`` fixed.
    """

    checked: int
    problems: list[Problem] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "problems": [p.to_dict() for p in self.problems],
            "repaired": list(self.repaired),
        }


@dataclass
class ExportedConcept:
    """One concept written by :meth:`Library.export`.

    Attributes:
        name: the concept.
        format: the format written.
        files: the files written.
        prompt_word: the word that names it there (the token for diffusers formats, the file
            stem for AUTOMATIC1111, ComfyUI and InvokeAI).
        prompt: what to type in a prompt, in the target's own syntax (``cat-toy``,
            ``embedding:cat-toy``, ``<cat-toy>``).
        note: why ``prompt_word`` is not the concept's own word (characters the target cannot
            read, or a word another concept of the export already has), else None.
    """

    name: str
    format: str
    files: list[Path]
    prompt_word: str
    prompt: str = ""
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "format": self.format, "files": [str(p) for p in self.files],
            "prompt_word": self.prompt_word, "prompt": self.prompt or self.prompt_word, "note": self.note,
        }  # fmt: skip


def _summary_dict(concept: Concept) -> dict[str, Any]:
    return {
        "name": concept.name,
        "token": concept.token,
        "type": concept.type,
        "family": concept.family,
        "vectors": concept.vectors,
        "content_hash": concept.content_hash,
        "path": str(concept.path) if concept.path else None,
    }


# --- validation helpers ------------------------------------------------------------------------


def check_token(token: str, *, path: str | os.PathLike[str] | None = None) -> str:
    """Return ``token`` stripped, or raise :class:`InvalidNameError` if it cannot be stored.

    Tokens are stored as text only, never used as paths, so any visible text is accepted.
    Invisible characters are not (see :func:`conceptlib._terminal.invisible_characters`):
    controls and escape sequences (no prompt can contain them, and they rewrite a terminal),
    bidi overrides, zero-width characters and byte order marks (a token that looks like
    ``<cat>`` but is another string no one could type). Concepts that already hold such a
    token stay readable; only new tokens are checked.

    Args:
        token: the token.
        path: the file it was read from, named in the error (None for ``--token``).
    """
    value = token.strip()
    if not value:
        raise InvalidNameError("the token is empty", path=path, hint="pass --token WORD")
    hidden = invisible_characters(value)
    if hidden:
        raise InvalidNameError(
            f"the token '{printable(value)}' holds control or invisible characters ({', '.join(hidden)}) that no one can type",
            path=path,
            hint="pass --token with printable text",
        )
    if len(value) > MAX_TOKEN_CHARS:
        raise InvalidNameError(f"the token is {len(value)} characters long (at most {MAX_TOKEN_CHARS})", path=path, hint="pass a shorter --token")
    return value


def check_tag(tag: str) -> str:
    """Normalise a tag (stripped, lowercase) or raise :class:`InvalidNameError`.

    Like tokens, tags may hold any visible text but no control or invisible characters.
    """
    value = tag.strip().lower()
    if not value or invisible_characters(value) or len(value) > MAX_TAG_CHARS:
        raise InvalidNameError(f"invalid tag '{printable(tag)}'", hint=f"tags are 1 to {MAX_TAG_CHARS} printable characters")
    return value


def check_type(concept_type: str) -> str:
    """Normalise a concept type or raise :class:`UsageError` naming the allowed ones."""
    value = concept_type.strip().lower()
    if value not in CONCEPT_TYPES:
        raise UsageError(f"unknown concept type {concept_type!r}", hint=f"use one of: {', '.join(CONCEPT_TYPES)}")
    return value


def family_key(base: str) -> str:
    """Normalise a base-model family (``sd15``, ``SD 1.x``, ``xl``...) to ``sd1``/``sd2``/``sdxl``."""
    key = family_key_of(base)
    if key is None:
        raise UsageError(f"unknown base family {base!r}", hint="use sd1, sd2 or sdxl")
    return key


def check_name(name: str) -> str:
    """The slug for a user-given name, or :class:`InvalidNameError` when nothing usable is left."""
    slug = slugify(name)
    if not slug:
        raise InvalidNameError(f"the name {name!r} has no letters or digits", hint="use a name with letters or digits")
    return slug


def _strip_brackets(token: str) -> str:
    token = token.strip()
    if len(token) > 2 and token[0] == "<" and token[-1] == ">":
        return token[1:-1]
    return token


# --- file helpers ------------------------------------------------------------------------------


def _copy(src: Path, dst: Path) -> FileRecord:
    """Copy ``src`` to a new file ``dst``, fsynced, hashing the bytes actually written."""
    digest = hashlib.sha256()
    size = 0
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fin, naming(dst), open(dst, "xb") as fout:
        for block in iter(lambda: fin.read(1 << 20), b""):
            digest.update(block)
            fout.write(block)
            size += len(block)
        fout.flush()
        os.fsync(fout.fileno())
    return FileRecord("", digest.hexdigest(), size)


def _copy_own(folder: Path, rel: str, dst: Path) -> FileRecord:
    """Copy a concept's own file ``rel`` (a manifest path) to ``dst``, never through a link.

    The library writes only regular files; a link found there was put in by hand, and
    following it could carry a file from anywhere into a new version (and then to the Hub).
    """
    with Folder(folder, links=False) as own:
        data = own.read_bytes(rel, limit=1 << 30)
    return _store.write_new(dst, data)


def _vector_fields(emb: Embedding) -> dict[str, Any]:
    """The Concept fields that describe the vectors themselves (shared by add and update)."""
    return {
        "encoders": dict(emb.widths),
        "vectors": emb.num_vectors,
        "dtype": emb.dtype,
        "format": emb.source_format,
        "checkpoint_hash": emb.checkpoint_hash,
        "checkpoint_name": emb.checkpoint_name,
        "steps": emb.step,
    }


def _sha256(path: Path) -> str:
    from conceptlib.hashing import sha256_file

    return sha256_file(path)


def _unique_name(stem: str, suffix: str, taken: set[str]) -> str:
    stem = safe_stem(stem) or "file"
    candidate = f"{stem}{suffix}"
    n = 2
    while candidate.lower() in taken:
        candidate = f"{stem}-{n}{suffix}"
        n += 1
    taken.add(candidate.lower())
    return candidate


@dataclass(frozen=True)
class _AddOptions:
    """The per-call options of :meth:`Library.add`, validated once for every input."""

    name: str | None
    token: str | None
    type: str | None
    images: list[tuple[Path, Path | None]]
    tags: list[str]
    license: str | None
    description: str | None
    source: dict[str, Any] | None
    metadata: dict[str, str]


# --- the library -------------------------------------------------------------------------------


def check_kind(kind: str) -> str:
    """``embedding`` or ``hypernetwork`` (any case), else :class:`UsageError`."""
    value = kind.strip().lower()
    if value not in KINDS:
        raise UsageError(f"unknown kind {kind!r}", hint=f"use one of: {', '.join(KINDS)}")
    return value


def _list_filters(type: str | None, base: str | None, tag: str | None, kind: str | None = None) -> dict[str, str | None]:
    """``list``'s filters as the index takes them: checked, and the base as a family key."""
    return {
        "type": check_type(type) if type is not None else None,
        "family": family_key(base) if base is not None else None,
        "tag": check_tag(tag) if tag is not None else None,
        "kind": check_kind(kind) if kind is not None else None,
    }


_log = logging.getLogger("conceptlib")


class Library:
    """A concept library on disk: ``concepts/<name>/`` folders plus their index.

    Use :meth:`open`. Queries (:meth:`list`, :meth:`search`, :meth:`show`) read the index
    through the standard library's ``sqlite3`` and never import sqlmodel or torch; writes open
    the SQLModel registry on first use.

    Args:
        home: the library folder (created if missing).
        database_url: the index URL; default ``CONCEPTLIB_DATABASE_URL``, else
            ``sqlite:///<home>/index.sqlite``.
    """

    def __init__(self, home: str | os.PathLike[str], *, database_url: str | None = None) -> None:
        self.home = Path(home)
        self.url = database_url or default_url(self.home)
        self.concepts_dir = self.home / CONCEPTS_DIR
        self.staging_dir = self.home / STAGING_DIR
        self.concepts_dir.mkdir(parents=True, exist_ok=True)
        self.staging_dir.mkdir(exist_ok=True)
        self._registry: Registry | None = None
        self._reader: IndexReader | None = None
        self._index_checked = False
        # The signature table as last read (see _similar._stored).
        self._signatures: _Table | None = None

    @classmethod
    def open(cls, home: str | os.PathLike[str] | None = None, *, database_url: str | None = None) -> Library:
        """Open the library at ``home`` (``--home``), else ``CONCEPTLIB_HOME``, else the user data folder.

        Args:
            home: the library folder; created with its index when missing.
            database_url: override the index URL (default ``CONCEPTLIB_DATABASE_URL``).

        Returns:
            The library.

        Example:
            >>> lib = Library.open("~/concepts")
        """
        return cls(config.home(home), database_url=database_url)

    def close(self) -> None:
        """Release database connections."""
        if isinstance(self._reader, SqliteReader):
            self._reader.close()
        if self._registry is not None:
            self._registry.close()
        self._reader = self._registry = None

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Library({str(self.home)!r})"

    # --- plumbing -----------------------------------------------------------------------------
    @property
    def registry(self) -> Registry:
        """The SQLModel side of the index (opened, and migrated, on first use)."""
        if self._registry is None:
            from conceptlib.registry.store import Registry

            self._ensure_index()
            self._registry = Registry(self.url)
        return self._registry

    @property
    def index(self) -> IndexReader:
        """Read access to the index: plain ``sqlite3`` when possible (fast start), else the registry."""
        if self._reader is None:
            self._ensure_index()
            path = sqlite_path(self.url)
            reader = SqliteReader.open(path) if path is not None else None
            if reader is None:
                # Missing or not yet migrated: the registry creates and migrates it.
                self.registry  # noqa: B018
                reader = SqliteReader.open(path) if path is not None else None
            self._reader = reader or self.registry
        return self._reader

    def folder(self, name: str) -> Path:
        """The folder of concept ``name``; refuses anything that is not a valid slug.

        Every path the library builds from a name goes through here, so a name can never point
        outside ``concepts/``.
        """
        if not is_slug(name):
            raise InvalidNameError(f"{name!r} is not a valid concept name")
        path = self.concepts_dir / name
        if path.parent != self.concepts_dir:  # pragma: no cover - is_slug already excludes it
            raise InvalidNameError(f"{name!r} is not a valid concept name")
        return path

    def _index_missing(self) -> bool:
        """Whether the index file is gone while concept folders are there (deleted by hand)."""
        path = sqlite_path(self.url)
        if path is None or path.exists():
            return False
        return any((folder / MANIFEST_NAME).is_file() for folder in self.concepts_dir.iterdir() if folder.is_dir())

    def _ensure_index(self) -> None:
        """Rebuild a missing index from the concept folders before its first use.

        The index is derived data and the README says it can be deleted; opening a fresh empty
        one instead would show an empty library and let ``add`` duplicate every concept. Runs
        once per :class:`Library`, before any lock is taken (so the rebuild can take it alone).
        """
        if self._index_checked:
            return
        self._index_checked = True
        if not self._index_missing():
            self._finish_interrupted()
            return
        with self._lock(exclusive=True):
            if self._index_missing():  # another process may have rebuilt it meanwhile
                report = self._reindex_locked()
                _log.warning("%s: the index was missing; rebuilt it from %d concept folder%s", self.home, report.indexed, "" if report.indexed == 1 else "s")

    def _swap_leftovers(self) -> bool:
        """Whether ``.staging`` holds what an update or remove leaves when killed mid-way."""
        return _store.interrupted_swaps(self.staging_dir)

    def _finish_interrupted(self) -> None:
        """Finish what a killed writer left in ``.staging``, when no writer is at work now.

        A process killed between swapping a concept's folder and committing its index row
        leaves the new files with the old row: ``list`` and ``show`` disagree, and a retried
        pull finds nothing to do. Writers stage only under the shared lock, so when the lock
        can be taken alone at once, everything staged is a leftover: the index is rebuilt from
        the manifests, as ``reindex`` would. Otherwise (a writer is busy) nothing waits. Other
        leftovers (an add's half-copied files) leave the index right, and wait for ``verify``.
        """
        lock = self.home / LOCK_FILE
        if not HAS_FLOCK or not self._swap_leftovers() or not os.access(lock if lock.exists() else self.home, os.W_OK):
            return  # (a library this user cannot write waits for `conceptlib reindex` by its owner)
        with self._lock(exclusive=True, wait=False) as held:
            if held and self._swap_leftovers():
                report = self._reindex_locked()
                _log.warning("%s: finished an interrupted operation (%s)", self.home, "; ".join(report.cleaned) or "re-indexed")

    def _move_damaged_index(self) -> Path:
        """Move a damaged index file (and its WAL) aside, keeping it for inspection."""
        path = sqlite_path(self.url)
        if path is None:  # pragma: no cover - only file URLs can be damaged on disk here
            raise LibraryCorruptError("the index is damaged and is not a file conceptlib can move aside", path=self.url)
        self.close()
        aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}")
        for suffix in ("", "-wal", "-shm"):
            source = path.with_name(path.name + suffix)
            if source.exists():
                os.replace(source, aside.with_name(aside.name + suffix))
        return aside

    @contextlib.contextmanager
    def _lock(self, *, exclusive: bool, wait: bool = True) -> Iterator[bool]:
        """Writers share the library lock; reindex and verify take it alone.

        So ``reindex`` never mistakes a concept being written for a crash leftover. On Windows
        (no shared ``flock``) this is a no-op: run reindex/verify when no writer is running.
        Yields whether the lock is held: always, unless ``wait`` is False and it is taken.
        """
        self._ensure_index()
        with file_lock(self.home / LOCK_FILE, exclusive=exclusive, wait_s=LOCK_TIMEOUT_S if wait else 0) as held:
            if not held and wait:
                raise LibraryBusyError(f"the library {self.home} stayed locked for {LOCK_TIMEOUT_S:.0f} s")
            yield held

    def _stage(self, prefix: str, *, create: bool = True) -> Path:
        """A new unique path in ``.staging/`` (created unless ``create`` is False)."""
        return _store.stage(self.staging_dir, prefix, create=create)

    def _read_manifest(self, folder: Path) -> tuple[Concept, str]:
        try:
            text = (folder / MANIFEST_NAME).read_text(encoding="utf-8")
            concept = Concept.from_json(text)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise LibraryCorruptError(f"unreadable manifest: {exc}", path=folder / MANIFEST_NAME) from exc
        return concept.attach(folder), text

    def _write_manifest(self, folder: Path, concept: Concept) -> str:
        text = concept.to_json()
        atomic_write_bytes(folder / MANIFEST_NAME, text.encode("utf-8"))
        return text

    def _suggest(self, name: str) -> builtins.list[str]:
        return difflib.get_close_matches(name, self.index.names(), n=3, cutoff=0.6)

    def resolve(self, name: str) -> str:
        """The name of the concept ``name`` refers to: its name, its token, or its slug.

        In that order: ``<kitty>`` is the concept whose token it is, even when another one is
        named ``kitty`` (remove and rename act on what this returns).

        Raises:
            AmbiguousConceptError: ``name`` is no concept's name, and the token of several
                (one token may serve a concept per base-model family).
            ConceptNotFoundError: nothing matches; the error lists the closest names.
        """
        index = self.index
        if index.has(name):
            return name
        by_token = index.by_token(name.strip())
        if len(by_token) == 1:
            return by_token[0]
        if by_token:
            owners = [f"{n} ({self.show(n).family_label})" for n in by_token]
            raise AmbiguousConceptError(name.strip(), owners)
        slug = slugify(name)
        if slug and slug != name and index.has(slug):
            return slug
        raise ConceptNotFoundError(name, suggestions=self._suggest(slug or name))

    # --- queries ------------------------------------------------------------------------------
    def list(
        self,
        *,
        type: str | None = None,
        base: str | None = None,
        tag: str | None = None,
        compatible_with: str | None = None,
        kind: str | None = None,
    ) -> builtins.list[ConceptSummary]:
        """Concepts matching every filter given, sorted by name.

        Args:
            type: ``object``, ``style`` or ``negative``.
            base: base-model family: ``sd1``, ``sd2``, ``sdxl`` (``sd15``, ``xl``... accepted).
            tag: a tag the concept carries.
            kind: ``embedding`` or ``hypernetwork`` (default: both).
            compatible_with: a base model (registered name, path or family name): only the
                concepts whose encoders and widths it accepts.

        Returns:
            Summaries (the indexed fields; :meth:`show` gives the whole record).

        Example:
            >>> [c.name for c in lib.list(type="negative", base="sd1")]
            ['bad-artist', 'easynegative']
        """
        summaries = self.index.summaries(**_list_filters(type, base, tag, kind))
        if compatible_with is None:
            return summaries
        from conceptlib.models import compatible, resolve_model

        # Resolve once: a model name may point at a folder whose hashing costs seconds.
        model = resolve_model(compatible_with, home=self.home, hash_files=False)
        return [s for s in summaries if compatible(s, model)]

    def rows(self, *, type: str | None = None, base: str | None = None, tag: str | None = None, kind: str | None = None) -> builtins.list[ConceptRow]:
        """What :meth:`list` finds, as only the six fields ``conceptlib list`` shows.

        Args:
            type: ``object``, ``style`` or ``negative``.
            base: base-model family: ``sd1``, ``sd2``, ``sdxl`` (``sd15``, ``xl``... accepted).
            tag: a tag the concept carries.
            kind: ``embedding`` or ``hypernetwork`` (default: both).

        Returns:
            Name, token, type, family, vector count and tags of each concept, sorted by name:
            about 60% of the cost of :meth:`list` on a large library.

        Example:
            >>> [(r.name, r.vectors) for r in lib.rows(tag="anime")]
            [('cat-toy', 4)]
        """
        return self.index.rows(**_list_filters(type, base, tag, kind))

    def search(self, query: str, *, limit: int | None = None) -> builtins.list[ConceptSummary]:
        """Full-text search over names, tokens, descriptions and tags, best matches first.

        Args:
            query: words (each matched as a prefix, all required) or any substring.
            limit: at most this many results.

        Example:
            >>> [c.name for c in lib.search("cat")]
            ['cat-toy']
        """
        return self.index.search(query, limit=limit)

    def show(self, name: str) -> Concept:
        """The full record of a concept (by name, or by token when unambiguous).

        The index finds the concept; the record comes from its ``concept.json``, the source of
        truth.

        Raises:
            ConceptNotFoundError: no such concept; the error lists the closest names.
            LibraryCorruptError: the concept is indexed but its manifest is missing or damaged.

        Example:
            >>> lib.show("cat-toy").token
            '<cat-toy>'
        """
        return self._read_manifest(self.folder(self.resolve(name)))[0]

    def has(self, name: str) -> bool:
        """Whether a concept is named exactly ``name`` (a slug; tokens are not looked up)."""
        return self.index.has(name)

    def token_owner(self, family: str | None, token: str) -> str | None:
        """The name of the concept of ``family`` whose token is ``token`` (case-insensitively), if any.

        Tokens are unique per family, so this is who a new concept with ``token`` would clash
        with (what ``train`` checks before it starts).
        """
        return self.index.token_owner(family, token)

    def find_by_source(self, repo_id: str) -> Concept | None:
        """The concept imported from Hub repository ``repo_id``, if any."""
        name = self.index.by_repo(repo_id)
        return self._read_manifest(self.folder(name))[0] if name else None

    def embedding(self, name: str) -> Embedding:
        """The concept's vectors, from its canonical file, with its current token.

        Raises:
            ConceptNotFoundError: no such concept.
            LibraryCorruptError: the canonical file is missing or damaged.
        """
        from conceptlib.formats import read

        concept = self.show(name)
        if concept.kind == "hypernetwork":
            raise IsHypernetworkError(
                f"{concept.name} is a hypernetwork, not an embedding",
                hint=f"call it in a prompt as <hypernet:{concept.token}:1>, or read it with Library.hypernetwork()",
            )
        path = self.folder(concept.name) / EMBEDDING_NAME
        try:
            emb = read(path)
        except (OSError, BadInputError) as exc:
            raise ConceptDamagedError(f"cannot read the concept's embedding: {exc}", path=path) from exc
        # A flipped bit still decodes: only the hash tells these vectors from the recorded ones,
        # and export, render and push must never pass damaged vectors on.
        if emb.content_hash() != concept.content_hash:
            raise ConceptDamagedError(f"the vectors no longer match the concept's content hash {concept.content_hash[:12]} (the file was damaged or changed)", path=path)
        emb.token = concept.token
        return emb

    def hypernetwork(self, name: str) -> Any:
        """A hypernetwork item's network (:class:`conceptlib.hypernet.Hypernetwork`), from its
        canonical file, checked against its content hash.

        Raises:
            ConceptNotFoundError: no such item.
            UsageError: the item is an embedding.
            ConceptDamagedError: the canonical file is missing, damaged or changed.
        """
        from conceptlib import hypernet

        concept = self.show(name)
        if concept.kind != "hypernetwork":
            raise UsageError(f"{concept.name} is an embedding, not a hypernetwork", hint=f"use it in a prompt as {concept.token}")
        path = self.folder(concept.name) / HYPERNETWORK_NAME
        try:
            network = hypernet.read(path)
        except (OSError, BadInputError) as exc:
            raise ConceptDamagedError(f"cannot read the hypernetwork: {exc}", path=path) from exc
        if network.content_hash() != concept.content_hash:
            raise ConceptDamagedError(f"the tensors no longer match the content hash {concept.content_hash[:12]} (the file was damaged or changed)", path=path)
        return network

    # --- add ----------------------------------------------------------------------------------
    def _candidates(
        self, paths: Sequence[Path], report: AddReport, scanned_images: set[Path]
    ) -> builtins.list[tuple[Path, Path | None]]:
        """The inputs to read, each with the folder it was found in (None: the user named it).

        Which files make a concept is :func:`conceptlib.layout.find_inputs`'s to decide (so
        ``validate`` finds the same ones); links left alone and thumbnails go to
        ``report.skipped``, paths that give nothing to ``report.rejected``. Pictures met in
        folders go into ``scanned_images`` (one without an embedding is skipped, not rejected).
        """
        from conceptlib.layout import find_inputs

        inputs = find_inputs(paths)
        report.skipped += [Rejected(s.path, s.reason, s.error) for s in inputs.skipped]
        report.rejected += [Rejected(r.path, r.reason, r.error) for r in inputs.rejected]
        scanned_images.update(f.path for f in inputs.concepts if f.picture)
        return [(f.path, f.within) for f in inputs.concepts]

    @staticmethod
    def _image_files(
        images: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None, skipped: builtins.list[Rejected]
    ) -> builtins.list[tuple[Path, Path | None]]:
        """The images named with ``--images``: files, and the images in folders (not following
        a link out of them; those go to ``skipped``), each with the folder it was found in."""
        if images is None:
            return []
        items = [images] if isinstance(images, (str, os.PathLike)) else list(images)
        files: builtins.list[tuple[Path, Path | None]] = []
        for item in items:
            path = Path(item)
            if path.is_dir():
                with Folder(path) as folder:
                    entries, refused = folder.entries()
                skipped += [Rejected(r.path, r.reason, r.error) for r in refused if Path(r.path).suffix.lower() in IMAGE_SUFFIXES]
                files += [(path / e.rel, path) for e in entries if e.kind == "file" and not e.name.startswith(".") and Path(e.name).suffix.lower() in IMAGE_SUFFIXES]
            elif path.is_file():
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    raise UsageError(f"not an image ({', '.join(IMAGE_SUFFIXES)})", path=path)
                files.append((path, None))
            elif path.exists():  # a FIFO, socket or device: never opened
                raise UsageError("is not a regular file (a FIFO, socket or device): not read", path=path, hint="check the --images path")
            else:
                raise UsageError("no such image file or folder", path=path, hint="check the --images path")
        return files

    def add(
        self,
        paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
        *,
        name: str | None = None,
        token: str | None = None,
        type: str | None = None,
        images: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None = None,
        tags: Iterable[str] = (),
        license: str | None = None,
        description: str | None = None,
        source: dict[str, Any] | None = None,
        metadata: dict[str, str] | None = None,
        progress: Progress | None = None,
    ) -> AddReport:
        """Add embedding files, concept folders, or folders of them to the library.

        Each input becomes one concept, written atomically. A bad input is reported and
        skipped, never half-added; the others are still added.

        Args:
            paths: files in any format, sd-concepts-library / diffusers folders, or folders
                holding such files and folders (searched recursively).
            name: the concept's name (one input only); default: from the token or file name.
            token: the word to type (one input only); default: the token stored in the file,
                else its A1111 name, else its file name.
            type: ``object``, ``style`` or ``negative``; default: the folder's
                ``type_of_concept.txt``, else ``object``.
            images: an image folder or image files (one input only); sd-concepts-library
                folders bring their ``concept_images/`` anyway.
            tags: tags for every concept added.
            license: license for every concept added.
            description: description for every concept added.
            source: provenance to record instead of the local path (the Hub importer passes
                repository, revision and URL).
            metadata: extra string facts to keep (``concept_type`` also sets the type).
            progress: called as ``progress(done, total, path)`` after each input.

        Returns:
            An :class:`AddReport` of added concepts, duplicates (same vectors already in the
            library) and rejected inputs with reasons. ``report.one()`` returns the concept of
            a single-input add or raises its error.

        Raises:
            UsageError: ``name``/``token``/``images`` given for several inputs, bad ``type``.
            InvalidNameError: an unusable ``name``, ``token`` or tag.

        Example:
            >>> lib.add("learned_embeds.bin", token="<cat-toy>", tags=["toy"]).one().name
            'cat-toy'
        """
        items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        report = AddReport()
        scanned_images: set[Path] = set()
        candidates = self._candidates([Path(p) for p in items], report, scanned_images)
        if len(candidates) > 1 and (name or token or images):
            raise UsageError(
                f"--name, --token and --images apply to one concept, and the inputs hold {len(candidates)}",
                hint="add them one at a time, or leave those options out",
            )
        options = _AddOptions(
            name=check_name(name) if name is not None else None,
            token=check_token(token) if token is not None else None,
            type=check_type(type) if type is not None else None,
            images=self._image_files(images, report.skipped),
            tags=sorted({check_tag(t) for t in tags}),
            license=(license.strip() or None) if license is not None else None,
            description=(description.strip() or None) if description is not None else None,
            source=source,
            metadata=dict(metadata or {}),
        )
        for done, (path, within) in enumerate(candidates, start=1):
            # One input's problem, whatever it is, is that input's: recorded, and the batch goes
            # on. What concerns the library or the machine (a damaged index, a full disk, no
            # memory) stops it, since every later input would meet it too; so do Ctrl-C and
            # exits (BaseException). An exception no reader foresaw arrives as InputReadError.
            try:
                report.added.append(self._add_one(path, within, options, report.skipped))
            except DuplicateConceptError as exc:
                report.duplicates.append(Duplicate(str(path), exc.existing, exc.content_hash, exc))
            except NoEmbeddingInImageError as exc:
                if path in scanned_images:
                    report.skipped.append(Rejected(str(path), SKIP_PLAIN_IMAGE, exc))
                else:
                    report.rejected.append(Rejected(str(path), _reason(exc, path), exc))
            except BadInputError as exc:
                report.rejected.append(Rejected(str(path), _reason(exc, path), exc))
            except OSError as exc:
                if concerns_the_library(exc, self.home):
                    raise
                report.rejected.append(Rejected(str(path), _reason(exc, path), exc))
            if progress is not None:
                progress(done, len(candidates), path)
        # What each input folder gave: its inputs but the skipped pictures, and its rejections
        # (a folder that cannot be listed is one too).
        skipped = {r.path for r in report.skipped}
        gave = [p for p, _within in candidates if str(p) not in skipped] + [Path(r.path) for r in report.rejected]
        for item in items:
            folder = Path(item)
            if folder.is_dir() and not any(p.is_relative_to(folder) for p in gave):
                # Pictures alone: the folder still gave nothing, as a folder without files would.
                report.rejected.append(Rejected(str(folder), "the folder holds no embeddings, only images without one"))
        if report.added:
            from conceptlib.library import _similar

            close = _similar.near_duplicates_of(self, [c.name for c in report.added])
            seen: set[frozenset[str]] = set()
            for name, matches in close.items():
                for match in matches:
                    pair = frozenset((name, match.name))
                    if pair not in seen:  # two close inputs of one batch: said once
                        seen.add(pair)
                        report.near_duplicates.append(NearDuplicate(name, match.name, match.score))
        return report

    def similar(self, name: str, *, top: int = 10) -> builtins.list[Any]:
        """The ``top`` concepts of ``name``'s family most like it, best first.

        Alike means the symmetric best-match cosine of their vector sets
        (:func:`conceptlib.similarity.set_similarity`): 1 for the same directions whatever the
        vectors' order, count or dtype. Signatures in the index pick the candidates; their
        vectors decide.

        Returns:
            ``Match(name, score)`` items (``conceptlib.library._similar.Match``).

        Raises:
            ConceptNotFoundError: no such concept.
            ConceptDamagedError: its vectors cannot be read.
        """
        from conceptlib.library import _similar

        return _similar.similar(self, name, top=top)

    def near_duplicates(self, *, threshold: float | None = None) -> builtins.list[builtins.list[Any]]:
        """Groups of concepts that are near-duplicates of one another (re-uploads under other
        names, fp16 copies, another training step), each member with its best score.

        Args:
            threshold: the least set similarity that makes two concepts near-duplicates
                (default :data:`conceptlib.similarity.NEAR_DUPLICATE`).
        """
        from conceptlib.library import _similar
        from conceptlib.similarity import NEAR_DUPLICATE

        return _similar.near_duplicates(self, threshold=NEAR_DUPLICATE if threshold is None else threshold)

    def _read_input(self, snap: Snapshot) -> Embedding:
        """Decode an input's snapshot and check it is a whole concept of a known family."""
        from conceptlib._snapshots import read_snapshot

        emb = read_snapshot(snap, strict=True)
        path = snap.source
        family = emb.family
        if family is None:
            raise EmbeddingStructureError(f"its vectors ({emb.width_label} wide) fit no base-model family", path=path)
        if set(family.encoders) != set(emb.vectors):
            raise EmbeddingStructureError(
                f"holds only {', '.join(emb.vectors)} vectors, half of an SDXL embedding",
                path=path,
                hint="add the first file of the diffusers SDXL pair (learned_embeds.safetensors) or its folder",
            )
        return emb

    @staticmethod
    def _original_files(snap: Snapshot, emb: Embedding) -> tuple[builtins.list[Path], Path]:
        """The files of a snapshot to keep byte for byte, and the one whose sha256 is the file hash."""
        from conceptlib.formats import FOLDER_FILES, sdxl_pair

        path = snap.copy
        if path.is_dir():
            # The folder's own files (its learned_embeds, token_identifier.txt, README ...);
            # the snapshot left out the other embeddings beside them (concepts of their own).
            files = sorted(p for p in path.iterdir() if p.is_file())
            primary = next((path / n for n in ("learned_embeds.safetensors", *FOLDER_FILES) if (path / n).is_file()), files[0])
            return files, primary
        pair = sdxl_pair(path.name)
        if emb.source_format == "diffusers-sdxl" and pair is not None:
            first, second = (path.with_name(n) for n in pair)
            return [first, second], first
        return [path], path

    def _snapshot(self, path: Path, within: Path | None) -> tuple[Snapshot, Path]:
        """Copy an input into a private folder in ``.staging`` (call with the library lock held).

        Returns:
            The snapshot, and the folder to delete afterwards.
        """
        from conceptlib._snapshots import snapshot

        scratch = self._stage(_store.READ_PREFIX)
        try:
            return snapshot(path, scratch / "input", within=within), scratch
        except BaseException:
            _store.discard(scratch)
            raise

    def _add_one(self, path: Path, within: Path | None, options: _AddOptions, skipped: builtins.list[Rejected]) -> Concept:
        """Add one input; what was left out of it (links out, non-images) goes to ``skipped``."""
        name, token, tags, metadata = options.name, options.token, options.tags, options.metadata
        timestamp = now()
        # Shared lock from the first read: the input is copied into .staging, which reindex
        # and verify (exclusive) clean up.
        with self._lock(exclusive=False):
            snap, scratch = self._snapshot(path, within)
            staging: Path | None = None
            try:
                skipped += [Rejected(s.path, s.reason, s.error) for s in snap.skipped]
                try:
                    emb = self._read_input(snap)
                except IsHypernetworkError:
                    if not snap.copy.is_file():
                        raise
                    concept, network = self._hypernetwork_item(snap, path, options, skipped=skipped, timestamp=timestamp)
                    staging = self._stage(_store.ADD_PREFIX)
                    self._stage_item(staging, concept, network, snap.copy, [*self._images_for(options.images, scratch, skipped), *snap.images])
                    return self._commit_new(staging, concept, explicit_name=name is not None, path=path)
                family = emb.family
                assert family is not None
                word = token or check_token(emb.prompt_word() or path.stem, path=path)
                content_hash = emb.content_hash()
                base_name = name or slugify(_strip_brackets(word)) or slugify(path.stem) or "concept"
                concept_type = options.type
                if concept_type is None:
                    guess = (metadata.get("concept_type") or emb.metadata.get("concept_type") or "").strip().lower()
                    concept_type = guess if guess in CONCEPT_TYPES else "object"
                # Cheap checks before writing anything; repeated in the write transaction.
                self._check_unique(self.index, content_hash, family.key, word, path=path)
                images = self._images_for(options.images, scratch, skipped)

                staging = self._stage(_store.ADD_PREFIX)
                records = self._copy_originals(snap, emb, staging)
                image_records = self._store_images([*images, *snap.images], staging)
                canonical = self._canonical_bytes(emb)
                embedding_record = _store.write_new(staging / EMBEDDING_NAME, canonical)
                concept = Concept(
                    name=base_name,
                    token=word,
                    type=concept_type,
                    description=options.description,
                    tags=list(tags),
                    license=options.license or metadata.get("license") or emb.metadata.get("license"),
                    family=family.key,
                    content_hash=content_hash,
                    file_sha256=records[0].sha256 if records else None,
                    embedding_sha256=embedding_record.sha256,
                    **_vector_fields(emb),
                    source=dict(options.source) if options.source else {"type": "local", "path": str(path.resolve())},
                    files=records,
                    images=image_records,
                    metadata={**emb.metadata, **metadata},
                    created=timestamp,
                    updated=timestamp,
                )
                self._fsync_tree(staging)
                return self._commit_new(staging, concept, explicit_name=name is not None, path=path)
            finally:
                _store.discard(scratch)
                if staging is not None and staging.exists():
                    _store.discard(staging)

    def _hypernetwork_item(
        self, snap: Snapshot, path: Path, options: _AddOptions, *, skipped: builtins.list[Rejected], timestamp: str, exclude: str = ""
    ) -> tuple[Concept, Any]:
        """The record of a hypernetwork input, and its network (files are staged by
        :meth:`_stage_item`).

        AUTOMATIC1111 calls a hypernetwork by its file's base name (``<hypernet:anime:1>`` for
        ``anime.pt``), so that is the default word; the file's own ``name`` field is kept in the
        metadata.
        """
        from conceptlib import hypernet

        network = hypernet.read(snap.copy)
        bad = network.non_finite()
        if bad:
            where = ", ".join(f"{k} ({n})" for k, n in sorted(bad.items())[:4])
            raise EmbeddingStructureError(f"its hypernetwork holds NaN or infinite values: {where}", path=path)
        word = check_network_word(options.token or check_token(path.stem, path=path))
        family = hypernet.family_of(network.widths)
        content_hash = network.content_hash()
        self._check_unique(self.index, content_hash, family or "", word, path=path, exclude=exclude, kind="hypernetwork")
        described = network.describe()
        metadata = {
            "hypernetwork_layout": network.layout,
            "hypernetwork_widths": ",".join(str(w) for w in network.widths),
            "layer_structure": json.dumps(network.fields.get("layer_structure")),
            "activation_func": str(network.fields.get("activation_func")),
            "is_layer_norm": json.dumps(bool(network.fields.get("is_layer_norm"))),
            "activate_output": json.dumps(bool(network.fields.get("activate_output"))),
            "use_dropout": json.dumps(bool(network.fields.get("use_dropout"))),
            "parameters": str(network.parameters),
            **({"hypernetwork_name": str(network.fields["name"])} if network.fields.get("name") else {}),
            **({"defaulted": ",".join(network.missing)} if network.missing else {}),
            **options.metadata,
        }
        guess = (options.metadata.get("concept_type") or "").strip().lower()
        concept_type = options.type or (guess if guess in CONCEPT_TYPES else "style")
        concept = Concept(
            name=options.name or slugify(word) or slugify(path.stem) or "hypernetwork",
            token=word,
            type=concept_type,
            description=options.description,
            tags=list(options.tags),
            license=options.license or options.metadata.get("license"),
            family=family,
            dtype=described["dtype"] if isinstance(described["dtype"], str) else ",".join(described["dtype"]),
            content_hash=content_hash,
            format=f"hypernetwork-{network.layout}",
            checkpoint_hash=network.fields.get("sd_checkpoint"),
            checkpoint_name=network.fields.get("sd_checkpoint_name"),
            steps=network.fields.get("step"),
            source=dict(options.source) if options.source else {"type": "local", "path": str(path.resolve())},
            metadata=metadata,
            created=timestamp,
            updated=timestamp,
            kind="hypernetwork",
        )
        return concept, network

    @staticmethod
    def _images_for(files: builtins.list[tuple[Path, Path | None]], scratch: Path, skipped: builtins.list[Rejected]) -> builtins.list[Path]:
        """``--images`` checked and copied into the input's scratch folder; refusals go to ``skipped``."""
        images, refused = copy_images(files, scratch / "images")
        skipped += [Rejected(r.path, r.reason, r.error) for r in refused]
        return images

    def _stage_item(self, staging: Path, concept: Concept, network: Any, original: Path, images: builtins.list[Path]) -> None:
        """Write a hypernetwork item's files into ``staging`` and record them in ``concept``:
        the original byte for byte, the canonical safetensors form, the images; then fsync."""
        from conceptlib import hypernet

        concept.files = self._copy_files([original], original, staging)
        concept.file_sha256 = concept.files[0].sha256
        concept.embedding_sha256 = _store.write_new(staging / HYPERNETWORK_NAME, hypernet.dumps(network, "safetensors")).sha256
        concept.images = self._store_images(images, staging)
        self._fsync_tree(staging)

    def _copy_originals(self, snap: Snapshot, emb: Embedding, staging: Path) -> builtins.list[FileRecord]:
        """Copy the input's files into ``staging/original/``; the primary file's record first."""
        originals, primary = self._original_files(snap, emb)
        return self._copy_files(originals, primary, staging)

    @staticmethod
    def _copy_files(originals: builtins.list[Path], primary: Path, staging: Path) -> builtins.list[FileRecord]:
        """Copy files into ``staging/original/`` under unique names; the primary file's record first."""
        records: builtins.list[FileRecord] = []
        taken: set[str] = set()
        for src in sorted(originals, key=lambda p: p != primary):
            stored = _unique_name(src.stem, src.suffix, taken)
            record = _copy(src, staging / ORIGINAL_DIR / stored)
            record.path = f"{ORIGINAL_DIR}/{stored}"
            records.append(record)
        return records

    @staticmethod
    def _store_images(files: builtins.list[Path], staging: Path) -> builtins.list[FileRecord]:
        """Copy checked images (in a snapshot) into ``staging/images/``."""
        records: builtins.list[FileRecord] = []
        taken: set[str] = set()
        for src in files:
            stored = _unique_name(src.stem, src.suffix.lower(), taken)
            record = _copy(src, staging / IMAGES_DIR / stored)
            record.path = f"{IMAGES_DIR}/{stored}"
            records.append(record)
        return records

    @staticmethod
    def _fsync_tree(staging: Path) -> None:
        _store.fsync_tree(staging)

    @staticmethod
    def _canonical_bytes(emb: Embedding) -> bytes:
        from conceptlib.formats import plan

        # The token lives in concept.json only: it can be renamed, the vectors cannot, so the
        # canonical file never holds a stale token.
        _fmt, files = plan(replace(emb, token=None), EMBEDDING_NAME, format="conceptlib")
        return files[0][1]

    def _check_unique(
        self, index: IndexReader, content_hash: str, family: str, token: str, *, path: Path | None = None, exclude: str = "", kind: str = "embedding"
    ) -> None:
        owner = index.content_hash_owner(content_hash, exclude=exclude)
        if owner is not None:
            raise DuplicateConceptError(owner, content_hash, path=str(path) if path else None)
        user = index.token_owner(family, token, exclude=exclude, kind=kind)
        if user is not None:
            # Outside a transaction another process may have added these very vectors between
            # the two queries: then this is a duplicate, not a token clash.
            owner = index.content_hash_owner(content_hash, exclude=exclude)
            if owner is not None:
                raise DuplicateConceptError(owner, content_hash, path=str(path) if path else None)
            label = FAMILIES[family].label if family in FAMILIES else "any family"
            raise TokenInUseError(token, family=label if kind == "embedding" else f"hypernetworks of {label}", used_by=user, path=str(path) if path else None)

    def _name_free(self, tx: Writer, name: str) -> bool:
        folder = self.concepts_dir / name
        return not tx.has(name) and not (folder.exists() or folder.is_symlink())

    def _commit_new(self, staging: Path, concept: Concept, *, explicit_name: bool, path: Path) -> Concept:
        # Publish outside the transaction: a failed commit takes the folder back out.
        with _store.Publish(staging) as publish, self.registry.transaction() as tx:
            self._check_unique(tx, concept.content_hash, concept.family or "", concept.token, path=path, kind=concept.kind)
            name = concept.name
            if not self._name_free(tx, name):
                if explicit_name:
                    raise ConceptExistsError(name)
                # Derived names take the first free suffix (cat-toy, cat-toy-2, ...).
                n = 2
                while not self._name_free(tx, numbered(concept.name, n)):
                    n += 1
                name = numbered(concept.name, n)
            concept.name = name
            manifest = concept.to_json()
            publish.move_in(self.folder(name), manifest)
            tx.insert(concept, manifest)
        return concept.attach(self.concepts_dir / concept.name)

    # --- update (new vectors for an existing concept) -----------------------------------------
    def update(
        self,
        name: str,
        path: str | os.PathLike[str],
        *,
        token: str | None = None,
        type: str | None = None,
        images: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None = None,
        source: dict[str, Any] | None = None,
        metadata: dict[str, str] | None = None,
    ) -> Concept:
        """Replace a concept's embedding, or a hypernetwork item's network (e.g. a newer revision
        from the Hub), keeping its history.

        Name, tags, description and creation time are kept; the previous content hash and
        source go to ``history`` when the vectors change. The files are swapped as a whole
        folder, so a crash leaves the old or the new version (``reindex`` finishes the swap).

        Args:
            name: the concept to update.
            path: the new embedding file or folder.
            token: a new token (default: keep the current one).
            type: a new type (default: keep).
            images: new images, replacing the old ones (default: keep the old ones).
            source: the new provenance (default: the local path).
            metadata: facts to merge into the record's metadata.

        Returns:
            The updated concept.

        Raises:
            ConceptNotFoundError: no such concept.
            DuplicateConceptError: another concept already holds these vectors.
            TokenInUseError: the token is taken in the family.
        """
        current = self.show(name)
        src = Path(path)
        word = check_token(token) if token is not None else current.token
        concept_type = check_type(type) if type is not None else current.type
        meta = dict(metadata or {})
        left_out: builtins.list[Rejected] = []
        # None keeps the current images; a list (even empty) replaces them.
        image_files = None if images is None else self._image_files(images, left_out)
        if current.kind == "hypernetwork":
            return self._update_hypernetwork(current, src, word=word, concept_type=concept_type, image_files=image_files, source=source, metadata=meta, left_out=left_out)
        with self._lock(exclusive=False):
            snap, scratch = self._snapshot(src, None)
            try:
                emb = self._read_input(snap)
                checked: builtins.list[Path] = []
                if image_files is not None:
                    checked = self._images_for(image_files, scratch, left_out)
            except BaseException:
                _store.discard(scratch)
                raise
            left_out += [Rejected(s.path, s.reason, s.error) for s in snap.skipped]
            for item in left_out:
                _log.warning("%s: %s", printable(item.path, None), item.reason)
            family = emb.family
            assert family is not None
            folder = self.folder(current.name)
            swap = _store.Swap(self.staging_dir, folder)
            staging = swap.staging
            try:
                # The swap outside the transaction: a failed commit puts the old folder back.
                with swap, self.registry.transaction() as tx:
                    before, _text = self._read_manifest(folder)
                    self._check_unique(tx, emb.content_hash(), family.key, word, path=src, exclude=before.name)
                    records = self._copy_originals(snap, emb, staging)
                    image_records = self._kept_images(before, folder, staging) if image_files is None else self._store_images(checked, staging)
                    embedding_record = _store.write_new(staging / EMBEDDING_NAME, self._canonical_bytes(emb))
                    history = _history_after(before, emb.content_hash())
                    concept = replace(
                        before,
                        token=word,
                        type=concept_type,
                        license=before.license or meta.get("license"),
                        family=family.key,
                        content_hash=emb.content_hash(),
                        file_sha256=records[0].sha256 if records else None,
                        embedding_sha256=embedding_record.sha256,
                        **_vector_fields(emb),
                        source=dict(source) if source else {"type": "local", "path": str(src.resolve())},
                        files=records,
                        images=image_records,
                        history=history,
                        metadata={**before.metadata, **emb.metadata, **meta},
                        updated=now(),
                    )
                    manifest = concept.to_json()
                    _store.write_new(staging / MANIFEST_NAME, manifest.encode("utf-8"))
                    swap.swap_in(concept.name)
                    tx.replace(before.name, concept, manifest)
            finally:
                _store.discard(scratch)
        return concept.attach(folder)

    def _update_hypernetwork(
        self,
        current: Concept,
        src: Path,
        *,
        word: str,
        concept_type: str,
        image_files: builtins.list[tuple[Path, Path | None]] | None,
        source: dict[str, Any] | None,
        metadata: dict[str, str],
        left_out: builtins.list[Rejected],
    ) -> Concept:
        """:meth:`update` of a hypernetwork item: the new network swapped in as a whole folder."""
        with self._lock(exclusive=False):
            snap, scratch = self._snapshot(src, None)
            try:
                try:
                    self._read_input(snap)
                except IsHypernetworkError:
                    pass
                else:
                    raise UsageError(f"{current.name} is a hypernetwork, and this file is an embedding", path=src, hint="add it as a concept of its own")
                options = _AddOptions(name=current.name, token=word, type=concept_type, images=[], tags=list(current.tags), license=current.license,
                                      description=current.description, source=source, metadata=metadata)  # fmt: skip
                fresh, network = self._hypernetwork_item(snap, src, options, skipped=left_out, timestamp=now(), exclude=current.name)
                checked = self._images_for(image_files, scratch, left_out) if image_files is not None else []
                for item in left_out:
                    _log.warning("%s: %s", printable(item.path, None), item.reason)
                folder = self.folder(current.name)
                swap = _store.Swap(self.staging_dir, folder)
                # The swap outside the transaction: a failed commit puts the old folder back.
                with swap, self.registry.transaction() as tx:
                    before, _text = self._read_manifest(folder)
                    self._check_unique(tx, fresh.content_hash, fresh.family or "", word, path=src, exclude=before.name, kind="hypernetwork")
                    self._stage_item(swap.staging, fresh, network, snap.copy, checked)
                    if image_files is None:
                        fresh.images = self._kept_images(before, folder, swap.staging)
                    concept = replace(
                        fresh, name=before.name, tags=list(before.tags), description=before.description, license=before.license or fresh.license,
                        metadata={**before.metadata, **fresh.metadata}, history=_history_after(before, fresh.content_hash),
                        created=before.created, updated=now(),
                    )  # fmt: skip
                    manifest = concept.to_json()
                    _store.write_new(swap.staging / MANIFEST_NAME, manifest.encode("utf-8"))
                    swap.swap_in(concept.name)
                    tx.replace(before.name, concept, manifest)
            finally:
                _store.discard(scratch)
        return concept.attach(folder)

    @staticmethod
    def _kept_images(before: Concept, folder: Path, staging: Path) -> builtins.list[FileRecord]:
        """An update that brings no images keeps the concept's: copied into the new folder."""
        records = [FileRecord(i.path, i.sha256, i.size) for i in before.images]
        for record in records:
            _copy_own(folder, record.path, staging / record.path)
        return records

    # --- changes to the record ----------------------------------------------------------------
    def _modify(self, name: str, change: Callable[[Concept, Writer], Concept]) -> Concept:
        """Rewrite one concept's manifest and index row in one write transaction."""
        resolved = self.resolve(name)
        with self._lock(exclusive=False), self.registry.transaction() as tx:
            folder = self.folder(resolved)
            if not folder.is_dir():
                raise ConceptNotFoundError(resolved, suggestions=[])
            before, _text = self._read_manifest(folder)
            after = change(replace(before, tags=list(before.tags), history=list(before.history)), tx)
            after.updated = now()
            # Manifest first, then the index: a crash in between leaves a newer manifest,
            # which `reindex` picks up (the manifest is the truth).
            manifest = self._write_manifest(folder, after)
            if after.name != before.name:
                target = self.folder(after.name)
                os.rename(folder, target)
                fsync_dir(self.concepts_dir)
                folder = target
            tx.replace(before.name, after, manifest)
        return after.attach(folder)

    def tag(self, name: str, *, add: Iterable[str] = (), remove: Iterable[str] = ()) -> Concept:
        """Add and remove tags.

        Args:
            name: the concept.
            add: tags to add (normalised to lowercase).
            remove: tags to remove (absent ones are ignored).

        Returns:
            The updated concept.

        Example:
            >>> lib.tag("cat-toy", add=["toy"], remove=["wip"]).tags
            ['toy']
        """
        adding = {check_tag(t) for t in add}
        removing = {check_tag(t) for t in remove}

        def change(concept: Concept, _tx: Writer) -> Concept:
            concept.tags = sorted((set(concept.tags) | adding) - removing)
            return concept

        return self._modify(name, change)

    def rename(self, name: str, new: str | None = None, *, token: str | None = None) -> Concept:
        """Give a concept a new name, a new token, or both.

        Args:
            name: the concept.
            new: the new name (made a slug); None keeps the name.
            token: the new token; None keeps it.

        Returns:
            The renamed concept.

        Raises:
            ConceptExistsError: the new name is taken.
            TokenInUseError: the new token is used by another concept of the family.
            UsageError: nothing to change.

        Example:
            >>> lib.rename("cat-toy", "kitty", token="<kitty>").name
            'kitty'
        """
        new_name = check_name(new) if new is not None else None
        new_token = check_token(token) if token is not None else None

        def change(concept: Concept, tx: Writer) -> Concept:
            old_name = concept.name
            if new_name in (None, concept.name) and new_token in (None, concept.token):
                raise UsageError(f"{concept.name!r} already has that name and token", hint="give a new name or --token")
            if new_name is not None and new_name != concept.name:
                if not self._name_free(tx, new_name):
                    raise ConceptExistsError(new_name, hint="choose another name")
                concept.name = new_name
            if new_token is not None and new_token != concept.token:
                if concept.kind == "hypernetwork":
                    check_network_word(new_token)
                user = tx.token_owner(concept.family, new_token, exclude=old_name, kind=concept.kind)
                if user is not None:
                    raise TokenInUseError(new_token, family=concept.family_label, used_by=user)
                concept.token = new_token
            return concept

        return self._modify(name, change)

    def remove(self, names: str | Iterable[str]) -> builtins.list[str]:
        """Delete concepts (their folders and index rows).

        Every name is resolved before anything is deleted, so a typo removes nothing.

        Args:
            names: concept names (or tokens).

        Returns:
            The names removed.

        Raises:
            ConceptNotFoundError: a name matches no concept (nothing was removed).
        """
        items = [names] if isinstance(names, str) else list(names)
        resolved = list(dict.fromkeys(self.resolve(n) for n in items))
        removed: builtins.list[str] = []
        for name in resolved:
            with self._lock(exclusive=False):
                trash = self._stage(_store.REMOVE_PREFIX, create=False)
                with self.registry.transaction() as tx:
                    _store.retire(self.folder(name), trash)
                    tx.delete(name)
                _store.discard(trash)
            removed.append(name)
        return removed

    # --- export -------------------------------------------------------------------------------
    def export(
        self,
        names: str | Iterable[str],
        format: str | None = None,
        out_dir: str | os.PathLike[str] = ".",
        *,
        target: str | None = None,
        force: bool = False,
    ) -> builtins.list[ExportedConcept]:
        """Write concepts to a folder in a given format, or ready for a UI's ``embeddings/``.

        With ``target`` (``"a1111"``, ``"comfyui"`` or ``"invokeai"``) each concept becomes one
        safetensors file that the UI loads (``emb_params`` for SD 1.x/2.x, ``clip_l``/``clip_g``
        for SDXL). Those UIs take the word to type from the file stem, so the stem is the
        concept's token without angle brackets, made into one word the target's prompt parser
        reads and a file name every platform accepts (see :func:`ui_word`: ``cat toy`` becomes
        ``cat-toy``). Formats whose loaders use the file name (``a1111``, ``png``, ``sdxl``,
        ``emb-params``) are named the same way, by AUTOMATIC1111's rules; the others after the
        concept's name. Two concepts never share a file: words equal but for case get the
        family (``cat-toy-sdxl``), then a number. Nothing is written when any destination
        exists (unless ``force``).

        Args:
            names: concepts to export.
            format: a writable format of ``conceptlib formats``.
            out_dir: the destination folder (created if missing).
            target: ``a1111``, ``comfyui`` or ``invokeai`` instead of ``format``.
            force: overwrite existing files.

        Returns:
            One :class:`ExportedConcept` per concept, with the word to type in ``prompt``.

        Raises:
            UsageError: neither or both of ``format`` and ``target``; unknown format.
            FormatCapabilityError: the format cannot hold a concept (SDXL into diffusers).
            DestinationExistsError: a destination exists and ``force`` is False.

        Example:
            >>> lib.export(["easynegative"], target="comfyui", out_dir="ComfyUI/models/embeddings")[0].prompt
            'embedding:EasyNegative'
        """
        import itertools

        from conceptlib.errors import DestinationExistsError
        from conceptlib.formats import FORMATS, WRITABLE, plan

        targets = ", ".join(f"--for {t}" for t in UI_FORMATS)
        if (format is None) == (target is None):
            raise UsageError("choose one of --format and --for", hint=f"{targets}, or --format {{{','.join(WRITABLE)}}}")
        ui = target.lower() if target is not None else None
        if ui is not None and ui not in UI_FORMATS:
            raise UsageError(f"unknown --for target {target!r}", hint=f"use one of: {', '.join(UI_FORMATS)}")
        if format is not None and (format not in FORMATS or FORMATS[format].writer is None):
            raise UsageError(f"unknown or read-only format {format!r}", hint=f"choose one of: {', '.join(WRITABLE)}")
        out = Path(out_dir)
        items = [names] if isinstance(names, str) else list(names)
        if not items:
            raise UsageError("name at least one concept to export")
        concepts = [self.show(n) for n in dict.fromkeys(items)]
        planned: builtins.list[tuple[ExportedConcept, builtins.list[tuple[Path, bytes]]]] = []
        # Case-folded: Windows and macOS file systems, and AUTOMATIC1111's tokenizer, do not
        # tell Cat-Toy from cat-toy.
        taken: set[str] = set()
        for concept in concepts:
            if concept.kind == "hypernetwork":
                planned.append(self._plan_hypernetwork(concept, format, ui, out, taken))
                continue
            emb = self.embedding(concept.name)
            if ui is not None:
                single, sdxl = UI_FORMATS[ui]
                fmt = sdxl if emb.is_sdxl else single
            else:
                assert format is not None
                fmt = format
            by_word = ui is not None or fmt in STEM_IS_PROMPT_WORD
            rules = ui or "a1111"  # the --format layouts named by their stem are AUTOMATIC1111's
            wanted = concept.prompt_word if by_word else concept.name
            word = concept_word(concept, rules) if by_word else wanted
            readable = word
            candidates = itertools.chain([word, f"{word}-{concept.family}"], (f"{word}-{i}" for i in itertools.count(2)))
            word = next(c for c in candidates if c.casefold() not in taken)
            taken.add(word.casefold())
            note = None
            if word != readable:
                note = f"{readable!r} is already the word of another concept in this export; the file is named {word!r}"
            elif word != wanted:
                where = {"a1111": "AUTOMATIC1111", "comfyui": "ComfyUI", "invokeai": "InvokeAI"}[rules]
                note = f"{wanted!r} cannot be both one word {where} reads in a prompt and a file name on every system; the file is named {word!r}"
            if by_word:
                emb.name = word
            spec = FORMATS[fmt]
            dest = out / word if not spec.suffix or fmt == "diffusers-sdxl" else out / f"{word}{spec.suffix}"
            try:
                fmt, files = plan(emb, dest, format=fmt)
            except FormatCapabilityError as exc:
                # Several concepts in one export: say which one the format cannot hold.
                raise FormatCapabilityError(f"{concept.name}: {exc.message}", path=exc.path, hint=exc.hint) from exc
            prompt_word = word if by_word else concept.token
            prompt = UI_PROMPTS[ui].format(word) if ui is not None else prompt_word
            planned.append((ExportedConcept(concept.name, fmt, [p for p, _ in files], prompt_word, prompt, note if by_word else None), files))
        if not force:
            for _result, files in planned:
                for path, _data in files:
                    if path.exists():
                        raise DestinationExistsError("already exists", path=path)
        for _result, files in planned:
            for path, data in files:
                atomic_write_bytes(path, data)
        return [result for result, _files in planned]

    def _plan_hypernetwork(
        self, concept: Concept, format: str | None, ui: str | None, out: Path, taken: set[str]
    ) -> tuple[ExportedConcept, builtins.list[tuple[Path, bytes]]]:
        """A hypernetwork item's export: an AUTOMATIC1111 ``.pt`` named by its word.

        AUTOMATIC1111 and ComfyUI both load that file from ``models/hypernetworks/`` and find
        it by its base name; InvokeAI has no hypernetworks, and no embedding format holds one.
        """
        from conceptlib import hypernet

        if ui == "invokeai" or (format is not None and format != "a1111"):
            what = "--for invokeai" if ui == "invokeai" else f"--format {format}"
            raise FormatCapabilityError(f"{concept.name} is a hypernetwork, which {what} cannot hold", hint="export it with --for a1111 or --for comfyui (both read AUTOMATIC1111's .pt)")
        network = self.hypernetwork(concept.name)
        word = network_word(concept)
        base = word
        n = 2
        while word.casefold() in taken:
            word = f"{base}-{n}"
            n += 1
        taken.add(word.casefold())
        note = "AUTOMATIC1111 and ComfyUI read hypernetworks from models/hypernetworks/"
        if word != concept.token:
            note = f"{concept.token!r} is not a file name every system accepts, or another export has it; the file is named {word!r}. " + note
        prompt = f"<hypernet:{word}:1>"
        result = ExportedConcept(concept.name, "hypernetwork-a1111", [out / f"{word}.pt"], word, prompt, note)
        return result, [(out / f"{word}.pt", hypernet.dumps(network, "a1111"))]

    # --- maintenance --------------------------------------------------------------------------
    def _clean_staging(self) -> builtins.list[str]:
        """Finish interrupted swaps and delete everything else in ``.staging`` (lock held alone)."""
        return _store.clean_staging(self.staging_dir, self.concepts_dir)

    def _scan(self, *, fix: bool) -> tuple[builtins.list[tuple[Concept, str]], builtins.list[Problem], builtins.list[str]]:
        """Read every manifest; with ``fix``, finish interrupted renames and drop stray files."""
        items: builtins.list[tuple[Concept, str]] = []
        problems: builtins.list[Problem] = []
        fixed: builtins.list[str] = []
        for folder in sorted(self.concepts_dir.iterdir()) if self.concepts_dir.is_dir() else []:
            if folder.name.startswith(".") or not folder.is_dir():
                continue
            for stray in [folder / REPLACES_MARKER, *folder.glob(".*.tmp")]:
                if stray.exists():
                    if fix:
                        stray.unlink()
                        fixed.append(f"deleted {folder.name}/{stray.name}")
                    else:
                        problems.append(Problem("stray", folder.name, f"leftover {stray.name} from an interrupted write", True))
            try:
                concept, text = self._read_manifest(folder)
            except LibraryCorruptError as exc:
                problems.append(Problem("manifest", folder.name, exc.message))
                continue
            if concept.name != folder.name:
                target = self.concepts_dir / concept.name
                if fix and is_slug(concept.name) and not target.exists():
                    # A rename stopped after writing the manifest: finish it.
                    os.rename(folder, target)
                    fixed.append(f"finished renaming {folder.name} to {concept.name}")
                    folder = target
                    concept.attach(folder)
                else:
                    problems.append(Problem("name", folder.name, f"its concept.json names it {concept.name!r}", is_slug(concept.name) and not target.exists()))
                    continue
            if not is_slug(folder.name):
                problems.append(Problem("name", folder.name, "the folder name is not a valid concept name"))
                continue
            items.append((concept, text))
        # Conflicts no single operation can create, but copying folders by hand can.
        tokens: dict[tuple[str | None, str], str] = {}
        hashes: dict[str, str] = {}
        for concept, _text in items:
            key = (concept.family, concept.token.lower())
            if key in tokens:
                problems.append(Problem("token", concept.name, f"uses the token {concept.token!r} of {tokens[key]!r} ({concept.family_label}); rename one with --token"))
            tokens.setdefault(key, concept.name)
            if concept.content_hash in hashes:
                problems.append(Problem("duplicate", concept.name, f"holds the same vectors as {hashes[concept.content_hash]!r}; remove one"))
            hashes.setdefault(concept.content_hash, concept.name)
        return items, problems, fixed

    def reindex(self) -> ReindexReport:
        """Rebuild the index from the manifests, after cleaning up interrupted operations.

        Deletes staging leftovers, finishes interrupted renames and swaps, then replaces the
        whole index in one transaction. Waits for running writers to finish first.

        Returns:
            A :class:`ReindexReport`; its ``problems`` name folders that could not be indexed.
        """
        with self._lock(exclusive=True):
            return self._reindex_locked()

    def _reindex_locked(self) -> ReindexReport:
        cleaned = self._clean_staging()
        items, problems, fixed = self._scan(fix=True)
        try:
            # Deleting every row can succeed around a damaged page and keep it: check first.
            damage = self.index.damage()
            if damage is not None:
                raise IndexDamagedError(f"the index is damaged ({damage})", path=sqlite_path(self.url))
            with self.registry.transaction() as tx:
                count = tx.rebuild(items)
        except IndexDamagedError:
            # Nothing in it is lost: every row comes back from the manifests just read.
            aside = self._move_damaged_index()
            fixed.append(f"moved the damaged index aside to {aside.name}")
            with self.registry.transaction() as tx:
                count = tx.rebuild(items)
        return ReindexReport(count, cleaned + fixed, problems)

    def _check_files(self, concept: Concept) -> builtins.list[Problem]:
        """Hash every file of a concept against its manifest; decode the canonical file."""
        problems: builtins.list[Problem] = []
        folder = concept.path
        assert folder is not None
        name = concept.canonical_name
        canonical = folder / name
        # conceptlib writes regular files only; a link was put there by hand, and reading
        # through it would hash, export or push a file from anywhere as the concept's own.
        linked = [rel for rel in (".", name, *(r.path for r in (*concept.files, *concept.images))) if (folder / rel).is_symlink()]
        for rel in linked:
            problems.append(Problem("link", concept.name, f"{'the concept folder' if rel == '.' else rel} is a symbolic link; a library holds only regular files"))
        if linked:
            return problems
        if not canonical.is_file():
            problems.append(Problem("embedding", concept.name, f"{name} is missing", bool(concept.files)))
        elif _sha256(canonical) != concept.embedding_sha256:
            problems.append(Problem("embedding", concept.name, f"{name} does not match its sha256 (damaged or changed)", bool(concept.files)))
        else:
            try:
                if _content_hash(canonical, concept.kind) != concept.content_hash:
                    what = "tensors" if concept.kind == "hypernetwork" else "vectors"
                    problems.append(Problem("embedding", concept.name, f"the {what} do not match the content hash", bool(concept.files)))
            except (OSError, BadInputError) as exc:
                problems.append(Problem("embedding", concept.name, f"{name} cannot be read: {exc.args[0] if exc.args else exc}", bool(concept.files)))
        for kind, records in (("original", concept.files), ("image", concept.images)):
            for record in records:
                path = folder / record.path
                if not path.is_file():
                    problems.append(Problem(kind, concept.name, f"{record.path} is missing"))
                elif _sha256(path) != record.sha256:
                    problems.append(Problem(kind, concept.name, f"{record.path} does not match its sha256"))
        return problems

    def _repair_embedding(self, concept: Concept) -> str | None:
        """Rebuild a damaged canonical file from the original, if that still decodes to the same vectors."""
        from conceptlib import hypernet
        from conceptlib.formats import read

        folder = concept.path
        assert folder is not None
        candidates = [folder / concept.files[0].path] if concept.files else []
        if concept.kind == "embedding":
            candidates.append(folder / ORIGINAL_DIR)
        for candidate in candidates:
            try:
                if concept.kind == "hypernetwork":
                    network = hypernet.read(candidate)
                    if network.content_hash() != concept.content_hash:
                        continue
                    data = hypernet.dumps(network, "safetensors")
                else:
                    emb = read(candidate, strict=False)
                    if emb.content_hash() != concept.content_hash:
                        continue
                    data = self._canonical_bytes(emb)
            except (OSError, BadInputError):
                continue
            atomic_write_bytes(folder / concept.canonical_name, data)
            sha = hashlib.sha256(data).hexdigest()
            if sha != concept.embedding_sha256:
                self._write_manifest(folder, replace(concept, embedding_sha256=sha))
            return f"rebuilt {concept.name}/{concept.canonical_name} from {candidate.relative_to(folder)}"
        return None

    def verify(self, *, repair: bool = False) -> VerifyReport:
        """Check every hash, every manifest against the index, and look for orphans.

        Args:
            repair: fix what can be fixed first: delete staging leftovers, finish
                interrupted renames, rebuild damaged canonical embeddings from the originals,
                and rebuild the index from the manifests.

        Returns:
            A :class:`VerifyReport`; ``report.ok`` is True when nothing is wrong.

        Example:
            >>> lib.verify().ok
            True
        """
        with self._lock(exclusive=True):
            repaired: builtins.list[str] = []
            if repair:
                items, _problems, _fixed = self._scan(fix=False)
                for concept, _text in items:
                    if any(p.kind == "embedding" and p.repairable for p in self._check_files(concept)):
                        message = self._repair_embedding(concept)
                        if message:
                            repaired.append(message)
                try:
                    before: dict[str, str] | None = self.index.state()
                except IndexDamagedError:
                    before = None  # the rebuild says it moved the file aside
                result = self._reindex_locked()
                repaired += result.cleaned
                after = self.index.state()
                if before is not None:
                    changed = sorted(n for n in before.keys() | after.keys() if before.get(n) != after.get(n))
                    if changed:
                        repaired.append(f"rebuilt the index: {', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''} {'was' if len(changed) == 1 else 'were'} missing, stale or gone")
            problems = [
                Problem("staging", f"{STAGING_DIR}/{entry.name}", "leftover of an interrupted operation", True)
                for entry in (sorted(self.staging_dir.iterdir()) if self.staging_dir.is_dir() else [])
            ]
            items, scan_problems, _ = self._scan(fix=False)
            problems += scan_problems
            for concept, _text in items:
                problems += self._check_files(concept)
            try:
                index = self.index
                damage = index.damage()
                if damage is not None:
                    raise IndexDamagedError(f"the index is damaged ({damage})")
                state = index.state()
                fts_count, count = index.fts_count(), index.count()
            except IndexDamagedError as exc:
                problems.append(Problem("index", self.url.rsplit("/", 1)[-1], exc.message, True))
                return VerifyReport(len(items), problems, repaired)
            on_disk = {concept.name: text for concept, text in items}
            from conceptlib.registry.store import manifest_sha256

            for name, text in on_disk.items():
                if name not in state:
                    problems.append(Problem("unindexed", name, "the concept folder is not in the index", True))
                elif state[name] != manifest_sha256(text):
                    problems.append(Problem("stale", name, "the index holds an older version of concept.json", True))
            folders = {p.name for p in self.concepts_dir.iterdir()} if self.concepts_dir.is_dir() else set()
            for name in state:
                if name not in on_disk and name not in folders:
                    problems.append(Problem("missing", name, "indexed, but its folder is gone", True))
            if fts_count != count:
                problems.append(Problem("search", "index.sqlite", "the search index is out of step with the concepts", True))
            return VerifyReport(len(items), problems, repaired)


def _history_after(before: Concept, content_hash: str) -> builtins.list[dict[str, Any]]:
    """``before``'s history, and ``before`` itself when new content (``content_hash``) replaces it."""
    history = list(before.history)
    if content_hash != before.content_hash:
        history.append({"content_hash": before.content_hash, "replaced": now(), "source": dict(before.source)})
    return history


def _content_hash(path: Path, kind: str) -> str:
    """The content hash of a canonical file: an embedding's vectors or a hypernetwork's tensors."""
    if kind == "hypernetwork":
        from conceptlib import hypernet

        return hypernet.read(path).content_hash()
    from conceptlib.formats import read

    return read(path, strict=False).content_hash()


def _reason(exc: BaseException, input_path: Path | None = None) -> str:
    """One line for a rejected input: the message and the next step.

    When the error is about another file than the input itself (a concept folder's
    ``token_identifier.txt``), that file is named, relative to the input when inside it.
    """
    text = refusal(exc, unreadable="")
    where: str | None = None
    if isinstance(exc, ConceptlibError):
        where = exc.path
    elif isinstance(exc, OSError):
        where = os.fspath(exc.filename) if isinstance(exc.filename, (str, os.PathLike)) else None
    if where is not None and input_path is not None and Path(where) != input_path:
        inside = Path(where).is_relative_to(input_path)
        text = f"{Path(where).relative_to(input_path).as_posix() if inside else where}: {text}"
    return text
