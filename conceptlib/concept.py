"""The concept record: what the library knows about one concept, as kept in ``concept.json``.

``concept.json`` in each concept folder is the source of truth; the SQLite index is derived from
it. This module is pure data (no torch, numpy or SQL), so the CLI can print a concept quickly.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

from conceptlib.families import family_label as label_for_family

#: The concept types a user can give (``--type``).
CONCEPT_TYPES: tuple[str, ...] = ("object", "style", "negative")
#: Version of the ``concept.json`` layout; readers refuse newer ones instead of misreading them.
MANIFEST_VERSION = 1
MANIFEST_NAME = "concept.json"
EMBEDDING_NAME = "embedding.safetensors"
#: A hypernetwork item's canonical file (conceptlib's safetensors form, see :mod:`conceptlib.hypernet`).
HYPERNETWORK_NAME = "hypernetwork.safetensors"
#: What a library item can be. Embeddings are the concepts proper; hypernetworks sit beside them.
KINDS: tuple[str, ...] = ("embedding", "hypernetwork")
ORIGINAL_DIR = "original"
IMAGES_DIR = "images"
#: The largest training-step count conceptlib keeps (an Embedding's ``step``, a record's
#: ``steps``): the index stores it in a SQLite INTEGER (signed 64-bit).
MAX_STEP = 2**63 - 1
# A longer digit string is past MAX_STEP (and int() of 5,000 digits raises).
_STEP_DIGITS = len(str(MAX_STEP))


def step_or_none(value: object) -> int | None:
    """A training-step count as conceptlib keeps it: an int in 0..:data:`MAX_STEP`, else None.

    Files and hand-edited ``concept.json`` files may say anything there. An int in range, a
    whole float (``1000.0``) and ASCII digits (``"1000"``) count; a bool, a fraction, NaN,
    a negative number, a value past MAX_STEP and anything else is None, never an error: the
    step count is a note, and SQLite could not store a larger one.

    Example:
        >>> step_or_none("1000"), step_or_none(2**64), step_or_none(True)
        (1000, None, None)
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer()):
            return None
        value = int(value)
    elif isinstance(value, str):
        digits = value.strip()
        # isascii first: isdigit alone accepts superscripts, which int() rejects.
        if not (digits.isascii() and digits.isdigit() and len(digits) <= _STEP_DIGITS):
            return None
        value = int(digits)
    if isinstance(value, int) and 0 <= value <= MAX_STEP:
        return value
    return None


