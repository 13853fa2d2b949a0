"""The neutral in-memory embedding every reader produces and every writer consumes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

# The record's limit: concept.py holds it, numpy-free, for concept.json's `steps` too.
from conceptlib.concept import MAX_STEP
from conceptlib.families import (
    ENCODERS,
    Family,
    describe_widths,
    family_for_encoders,
    sort_encoders,
)
from conceptlib.tensor import Tensor

CONTENT_HASH_VERSION = "cl1"
#: Vectors converted at a time by :meth:`Embedding.norms` and :meth:`Embedding.non_finite`:
#: float32/float64 copies of a whole file (up to 256 MiB) would take gigabytes.
_ROWS = 256


@dataclass(eq=False)
class Embedding:
    """A textual-inversion concept's vectors and what is known about them.

    Attributes:
        vectors: encoder key (``clip_l``, ``clip_h``, ``clip_g``) -> 2-D tensor ``[n, width]``.
            One key for SD 1.x/2.x, ``clip_l`` + ``clip_g`` for SDXL. Kept in the dtype read.
        token: the placeholder token stored in the file (diffusers key, e.g. ``<cat-toy>``),
            or None when the format stores none (A1111 uses the file name as the prompt word).
        name: the ``name`` field of A1111 files (or another display name).
        step: training steps, when recorded: an int in 0..:data:`MAX_STEP`, or None.
        checkpoint_hash: short hash of the checkpoint it was trained on (``sd_checkpoint``).
        checkpoint_name: that checkpoint's name (``sd_checkpoint_name``).
        source_format: the format it was read from (a key of ``conceptlib.formats.FORMATS``).
        metadata: other string metadata worth keeping (e.g. safetensors header metadata).
        source_path: the file it was read from (never written into files).
    """

    vectors: dict[str, Tensor]
    token: str | None = None
    name: str | None = None
    step: int | None = None
    checkpoint_hash: str | None = None
    checkpoint_name: str | None = None
    source_format: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    source_path: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        """Order the encoders canonically and check ``step``.

        Raises:
            ValueError: ``step`` is not None or an int in 0..MAX_STEP (a bool, a float, a value
                SQLite cannot store); readers never pass one, so this is a caller's bug.
        """
        self.vectors = {k: self.vectors[k] for k in sort_encoders(list(self.vectors))}
        step = self.step
        if step is not None and (
            isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEP
        ):
            raise ValueError(f"step must be None or an int in 0..{MAX_STEP}, got {type(step).__name__}")

    # --- shape --------------------------------------------------------------------------------
    @property
    def encoders(self) -> list[str]:
        """Encoder keys in canonical order."""
        return list(self.vectors)

    @property
    def num_vectors(self) -> int:
        """Number of token vectors (rows); the same for every encoder."""
        return next(iter(self.vectors.values())).shape[0]

    @property
    def widths(self) -> dict[str, int]:
        return {k: t.shape[1] for k, t in self.vectors.items()}

    @property
    def width_label(self) -> str:
        """``768``, ``1024`` or ``768 + 1280``."""
        return describe_widths(self.widths)

    @property
    def family(self) -> Family | None:
        """The base-model family the widths fit, or None."""
        return family_for_encoders(list(self.vectors))

    @property
    def is_sdxl(self) -> bool:
        return "clip_g" in self.vectors

    @property
    def dtype(self) -> str:
        """The dtype, or ``mixed`` (e.g. ``float32/float16``) when encoders differ."""
        dtypes = sorted({t.dtype for t in self.vectors.values()})
        return dtypes[0] if len(dtypes) == 1 else "/".join(t.dtype for t in self.vectors.values())

    # --- content ------------------------------------------------------------------------------
    def content_hash(self) -> str:
        """sha256 of the vectors alone, independent of the container and of metadata.

        The canonical encoding, per encoder in canonical order, is
        ``key \\0 n,width \\0 dtype \\0 little-endian bytes``, preceded by a version tag, so the
        same vectors in ``.pt``, ``.safetensors`` and PNG hash the same.
        """
        digest = hashlib.sha256(CONTENT_HASH_VERSION.encode() + b"\0")
        for key, tensor in self.vectors.items():
            shape = ",".join(str(d) for d in tensor.shape)
            digest.update(f"{key}\0{shape}\0{tensor.dtype}\0".encode())
            digest.update(tensor.tobytes())
        return digest.hexdigest()

    def non_finite(self) -> dict[str, int]:
        """Count of NaN/Inf values per encoder (only encoders that have any)."""
        counts = {}
        for key, tensor in self.vectors.items():
            bad = sum(int(np.count_nonzero(~np.isfinite(block))) for block in tensor.float32_blocks(_ROWS))
            if bad:
                counts[key] = bad
        return counts

    def norms(self) -> dict[str, list[float]]:
        """L2 norm of each vector, per encoder (useful to spot outliers)."""
        return {
            k: [float(x) for block in t.float32_blocks(_ROWS) for x in np.linalg.norm(block.astype(np.float64), axis=1)]
            for k, t in self.vectors.items()
        }

    def same_vectors(self, other: Embedding) -> bool:
        """Bit-exact equality of encoders, shapes, dtypes and values."""
        return self.encoders == other.encoders and all(
            self.vectors[k].equal(other.vectors[k]) for k in self.vectors
        )

    def prompt_word(self) -> str | None:
        """The word a user types: the stored token, else the A1111 name, else the file stem.

        AUTOMATIC1111 ignores the ``name`` field of ``.pt`` files and uses the file stem, but
        the stem of a renamed download is often meaningless, so the stored name wins here.
        """
        if self.token:
            return self.token
        if self.name:
            return self.name
        if self.source_path:
            from pathlib import Path

            stem = Path(self.source_path).name
            for suffix in (".safetensors", ".pt", ".bin", ".png", ".webp"):
                if stem.lower().endswith(suffix):
                    return stem[: -len(suffix)]
            return stem
        return None

    def with_token(self, token: str | None) -> Embedding:
        """A copy with another token."""
        return replace(self, token=token)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary (what ``conceptlib inspect --json`` prints, minus file facts)."""
        family = self.family
        return {
            "token": self.token,
            "name": self.name,
            "format": self.source_format,
            "vectors": self.num_vectors,
            "encoders": {k: {"width": t.shape[1], "dtype": t.dtype} for k, t in self.vectors.items()},
            "dtype": self.dtype,
            "family": family.key if family else None,
            "family_label": family.label if family else None,
            "complete": family is not None and set(family.encoders) == set(self.vectors),
            "step": self.step,
            "checkpoint_hash": self.checkpoint_hash,
            "checkpoint_name": self.checkpoint_name,
            "metadata": dict(self.metadata),
            "content_hash": self.content_hash(),
        }


def validate_vectors(vectors: dict[str, Tensor]) -> None:
    """Internal consistency of a vectors dict; raises ValueError (callers add the file name)."""
    if not vectors:
        raise ValueError("no vectors")
    rows = {t.shape[0] for t in vectors.values()}
    for key, tensor in vectors.items():
        if key not in ENCODERS:
            raise ValueError(f"unknown encoder key {key!r}")
        if tensor.ndim != 2 or tensor.shape[1] != ENCODERS[key]:
            raise ValueError(f"{key} must be [n, {ENCODERS[key]}], got {list(tensor.shape)}")
    if len(rows) != 1:
        raise ValueError(f"encoders hold different numbers of vectors: {sorted(rows)}")