def now() -> str:
    """The current UTC time as ISO 8601 with seconds (the form every record uses)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class FileRecord:
    """A file of a concept folder and its hash.

    Attributes:
        path: POSIX path relative to the concept folder (``original/EasyNegative.pt``).
        sha256: sha256 of the bytes, lowercase hex.
        size: size in bytes.
        root: the concept folder, when the record comes from a library (not serialised).
    """

    path: str
    sha256: str
    size: int
    root: str | None = field(default=None, compare=False, repr=False)

    def __fspath__(self) -> str:
        # Usable wherever a path is expected (open(), Path(), shutil) once it knows its folder.
        return os.path.join(self.root, self.path) if self.root else self.path

    @property
    def name(self) -> str:
        """The file name without its folder."""
        return self.path.rsplit("/", 1)[-1]

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, under: str | None = None) -> FileRecord:
        """Build from a manifest entry.

        Args:
            data: ``{"path", "sha256", "size"}``.
            under: the concept subfolder the path must lie in (``original``, ``images``).

        Raises:
            ValueError: the path could leave its folder (``..``, absolute, a backslash, an
                empty or ``.`` part, a control character) or lies outside ``under``. Every
                reader joins it to the concept folder, and push uploads what it names, so a
                hand-edited ``images/../../.ssh/id_rsa`` must not get that far.
        """
        path = str(data["path"])
        parts = path.split("/")
        bad = (
            not path or "\\" in path or path.startswith("/") or any(p in ("", ".", "..") for p in parts)
            or any(ord(c) < 0x20 or ord(c) == 0x7F for c in path)
            or (under is not None and (len(parts) < 2 or parts[0] != under))
        )  # fmt: skip
        if bad:
            where = f" (files go in {under}/)" if under else ""
            raise ValueError(f"concept.json lists the file path {path!r}, which is not a plain path inside the concept folder{where}")
        return cls(path, str(data["sha256"]), int(data.get("size") or 0))


#: Images are files too; the alias documents intent in signatures.
ImageRecord = FileRecord


@dataclass
class Concept:
    """One concept of the library.

    Attributes:
        name: unique slug, also the folder name (``cat-toy``).
        token: the word users type, as they type it (``<cat-toy>``); unique within a family.
        type: ``object``, ``style`` or ``negative``.
        description: free text.
        tags: sorted, lowercase.
        license: a license id or text (``mit``, ``creativeml-openrail-m``), if known.
        family: base-model family key (``sd1``, ``sd2``, ``sdxl``).
        encoders: encoder key -> vector width (``{"clip_l": 768}``).
        vectors: number of vectors per encoder.
        dtype: the vectors' dtype (``float32``, ``float16``, ...).
        content_hash: hash of the vectors alone (see ``Embedding.content_hash``).
        file_sha256: sha256 of the original embedding file as it was imported.
        embedding_sha256: sha256 of the canonical ``embedding.safetensors``.
        format: the format the original was read as (``a1111``, ``diffusers``, ...).
        checkpoint_hash: short hash of the checkpoint it was trained on, if recorded.
        checkpoint_name: that checkpoint's name, if recorded.
        steps: training steps, if recorded: an int in 0..:data:`MAX_STEP` (a manifest that says
            anything else reads as None, see :func:`step_or_none`).
        source: where it came from: ``{"type": "local", "path": ...}`` or
            ``{"type": "huggingface", "repo_id", "revision", "commit", "url", ...}``.
        files: the original files, kept byte for byte under ``original/``.
        images: sample or training images under ``images/``.
        history: earlier versions, oldest first: ``{"content_hash", "replaced", "source"}``.
        metadata: other string facts (``concept_type`` from the original, safetensors metadata).
        created: when it entered the library (ISO 8601, UTC).
        updated: when its record last changed.
        kind: ``embedding`` or ``hypernetwork``. A hypernetwork item has no vectors (``vectors``
            0, ``encoders`` empty); its token is the word of ``<hypernet:WORD:MULT>``, its
            ``content_hash`` hashes its tensors, and ``metadata`` holds its widths and structure.
        path: the concept folder, when the record comes from a library (not serialised).
    """

    name: str
    token: str
    type: str = "object"
    description: str | None = None
    tags: list[str] = field(default_factory=list)
    license: str | None = None
    family: str | None = None
    encoders: dict[str, int] = field(default_factory=dict)
    vectors: int = 0
    dtype: str = ""
    content_hash: str = ""
    file_sha256: str | None = None
    embedding_sha256: str | None = None
    format: str | None = None
    checkpoint_hash: str | None = None
    checkpoint_name: str | None = None
    steps: int | None = None
    source: dict[str, Any] = field(default_factory=dict)
    files: list[FileRecord] = field(default_factory=list)
    images: list[FileRecord] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    created: str = ""
    updated: str = ""
    kind: str = "embedding"
    path: Path | None = field(default=None, compare=False, repr=False)

    # --- derived ------------------------------------------------------------------------------
    @property
    def family_label(self) -> str:
        """``SD 1.x``, ``SD 2.x``, ``SDXL`` or ``unknown``."""
        return label_for_family(self.family)

    @property
    def width_label(self) -> str:
        """``768`` or ``768 + 1280``."""
        return " + ".join(str(w) for w in self.encoders.values())

    @property
    def concept_type(self) -> str:
        """Alias of :attr:`type` (the name sd-concepts-library uses)."""
        return self.type

    @property
    def embedding_path(self) -> Path | None:
        """The canonical ``embedding.safetensors``, when the folder is known."""
        return self.path / EMBEDDING_NAME if self.path else None

    @property
    def canonical_name(self) -> str:
        """The canonical file's name: ``embedding.safetensors`` or ``hypernetwork.safetensors``."""
        return HYPERNETWORK_NAME if self.kind == "hypernetwork" else EMBEDDING_NAME

    @property
    def prompt_word(self) -> str:
        """What to type in AUTOMATIC1111 or ComfyUI after export: the token without ``<>``."""
        word = self.token.strip()
        if len(word) > 2 and word.startswith("<") and word.endswith(">"):
            word = word[1:-1]
        return word or self.name

    def attach(self, folder: Path) -> Concept:
        """Record the folder the concept lives in (so file records resolve to real paths)."""
        self.path = folder
        for record in (*self.files, *self.images):
            record.root = str(folder)
        return self

    # --- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The ``concept.json`` content (plain JSON types, stable key order)."""
        return {
            "version": MANIFEST_VERSION,
            "name": self.name,
            "token": self.token,
            "type": self.type,
            "description": self.description,
            "tags": list(self.tags),
            "license": self.license,
            "family": self.family,
            "encoders": dict(self.encoders),
            "vectors": self.vectors,
            "dtype": self.dtype,
            "content_hash": self.content_hash,
            "file_sha256": self.file_sha256,
            "embedding_sha256": self.embedding_sha256,
            "format": self.format,
            "checkpoint_hash": self.checkpoint_hash,
            "checkpoint_name": self.checkpoint_name,
            "steps": self.steps,
            "source": dict(self.source),
            "files": [f.to_dict() for f in self.files],
            "images": [i.to_dict() for i in self.images],
            "history": [dict(h) for h in self.history],
            "metadata": dict(self.metadata),
            "created": self.created,
            "updated": self.updated,
            # Only where it is not an embedding: every manifest written before kinds existed
            # stays byte for byte what this version writes.
            **({"kind": self.kind} if self.kind != "embedding" else {}),
        }

    def to_json(self) -> str:
        """``concept.json`` text: indented, UTF-8 kept readable (``铃兰``, not ``\\u94c3``)."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Concept:
        """Build from a ``concept.json`` dict.

        Raises:
            ValueError: a required field is missing or the layout is newer than this version.
        """
        version = data.get("version", 1)
        if not isinstance(version, int) or version > MANIFEST_VERSION:
            raise ValueError(f"concept.json version {version!r} is newer than this conceptlib reads ({MANIFEST_VERSION})")
        for key in ("name", "token", "content_hash"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise ValueError(f"concept.json lacks {key!r}")
        kind = data.get("kind", "embedding")
        if kind not in KINDS:
            raise ValueError(f"concept.json says kind {kind!r}, which is none of {', '.join(KINDS)}")
        return cls(
            name=data["name"],
            token=data["token"],
            type=str(data.get("type") or "object"),
            description=data.get("description"),
            tags=[str(t) for t in data.get("tags") or []],
            license=data.get("license"),
            family=data.get("family"),
            encoders={str(k): int(v) for k, v in (data.get("encoders") or {}).items()},
            vectors=int(data.get("vectors") or 0),
            dtype=str(data.get("dtype") or ""),
            content_hash=data["content_hash"],
            file_sha256=data.get("file_sha256"),
            embedding_sha256=data.get("embedding_sha256"),
            format=data.get("format"),
            checkpoint_hash=data.get("checkpoint_hash"),
            checkpoint_name=data.get("checkpoint_name"),
            # A hand-edited 2**64 would overflow the index's INTEGER column on reindex.
            steps=step_or_none(data.get("steps")),
            source=dict(data.get("source") or {}),
            files=[FileRecord.from_dict(f, under=ORIGINAL_DIR) for f in data.get("files") or []],
            images=[FileRecord.from_dict(i, under=IMAGES_DIR) for i in data.get("images") or []],
            history=[dict(h) for h in data.get("history") or []],
            metadata={str(k): str(v) for k, v in (data.get("metadata") or {}).items()},
            created=str(data.get("created") or ""),
            updated=str(data.get("updated") or ""),
            kind=kind,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Concept:
        """Parse ``concept.json`` text.

        Raises:
            ValueError: not JSON, not an object, or not a valid record.
        """
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("concept.json is not a JSON object")
        return cls.from_dict(data)


class ConceptRow(NamedTuple):
    """The six fields ``conceptlib list`` shows in its table, and nothing else.

    The table of a 10,000-concept library is printed from these: reading and building only
    what is shown takes about 60% of the time full :class:`ConceptSummary` rows take.
    """

    name: str
    token: str
    type: str
    family: str | None
    vectors: int
    tags: list[str]

    @property
    def family_label(self) -> str:
        """``SD 1.x``, ``SD 2.x``, ``SDXL`` or ``unknown``."""
        return label_for_family(self.family)


@dataclass(slots=True)
class ConceptSummary:
    """One row of ``list`` and ``search``: the indexed fields, without files and history.

    Attributes mirror :class:`Concept`; ``source_repo_id`` is set for concepts from the Hub.
    (Slots, not frozen: ``list`` builds 10,000 of these and a frozen init costs twice as much.)
    """

    name: str
    token: str
    type: str
    family: str | None
    encoders: dict[str, int]
    vectors: int
    dtype: str
    tags: list[str]
    description: str | None
    license: str | None
    content_hash: str
    source_type: str | None
    source_repo_id: str | None
    created: str
    updated: str
    kind: str = "embedding"

    @property
    def family_label(self) -> str:
        """``SD 1.x``, ``SD 2.x``, ``SDXL`` or ``unknown``."""
        return label_for_family(self.family)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``conceptlib list --json``)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "token": self.token,
            "type": self.type,
            "family": self.family,
            "encoders": dict(self.encoders),
            "vectors": self.vectors,
            "dtype": self.dtype,
            "tags": list(self.tags),
            "description": self.description,
            "license": self.license,
            "content_hash": self.content_hash,
            "source_type": self.source_type,
            "source_repo_id": self.source_repo_id,
            "created": self.created,
            "updated": self.updated,
        }
