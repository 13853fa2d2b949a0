"""Base models: recognise any Stable Diffusion 1.x/2.x/XL model, describe it, fingerprint it.

>>> from conceptlib.models import read_model
>>> model = read_model("stable-diffusion-v1-5")        # a diffusers folder  # doctest: +SKIP
>>> model = read_model("v1-5-pruned-emaonly.safetensors")  # a single file   # doctest: +SKIP
>>> model = read_model("sdxl")                          # a family name      # doctest: +SKIP
>>> model.family, model.prediction_type, [e.width for e in model.encoders]  # doctest: +SKIP
('sd1', 'epsilon', [768])

Nothing here imports torch. A diffusers folder is read from its JSON configs and tokenizer files
(weights are optional); a ``.safetensors`` checkpoint from its header, with only the
token-embedding matrices read from the payload; a ``.ckpt`` through conceptlib's allowlist
pickle reader, which never runs code from the file.

What a description holds (:class:`ModelInfo`): the family (``sd1``, ``sd2``, ``sdxl``), the
prediction type, the text encoders with their width, context length, tokenizer and a
*fingerprint* (sha256 of the token-embedding matrix as stored): two models with the same
fingerprint accept each other's concepts exactly. File hashes use the forms other tools show:
full sha256, AutoV2 / AUTOMATIC1111 short hash (10 hex), the legacy AUTOMATIC1111 hash (8 hex,
what old embeddings record as ``sd_checkpoint``) and the addnet payload hash for safetensors.

Registered models (``conceptlib models add``) live as JSON records in ``<home>/models/``, with
a copy of each distinct tokenizer vocabulary in ``<home>/models/vocab/`` (stored once, keyed by
its hash), so validation against a registered model works offline even when the model's files
have moved.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from conceptlib._filecache import FileCache, identity
from conceptlib.config import home as library_home
from conceptlib.errors import (
    CorruptFileError,
    DestinationExistsError,
    GitLFSPointerError,
    ModelNotFoundError,
    ModelWeightsMissingError,
    UnknownModelError,
    UnsafePickleError,
    UsageError,
)
from conceptlib.families import (
    ENCODERS,
    FAMILIES,
    FOREIGN_WIDTHS,
    WIDTH_TO_ENCODER,
    describe_widths,
    family_for_encoders,
    family_model_key,
    sort_encoders,
)
from conceptlib.tensor import Tensor

if TYPE_CHECKING:
    from conceptlib.embedding import Embedding

__all__ = [
    "CONTEXT_LENGTH",
    "FAMILY_MODELS",
    "EncoderInfo",
    "ModelInfo",
    "NormStats",
    "TokenizerInfo",
    "add_model",
    "compatible",
    "family_model",
    "get_model",
    "list_models",
    "models_dir",
    "read_model",
    "require_weights",
    "resolve_model",
    "token_matrix",
    "tokens_by_id",
]

#: Tokens a CLIP text encoder sees, BOS and EOS included.
CONTEXT_LENGTH = 77
#: File suffixes that hold weights (hashed, and checked for Git LFS pointers).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
#: Canonical hash (see :func:`_vocab_hash`) of the CLIP BPE vocabulary every SD 1.x/2.x/XL
#: tokenizer uses. Single-file checkpoints carry no tokenizer, so validation falls back on a
#: stored copy of this vocabulary when one was registered before.
STANDARD_CLIP_VOCAB = "5047b556ce86ccaf6aa22b3ffccfc52d391ea4accdab9c2f2407da5b742d4363"

_LFS_MAGIC = b"version https://git-lfs"
_SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024
_LEGACY_HASH_OFFSET = 0x100000
_LEGACY_HASH_SIZE = 0x10000
_HASH_CHUNK = 1 << 20
#: Rows of a token matrix converted at a time for its norm statistics (4,096 x 1,280 x 8 B = 40 MB).
_NORM_ROWS = 4096
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")

# Single-file checkpoints (original LDM / SGM layout): state-dict keys of the text encoders'
# token-embedding matrices. The key says where an encoder lives; its width names the encoder.
_CHECKPOINT_TOKEN_KEYS: tuple[str, ...] = (
    "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",  # SD 1.x
    "cond_stage_model.transformer.embeddings.token_embedding.weight",  # SD 1.x, pre-2022 naming
    "cond_stage_model.model.token_embedding.weight",  # SD 2.x (OpenCLIP ViT-H)
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",  # SDXL
    "conditioner.embedders.1.model.token_embedding.weight",  # SDXL (OpenCLIP ViT-bigG)
    "conditioner.embedders.0.model.token_embedding.weight",  # SDXL refiner
)
# Keys that mark model families conceptlib deliberately does not handle.
_FOREIGN_CHECKPOINT_MARKERS: dict[str, str] = {
    "model.diffusion_model.joint_blocks.": "Stable Diffusion 3",
    "model.diffusion_model.double_blocks.": "Flux",
    "double_blocks.": "Flux",
    "joint_blocks.": "Stable Diffusion 3",
    "text_encoders.t5xxl.": "a model with a T5 text encoder (SD3/Flux)",
}
# transformers < 5 saves CLIP text encoders with a ``text_model.`` prefix, transformers 5 without.
_DIFFUSERS_TOKEN_KEYS = ("text_model.embeddings.token_embedding.weight", "embeddings.token_embedding.weight")
_UNET_IN_KEY = "model.diffusion_model.input_blocks.0.0.weight"
# Text-encoder weight files of a diffusers component, in order of preference.
_TEXT_ENCODER_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "model.fp16.safetensors",
    "model.fp16.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "pytorch_model.fp16.bin",
)


# --- descriptions ------------------------------------------------------------------------------


@dataclass
class NormStats:
    """L2 norms of a text encoder's token-embedding rows (the vocabulary's vectors).

    Attributes:
        count: rows measured.
        mean, std, min, p01, median, p99, max: statistics of the norms.
    """

    count: int
    mean: float
    std: float
    min: float
    p01: float
    median: float
    p99: float
    max: float

    @classmethod
    def of(cls, matrix: Tensor) -> NormStats:
        """Statistics of the row norms of a ``[vocab, width]`` matrix."""
        # A block of rows at a time: a float64 copy of SD's whole 49,408-row matrix is 300 MB
        # (SDXL's clip_g 500 MB); each row's norm is the same computed in any block.
        norms = np.concatenate(
            [np.linalg.norm(block.astype(np.float64), axis=1) for block in matrix.float32_blocks(_NORM_ROWS)]
        ) if matrix.shape[0] else np.zeros(0)
        p01, median, p99 = np.percentile(norms, [1, 50, 99])
        return cls(
            count=int(norms.size),
            mean=float(norms.mean()),
            std=float(norms.std()),
            min=float(norms.min()),
            p01=float(p01),
            median=float(median),
            p99=float(p99),
            max=float(norms.max()),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {k: getattr(self, k) for k in ("count", "mean", "std", "min", "p01", "median", "p99", "max")}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NormStats:
        """Rebuild from :meth:`to_dict` output."""
        return cls(int(data["count"]), *(float(data[k]) for k in ("mean", "std", "min", "p01", "median", "p99", "max")))


@dataclass
class TokenizerInfo:
    """A CLIP BPE tokenizer as far as token collisions are concerned.

    Attributes:
        component: the diffusers folder (``tokenizer``, ``tokenizer_2``).
        vocab_size: entries in the BPE vocabulary (49,408 for every SD model).
        vocab_hash: sha256 of the vocabulary in canonical form (identical vocabularies from
            ``vocab.json`` or ``tokenizer.json`` hash alike).
        added_tokens: tokens added on top (e.g. concepts saved into the model), special ones
            excluded.
        model_max_length: the tokenizer's context length.
        path: the folder it was read from (None for records whose files are gone).
    """

    component: str
    vocab_size: int
    vocab_hash: str
    added_tokens: list[str] = field(default_factory=list)
    model_max_length: int = CONTEXT_LENGTH
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "component": self.component,
            "vocab_size": self.vocab_size,
            "vocab_hash": self.vocab_hash,
            "added_tokens": list(self.added_tokens),
            "model_max_length": self.model_max_length,
            "path": self.path,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenizerInfo:
        """Rebuild from :meth:`to_dict` output."""
        return cls(
            component=str(data["component"]),
            vocab_size=int(data["vocab_size"]),
            vocab_hash=str(data["vocab_hash"]),
            added_tokens=[str(t) for t in data.get("added_tokens") or []],
            model_max_length=int(data.get("model_max_length") or CONTEXT_LENGTH),
            path=data.get("path"),
        )


@dataclass
class EncoderInfo:
    """One text encoder of a model.

    Attributes:
        key: ``clip_l`` (768), ``clip_h`` (1024) or ``clip_g`` (1280).
        width: the token-embedding width, the size every concept vector must have.
        context_length: tokens per prompt chunk, BOS and EOS included (77).
        vocab_size: rows of the token-embedding matrix, when known.
        component: where it lives (``text_encoder``, ``text_encoder_2``, or the checkpoint's
            state-dict prefix).
        tokenizer: its tokenizer, when the model carries one.
        fingerprint: sha256 of the token-embedding matrix bytes as stored, when weights exist.
        dtype: the dtype of that matrix.
        norms: statistics of the vocabulary's vector norms, when weights exist.
    """

    key: str
    width: int
    context_length: int = CONTEXT_LENGTH
    vocab_size: int | None = None
    component: str | None = None
    tokenizer: TokenizerInfo | None = None
    fingerprint: str | None = None
    dtype: str | None = None
    norms: NormStats | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "key": self.key,
            "width": self.width,
            "context_length": self.context_length,
            "vocab_size": self.vocab_size,
            "component": self.component,
            "tokenizer": self.tokenizer.to_dict() if self.tokenizer else None,
            "fingerprint": self.fingerprint,
            "dtype": self.dtype,
            "norms": self.norms.to_dict() if self.norms else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderInfo:
        """Rebuild from :meth:`to_dict` output."""
        return cls(
            key=str(data["key"]),
            width=int(data["width"]),
            context_length=int(data.get("context_length") or CONTEXT_LENGTH),
            vocab_size=data.get("vocab_size"),
            component=data.get("component"),
            tokenizer=TokenizerInfo.from_dict(data["tokenizer"]) if data.get("tokenizer") else None,
            fingerprint=data.get("fingerprint"),
            dtype=data.get("dtype"),
            norms=NormStats.from_dict(data["norms"]) if data.get("norms") else None,
        )


@dataclass
class ModelInfo:
    """What conceptlib knows about a base model.

    Attributes:
        source: what was given (a path or a family name).
        kind: ``diffusers`` (a folder), ``checkpoint`` (one file) or ``family`` (a name only).
        family: ``sd1``, ``sd2`` or ``sdxl``.
        label: a readable description (``SD 2.x base (512 px)``, ``SDXL refiner``).
        prediction_type: ``epsilon``, ``v_prediction``, or None when the files do not say
            (SD 2.x single files: 512-base is epsilon, 768 is v).
        encoders: the text encoders, in canonical order (clip_l, clip_h, clip_g).
        variant: ``inpainting``, ``refiner`` or None.
        sample_size: the native image size in pixels, when known.
        pipeline_class: diffusers' pipeline class name, for folders.
        hashes: the file's hashes for single files: ``sha256``, ``autov2`` (10 hex), ``autov1``
            (legacy AUTOMATIC1111, 8 hex), ``addnet`` (safetensors payload).
        files: for folders, each weight file's relative path -> its hashes.
        notes: things worth knowing that are not errors (assumptions made).
        path: the absolute path read, None for family names.
        name: the registered name, for models from the registry.
        added: when it was registered (ISO 8601, UTC).
        model_config: for a registered single-file checkpoint, where its diffusers configs
            and tokenizer come from (a folder or a Hub repository; see
            :mod:`conceptlib.single_file`), or None for the family's reference repository.
    """

    source: str
    kind: str
    family: str
    label: str
    prediction_type: str | None
    encoders: list[EncoderInfo]
    variant: str | None = None
    sample_size: int | None = None
    pipeline_class: str | None = None
    hashes: dict[str, str] = field(default_factory=dict)
    files: dict[str, dict[str, str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    path: str | None = None
    name: str | None = None
    added: str | None = None
    model_config: str | None = None

    # --- derived ------------------------------------------------------------------------------
    @property
    def encoder_keys(self) -> list[str]:
        """Encoder keys in canonical order."""
        return [e.key for e in self.encoders]

    @property
    def widths(self) -> dict[str, int]:
        """Encoder key -> width."""
        return {e.key: e.width for e in self.encoders}

    @property
    def family_label(self) -> str:
        """``SD 1.x``, ``SD 2.x`` or ``SDXL`` (the family, not the variant)."""
        return FAMILIES[self.family].label if self.family in FAMILIES else self.family

    @property
    def width_label(self) -> str:
        """``768``, ``1024`` or ``768 + 1280``."""
        return describe_widths(self.widths)

    @property
    def has_weights(self) -> bool:
        """Whether the text-encoder weights were read (fingerprints and norms known)."""
        return any(e.fingerprint for e in self.encoders)

    @property
    def display_name(self) -> str:
        """The registered name, else the source."""
        return self.name or self.source

    def encoder(self, key: str) -> EncoderInfo | None:
        """The encoder with this key, or None."""
        return next((e for e in self.encoders if e.key == key), None)

    def all_hashes(self) -> list[dict[str, str]]:
        """Every hash set known: the single file's, then each weight file's."""
        sets = [self.hashes] if self.hashes else []
        sets.extend(self.files.values())
        return sets

    def fingerprints(self) -> dict[str, str]:
        """Encoder key -> fingerprint, for encoders whose weights were read."""
        return {e.key: e.fingerprint for e in self.encoders if e.fingerprint}

    def vocabulary(self, key: str, *, home: str | os.PathLike[str] | None = None) -> frozenset[str] | None:
        """The tokens the encoder's tokenizer knows: BPE entries plus added tokens.

        Looks in the tokenizer folder, then in the registry's stored copy, then (for models
        without a tokenizer, such as single-file checkpoints) in the stored standard CLIP
        vocabulary, which every SD 1.x/2.x/XL tokenizer shares.

        Args:
            key: the encoder key.
            home: the library folder (default: ``CONCEPTLIB_HOME``).

        Returns:
            The token strings (``cat``, ``cat</w>``, ...), or None when no vocabulary is at hand.
        """
        enc = self.encoder(key)
        if enc is None:
            return None
        tok = enc.tokenizer
        if tok is None:
            stored = _stored_vocab_path(STANDARD_CLIP_VOCAB, home)
            return _load_vocab_file(str(stored)) if stored.is_file() else None
        vocab: frozenset[str] | None = None
        if tok.path:
            folder = Path(tok.path)
            for name in ("vocab.json", "tokenizer.json"):
                candidate = folder / name
                if candidate.is_file():
                    loaded = _load_vocab_file(str(candidate))
                    # A folder changed since it was read must not silently stand in for it.
                    if _vocab_hash_cached(str(candidate)) == tok.vocab_hash:
                        vocab = loaded
                    break
        if vocab is None:
            stored = _stored_vocab_path(tok.vocab_hash, home)
            if stored.is_file():
                vocab = _load_vocab_file(str(stored))
        if vocab is None:
            return None
        return vocab | frozenset(tok.added_tokens) if tok.added_tokens else vocab

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description (what ``models inspect --json`` prints)."""
        return self.to_dict()

    def to_dict(self) -> dict[str, Any]:
        """The registry record / JSON form."""
        return {
            "name": self.name,
            "source": self.source,
            "kind": self.kind,
            "family": self.family,
            "family_label": self.family_label,
            "label": self.label,
            "variant": self.variant,
            "prediction_type": self.prediction_type,
            "sample_size": self.sample_size,
            "pipeline_class": self.pipeline_class,
            "encoders": [e.to_dict() for e in self.encoders],
            "hashes": dict(self.hashes),
            "files": {k: dict(v) for k, v in self.files.items()},
            "notes": list(self.notes),
            "path": self.path,
            "added": self.added,
            "model_config": self.model_config,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        """Rebuild from :meth:`to_dict` output."""
        return cls(
            source=str(data["source"]),
            kind=str(data["kind"]),
            family=str(data["family"]),
            label=str(data.get("label") or data["family"]),
            prediction_type=data.get("prediction_type"),
            encoders=[EncoderInfo.from_dict(e) for e in data.get("encoders") or []],
            variant=data.get("variant"),
            sample_size=data.get("sample_size"),
            pipeline_class=data.get("pipeline_class"),
            hashes={str(k): str(v) for k, v in (data.get("hashes") or {}).items()},
            files={str(k): {str(a): str(b) for a, b in v.items()} for k, v in (data.get("files") or {}).items()},
            notes=[str(n) for n in data.get("notes") or []],
            path=data.get("path"),
            name=data.get("name"),
            added=data.get("added"),
            model_config=data.get("model_config"),
        )


# --- family names ------------------------------------------------------------------------------

#: Family names accepted wherever a model is expected: key -> (family, label, prediction, size).
FAMILY_MODELS: dict[str, tuple[str, str, str, int]] = {
    "sd1": ("sd1", "SD 1.x", "epsilon", 512),
    "sd2": ("sd2", "SD 2.x base (512 px)", "epsilon", 512),
    "sd2-v": ("sd2", "SD 2.x 768-v", "v_prediction", 768),
    "sdxl": ("sdxl", "SDXL", "epsilon", 1024),
}


def family_model(name: str) -> ModelInfo:
    """A model described by its family name alone (no tokenizer, no weights, no hashes).

    Args:
        name: ``sd1``, ``sd2``, ``sd2-v`` or ``sdxl`` (also ``sd15``, ``sd21``, ``sdxl-base``...).

    Returns:
        The description; validation against it checks widths and context only.

    Raises:
        ModelNotFoundError: not a family name.

    Example:
        >>> family_model("sd2-v").prediction_type
        'v_prediction'
    """
    key = family_model_key(name)
    if key is None:
        raise ModelNotFoundError(name)
    family, label, prediction, size = FAMILY_MODELS[key]
    encoders = [EncoderInfo(k, ENCODERS[k]) for k in FAMILIES[family].encoders]
    return ModelInfo(
        source=key, kind="family", family=family, label=label, prediction_type=prediction,
        encoders=encoders, sample_size=size,
    )  # fmt: skip


# --- reading -----------------------------------------------------------------------------------


def read_model(
    source: str | os.PathLike[str], *, hash_files: bool = True, home: str | os.PathLike[str] | None = None
) -> ModelInfo:
    """Describe a model from a diffusers folder, a single-file checkpoint or a family name.

    What a path gives is computed once per version of its files and kept in the library's
    cache (``<home>/cache/``, see :mod:`conceptlib._filecache`): the description (which reads
    the text encoder's token matrix) and each weight file's hashes (seconds per GB). A file
    whose size, modification time or inode changed is read again.

    Args:
        source: a diffusers folder (or its ``model_index.json``), a ``.safetensors`` /
            ``.ckpt`` / ``.pt`` / ``.bin`` checkpoint, or a family name (``sd1``, ``sd2``,
            ``sd2-v``, ``sdxl``).
        hash_files: compute the sha256 of every weight file (seconds per GB on first sight,
            then from the cache). Fingerprints are computed either way, from the
            token-embedding matrices alone.
        home: the library folder whose cache is used (default: ``CONCEPTLIB_HOME``).

    Returns:
        The model's description.

    Raises:
        GitLFSPointerError: a weight file is a Git LFS pointer, not the weights.
        UnknownModelError: not a Stable Diffusion 1.x/2.x/XL model (or not a model at all).
        CorruptFileError: a truncated or damaged checkpoint or config.
        UnsafePickleError: a ``.ckpt`` asks for code outside the allowlist (nothing ran).
        ModelNotFoundError: neither an existing path nor a family name.

    Example:
        >>> read_model("sd1").encoders[0].width
        768
    """
    path = Path(source).expanduser()
    if not path.exists():
        if isinstance(source, str) and os.sep not in source and "/" not in source:
            return family_model(source)
        raise ModelNotFoundError(str(source), hint="check the path")
    path = path.resolve()
    if path.is_file() and path.name == "model_index.json":
        path = path.parent
    cache = _Caches(home)
    info, weight_files = _described(path, cache)
    if hash_files:
        if info.kind == "diffusers":
            info.files = {p.relative_to(path).as_posix(): cache.hashes_of(p) for p in weight_files}
        else:
            info.hashes = cache.hashes_of(path)
    return info


#: Part of every description's cache key: bumped when reading a model learns something new, so
#: descriptions cached by an older conceptlib are read again.
_DESCRIPTION_VERSION = 1


class _Caches:
    """The library's file caches for one :func:`read_model` call (see :mod:`conceptlib._filecache`)."""

    def __init__(self, home: str | os.PathLike[str] | None) -> None:
        root = library_home(home)
        self.hashes = FileCache(root, "hashes", _is_hashes)
        self.models = FileCache(root, "models", _is_description)

    def hashes_of(self, path: Path) -> dict[str, str]:
        """The weight file's hashes, from the cache while the file is unchanged."""
        stamp = identity(path)
        cached = self.hashes.get(str(path), stamp)
        if cached is not None:
            return dict(cached)
        hashes = _hash_file(path)
        # Stamped before hashing: a file changed while it was read gets a new stamp, so the
        # digest of the old bytes is never stored under the new version.
        self.hashes.put(str(path), stamp, hashes)
        return hashes


def _is_hashes(value: Any) -> bool:
    return (
        isinstance(value, dict) and isinstance(value.get("sha256"), str) and len(value["sha256"]) == 64
        and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    )  # fmt: skip


def _is_description(value: Any) -> bool:
    if not isinstance(value, dict) or not isinstance(value.get("weights"), list):
        return False
    ModelInfo.from_dict(value["info"])  # raises on a damaged entry: the cache treats it as missing
    return all(isinstance(w, str) for w in value["weights"])


def _model_files(path: Path) -> list[Path]:
    """Every file a description of ``path`` depends on (hidden folders such as ``.cache`` aside)."""
    if not path.is_dir():
        yaml = path.with_suffix(".yaml")
        return [path, yaml] if yaml.is_file() else [path]
    return sorted(
        p for p in path.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )  # fmt: skip


def _described(path: Path, cache: _Caches) -> tuple[ModelInfo, list[Path]]:
    """The description of a folder or single file without hashes, and its weight files.

    From the cache while every file the folder holds (or the file and its ``.yaml``) keeps its
    stamp; otherwise read (token matrix, tokenizer, configs) and stored.
    """
    files = _model_files(path)
    base = path if path.is_dir() else path.parent
    try:
        stamp: list[Any] = [[p.relative_to(base).as_posix(), *identity(p)] for p in files]
    except OSError:
        stamp = []  # a file vanished while listing: read, and let the reading say what is wrong
    key = f"{_DESCRIPTION_VERSION}:{path}"
    cached = cache.models.get(key, stamp) if stamp else None
    if cached is not None:
        info = ModelInfo.from_dict(cached["info"])
        _vouch_for_vocabularies(info, base, stamp)
        return info, [path / w for w in cached["weights"]]
    if path.is_dir():
        weights = [p for p in files if p.suffix in WEIGHT_SUFFIXES]
        info = _read_diffusers(path, weights)
    else:
        info = _read_checkpoint(path)
        weights = [path]
    if stamp:
        relative = [w.relative_to(path).as_posix() if w != path else "" for w in weights]
        cache.models.put(key, stamp, {"info": info.to_dict(), "weights": relative})
    return info, weights


#: The diffusers components conceptlib's pipelines load weights for (tokenizers, schedulers and
#: safety checkers have none, or are not loaded).
_WEIGHTED_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def token_matrix(model: ModelInfo, key: str) -> Tensor:
    """An encoder's token-embedding matrix, read straight from the model's weight file.

    Only that tensor is read (a seek into a safetensors file; a pickle goes through the
    allowlist reader); no model is built and torch is not needed.

    Args:
        model: a diffusers folder or a single-file checkpoint.
        key: the encoder (``clip_l``, ``clip_h``, ``clip_g``).

    Returns:
        The ``[vocab, width]`` matrix in its stored dtype.

    Raises:
        UsageError: a family name (no weights), an encoder the model does not have, or a model
            whose files hold no text-encoder weights.
    """
    enc = model.encoder(key)
    if enc is None:
        raise UsageError(f"{model.display_name} has no {key} encoder (it has {', '.join(model.encoder_keys)})")
    if model.kind not in ("diffusers", "checkpoint") or not model.path:
        raise UsageError(
            f"{model.display_name} is a family name: it has no weights to read the vocabulary's vectors from",
            hint="pass a diffusers folder or a .safetensors checkpoint with --model (or a model registered with `conceptlib models add`)",
        )
    root = Path(model.path)
    matrix: Tensor | None = None
    if model.kind == "diffusers":
        weights = _text_encoder_weights(root / (enc.component or "text_encoder"))
        matrix = _token_matrix(weights, _DIFFUSERS_TOKEN_KEYS) if weights is not None else None
    elif enc.component:
        matrix = _token_matrix(root, (f"{enc.component}.token_embedding.weight",))
    if matrix is None:
        raise UsageError("holds no text-encoder weights: the vocabulary's vectors are unknown", path=root)
    if matrix.ndim != 2 or matrix.shape[1] != enc.width:
        raise CorruptFileError(f"token embedding has shape {list(matrix.shape)}, the config says width {enc.width}", path=root)
    return matrix


def tokens_by_id(model: ModelInfo, key: str, *, home: str | os.PathLike[str] | None = None) -> list[str] | None:
    """The encoder's vocabulary in id order (``tokens[i]`` is row ``i`` of :func:`token_matrix`).

    From the model's tokenizer folder, else the registry's stored copy of its vocabulary (every
    SD 1.x/2.x/XL tokenizer shares the standard CLIP one, which single files lack). Added tokens
    follow the BPE entries, as the tokenizer numbers them.

    Returns:
        The token strings, or None when no vocabulary is at hand.
    """
    enc = model.encoder(key)
    if enc is None:
        return None
    tok = enc.tokenizer
    vocab: dict[str, int] | None = None
    if tok is not None and tok.path:
        folder = Path(tok.path)
        for name in ("vocab.json", "tokenizer.json"):
            if (folder / name).is_file():
                vocab = _read_vocab(folder / name)
                break
    if vocab is None:
        stored = _stored_vocab_path(tok.vocab_hash if tok is not None else STANDARD_CLIP_VOCAB, home)
        if stored.is_file():
            vocab = _read_vocab(stored)
    if vocab is None:
        return None
    top = max(vocab.values(), default=-1)
    if top >= 2 * len(vocab) + 1024:  # ids number the matrix rows: a list that long is no vocabulary
        raise CorruptFileError(f"vocabulary ids run to {top} for {len(vocab)} tokens", path=tok.path if tok is not None else None)
    tokens = [""] * (top + 1)
    for token, index in vocab.items():
        if 0 <= index < len(tokens):
            tokens[index] = token
    return tokens + list(tok.added_tokens if tok is not None else [])


def require_weights(model: ModelInfo) -> None:
    """Check that a diffusers folder holds the weight files rendering and training load.

    A folder of configs alone (``model_index.json``, ``*/config.json`` and a tokenizer) is a
    whole model for :func:`read_model` and validation, but diffusers fails deep inside
    ``from_pretrained`` on it. ``render``, ``preview`` and ``train`` call this first, so the
    user gets one line before anything is loaded or written. Checkpoints (the file is the
    weights) and family names (callers say what they need instead) pass unchecked.

    Args:
        model: the model about to be loaded.

    Raises:
        ModelWeightsMissingError: a component listed in ``model_index.json`` (or present as a
            folder) among unet, vae, text_encoder, text_encoder_2 has no weight file.

    Example:
        >>> require_weights(read_model("sd1"))  # a family name: nothing to check
    """
    if model.kind != "diffusers" or not model.path:
        return
    folder = Path(model.path)
    index_path = folder / "model_index.json"
    index = _read_json(index_path) if index_path.is_file() else {}
    if index:
        wanted = [c for c in _WEIGHTED_COMPONENTS if isinstance(index.get(c), list) and index[c] and index[c][0] is not None]
    else:
        wanted = [c for c in _WEIGHTED_COMPONENTS if (folder / c).is_dir()]

    def has_weights(component: Path) -> bool:
        # Sharded weights count too (their shards carry the suffix); a `.lfs-pointer` copy or
        # an index without shards does not.
        return component.is_dir() and any(
            p.is_file() and p.suffix in WEIGHT_SUFFIXES and not p.name.startswith(".") for p in component.iterdir()
        )

    missing = [c for c in wanted if not has_weights(folder / c)]
    if not missing:
        return
    if len(missing) == len(wanted):
        message = f"has configs but no weights (no weight files in {', '.join(missing)})"
    else:
        message = f"has no weight files in {', '.join(missing)} (configs only there)"
    raise ModelWeightsMissingError(message, path=folder, components=missing)


def _check_lfs(path: Path) -> None:
    """Raise GitLFSPointerError when ``path`` holds a Git LFS pointer instead of its content."""
    if path.stat().st_size > 1024:
        return
    with open(path, "rb") as handle:
        head = handle.read(len(_LFS_MAGIC))
    if head == _LFS_MAGIC:
        raise GitLFSPointerError(
            "is a Git LFS pointer (a small text stub), not the model weights", path=path
        )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        _check_lfs(path)
        raise CorruptFileError("is not UTF-8 text (expected a JSON config)", path=path) from None
    except json.JSONDecodeError as exc:
        _check_lfs(path)
        raise CorruptFileError(f"is not valid JSON ({exc.msg} at line {exc.lineno})", path=path) from None
    if not isinstance(data, dict):
        raise CorruptFileError("is not a JSON object", path=path)
    return data


def _hash_file(path: Path) -> dict[str, str]:
    """sha256, AutoV2, legacy AUTOMATIC1111 and (for safetensors) addnet hashes in one pass."""
    full = hashlib.sha256()
    payload = hashlib.sha256()
    legacy = hashlib.sha256()
    is_safetensors = False
    payload_start = 0
    offset = 0
    lo, hi = _LEGACY_HASH_OFFSET, _LEGACY_HASH_OFFSET + _LEGACY_HASH_SIZE
    with open(path, "rb") as handle:
        head = handle.read(9)
        if len(head) == 9 and head[8:9] == b"{":
            (n,) = struct.unpack("<Q", head[:8])
            is_safetensors = n <= _SAFETENSORS_MAX_HEADER
            payload_start = 8 + n
        handle.seek(0)
        # One pass over a multi-GB file feeds all three digests. The addnet digest is a second
        # sha256 over nearly the same bytes: it runs in a thread beside the first (hashlib lets
        # go of the GIL for large updates), so the pass costs one sha256 of wall time, not two.
        with ThreadPoolExecutor(max_workers=1) as beside:
            pending: Future[None] | None = None
            for block in iter(lambda: handle.read(_HASH_CHUNK), b""):
                end = offset + len(block)
                view = memoryview(block)  # slices without copying the megabyte
                if pending is not None:
                    pending.result()
                    pending = None
                if is_safetensors and end > payload_start:
                    pending = beside.submit(payload.update, view[max(0, payload_start - offset) :])
                full.update(block)
                if end > lo and offset < hi:
                    legacy.update(view[max(0, lo - offset) : hi - offset])
                offset = end
            if pending is not None:
                pending.result()
    digest = full.hexdigest()
    out = {"sha256": digest, "autov2": digest[:10], "autov1": legacy.hexdigest()[:8]}
    if is_safetensors:
        out["addnet"] = payload.hexdigest()
    return out


# --- safetensors and pickles -------------------------------------------------------------------


def _safetensors_header(path: Path) -> tuple[dict[str, Any], dict[str, str], int]:
    """Tensor entries, metadata and payload offset of a safetensors file, reading the header only."""
    from conceptlib.formats import _safetensors

    _check_lfs(path)
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise CorruptFileError("truncated safetensors file (shorter than 8 bytes)", path=path)
        (n,) = struct.unpack("<Q", head)
        if n > _SAFETENSORS_MAX_HEADER:
            raise CorruptFileError("not a safetensors file (its header length is absurd)", path=path)
        data = head + handle.read(n)
    return _safetensors.read_header(data, path)


def _safetensors_tensor(path: Path, header: dict[str, Any], start: int, key: str) -> Tensor:
    """Read one tensor from a safetensors file by seeking to it (the rest stays on disk)."""
    from conceptlib.tensor import SAFETENSORS_TO_DTYPE

    entry = header[key]
    dtype = SAFETENSORS_TO_DTYPE.get(entry.get("dtype"))
    if dtype is None:
        raise CorruptFileError(f"tensor {key!r} has dtype {entry.get('dtype')}, which conceptlib does not read", path=path)
    begin, end = entry["data_offsets"]
    shape = tuple(int(d) for d in entry["shape"])
    with open(path, "rb") as handle:
        handle.seek(start + begin)
        data = handle.read(end - begin)
    if len(data) != end - begin:
        raise CorruptFileError(f"truncated safetensors file: tensor {key!r} is cut short", path=path)
    try:
        return Tensor.from_bytes(data, dtype, shape)
    except ValueError:
        raise CorruptFileError(f"tensor {key!r} does not match its declared shape {list(shape)}", path=path) from None


def _load_pickle_state(path: Path) -> dict[str, Any]:
    """A torch checkpoint's state dict, read by the allowlist reader (nothing from it runs)."""
    from conceptlib.formats import _torchpickle

    _check_lfs(path)
    try:
        obj = _torchpickle.load(path)
    except UnsafePickleError as exc:
        raise UnsafePickleError(
            exc.message,
            path=path,
            hint="conceptlib never runs code from a checkpoint; use a .safetensors version of this model",
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise UnknownModelError(f"holds a {type(obj).__name__}, not a model state dict", path=path)
    return obj


# --- tokenizers --------------------------------------------------------------------------------


def _canonical_vocab(vocab: dict[str, int]) -> bytes:
    return json.dumps(dict(sorted(vocab.items(), key=lambda kv: kv[1])), ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _vocab_hash(vocab: dict[str, int]) -> str:
    """sha256 of the vocabulary in canonical form (entries by id, compact JSON)."""
    return hashlib.sha256(_canonical_vocab(vocab)).hexdigest()


def _read_vocab(path: Path) -> dict[str, int]:
    """The BPE vocabulary from ``vocab.json`` or from ``tokenizer.json``'s model section."""
    data = _read_json(path)
    if path.name == "tokenizer.json":
        model = data.get("model")
        vocab = model.get("vocab") if isinstance(model, dict) else None
        if not isinstance(vocab, dict):
            raise CorruptFileError("has no BPE vocabulary (model.vocab)", path=path)
        data = vocab
    if not all(isinstance(v, int) for v in data.values()):
        raise CorruptFileError("is not a token -> id vocabulary", path=path)
    return data


def _stamp(path: str) -> tuple[int, int, int]:
    """Modification time, size and inode: a file edited or replaced gets a new stamp."""
    stat = os.stat(path)
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


#: (path, stamp) -> vocabulary hash, for files a cached description vouches for: its stamp
#: covered them (size, modification time, inode), so the canonical hash need not be recomputed
#: (57 ms for SD's 49,408 entries, on every command). See :func:`_vouch_for_vocabularies`.
_vouched: dict[tuple[str, tuple[int, int, int]], str] = {}


# Vocabularies are 1 MB of JSON and validation asks for them once per file: cache them, keyed
# on the file's stamp so a file changed on disk is read again.
@lru_cache(maxsize=8)
def _vocab_cached(path: str, stamp: tuple[int, int, int]) -> tuple[frozenset[str], str]:
    vocab = _read_vocab(Path(path))
    return frozenset(vocab), _vouched.get((path, stamp)) or _vocab_hash(vocab)


def _load_vocab_file(path: str) -> frozenset[str]:
    return _vocab_cached(path, _stamp(path))[0]


def _vocab_hash_cached(path: str) -> str:
    return _vocab_cached(path, _stamp(path))[1]


def _vouch_for_vocabularies(info: ModelInfo, base: Path, stamp: list[Any]) -> None:
    """Record the vocabulary hashes of a description that came from the cache.

    ``stamp`` is the one the cache entry was checked against: ``[relative path, size, mtime,
    inode]`` for every file under ``base``. Each tokenizer's vocabulary file (the one
    :func:`_read_tokenizer` reads) is vouched for at the size, time and inode the stamp saw.
    """
    seen = {entry[0]: (entry[2], entry[1], entry[3]) for entry in stamp}  # as _stamp orders them
    for enc in info.encoders:
        tok = enc.tokenizer
        if tok is None or not tok.path:
            continue
        for name in ("vocab.json", "tokenizer.json"):
            file = Path(tok.path) / name
            relative = file.relative_to(base).as_posix() if file.is_relative_to(base) else None
            if relative in seen:
                _vouched[(str(file), seen[relative])] = tok.vocab_hash
                break


def _added_tokens(folder: Path, vocab: frozenset[str]) -> list[str]:
    """Tokens added on top of the BPE vocabulary (``added_tokens.json``, ``tokenizer.json``)."""
    found: list[str] = []
    added = folder / "added_tokens.json"
    if added.is_file():
        found.extend(str(k) for k in _read_json(added))
    tokenizer_json = folder / "tokenizer.json"
    if tokenizer_json.is_file():
        for entry in _read_json(tokenizer_json).get("added_tokens") or []:
            if isinstance(entry, dict) and isinstance(entry.get("content"), str) and not entry.get("special"):
                found.append(entry["content"])
    specials = {"<|startoftext|>", "<|endoftext|>"}
    return sorted({t for t in found if t not in vocab and t not in specials})


def _read_tokenizer(folder: Path, component: str) -> TokenizerInfo | None:
    if not folder.is_dir():
        return None
    source = folder / "vocab.json"
    if not source.is_file():
        source = folder / "tokenizer.json"
        if not source.is_file():
            return None
    vocab, vocab_hash = _vocab_cached(str(source), _stamp(str(source)))  # parsed once per command
    max_length = CONTEXT_LENGTH
    config = folder / "tokenizer_config.json"
    if config.is_file():
        value = _read_json(config).get("model_max_length")
        if isinstance(value, int) and 0 < value < 100_000:
            max_length = value
    return TokenizerInfo(
        component=component,
        vocab_size=len(vocab),
        vocab_hash=vocab_hash,
        added_tokens=_added_tokens(folder, vocab),
        model_max_length=max_length,
        path=str(folder),
    )


# --- diffusers folders -------------------------------------------------------------------------


def _encoder_key(width: int, where: Path) -> str:
    key = WIDTH_TO_ENCODER.get(width)
    if key is None:
        what = FOREIGN_WIDTHS.get(width, "no Stable Diffusion 1.x/2.x/XL text encoder")
        raise UnknownModelError(f"text encoder width {width} is {what}", path=where)
    return key


def _text_encoder_weights(folder: Path) -> Path | None:
    """The weight file holding the token embedding of a diffusers text-encoder folder."""
    for name in _TEXT_ENCODER_FILES:
        candidate = folder / name
        if not candidate.is_file():
            continue
        if name.endswith(".index.json"):
            weight_map = _read_json(candidate).get("weight_map") or {}
            for key in _DIFFUSERS_TOKEN_KEYS:
                shard = weight_map.get(key) if isinstance(weight_map, dict) else None
                if isinstance(shard, str) and (folder / shard).is_file():
                    return folder / shard
            continue
        return candidate
    return None


def _token_matrix(path: Path, keys: Iterable[str]) -> Tensor | None:
    """The first of ``keys`` found in a safetensors or torch weight file, or None."""
    _check_lfs(path)
    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        header, _meta, start = _safetensors_header(path)
        for key in keys:
            if key in header:
                return _safetensors_tensor(path, header, start, key)
        return None
    state = _load_pickle_state(path)
    for key in keys:
        value = state.get(key)
        if isinstance(value, Tensor):
            return value
    return None


def _fill_weights(enc: EncoderInfo, matrix: Tensor, where: Path) -> None:
    if matrix.ndim != 2 or matrix.shape[1] != enc.width:
        raise CorruptFileError(
            f"token embedding has shape {list(matrix.shape)}, the config says width {enc.width}", path=where
        )
    enc.fingerprint = hashlib.sha256(matrix.tobytes()).hexdigest()
    enc.dtype = matrix.dtype
    enc.vocab_size = matrix.shape[0]
    enc.norms = NormStats.of(matrix)


def _read_diffusers(folder: Path, weight_files: list[Path]) -> ModelInfo:
    """A diffusers folder's description, without hashes; ``weight_files`` are checked for LFS pointers."""
    index_path = folder / "model_index.json"
    index = _read_json(index_path) if index_path.is_file() else {}
    pipeline = index.get("_class_name") if isinstance(index.get("_class_name"), str) else None
    components = {k for k, v in index.items() if isinstance(v, list) and v and v[0] is not None}
    if pipeline and ("StableDiffusion3" in pipeline or "Flux" in pipeline):
        raise UnknownModelError(
            f"is a {pipeline} folder: conceptlib handles Stable Diffusion 1.x, 2.x and XL concepts only", path=folder
        )
    if "text_encoder_3" in components or ("transformer" in components and "unet" not in components):
        raise UnknownModelError(
            f"is a {pipeline or 'transformer-based'} model, not Stable Diffusion 1.x/2.x/XL", path=folder
        )
    notes: list[str] = []
    encoders: list[EncoderInfo] = []
    for suffix in ("", "_2"):
        te_dir = folder / f"text_encoder{suffix}"
        config_path = te_dir / "config.json"
        if not config_path.is_file():
            continue
        config = _read_json(config_path)
        nested = config.get("text_config")  # a full CLIPModel config nests the text part
        text_config: dict[str, Any] = nested if isinstance(nested, dict) else config
        width = text_config.get("hidden_size")
        if not isinstance(width, int):
            raise CorruptFileError("has no hidden_size (not a CLIP text encoder config)", path=config_path)
        context = text_config.get("max_position_embeddings")
        enc = EncoderInfo(
            key=_encoder_key(width, config_path),
            width=width,
            context_length=context if isinstance(context, int) else CONTEXT_LENGTH,
            vocab_size=text_config.get("vocab_size") if isinstance(text_config.get("vocab_size"), int) else None,
            component=f"text_encoder{suffix}",
            tokenizer=_read_tokenizer(folder / f"tokenizer{suffix}", f"tokenizer{suffix}"),
        )
        weights = _text_encoder_weights(te_dir)
        if weights is not None:
            matrix = _token_matrix(weights, _DIFFUSERS_TOKEN_KEYS)
            if matrix is not None:
                _fill_weights(enc, matrix, weights)
        encoders.append(enc)
    unet_config: dict[str, Any] = {}
    if (folder / "unet" / "config.json").is_file():
        unet_config = _read_json(folder / "unet" / "config.json")
    if not encoders:
        # No text-encoder config: the UNet's cross-attention width still names the family.
        cross = unet_config.get("cross_attention_dim")
        by_cross = {768: ["clip_l"], 1024: ["clip_h"], 2048: ["clip_l", "clip_g"], 1280: ["clip_g"]}
        if not isinstance(cross, int) or cross not in by_cross:
            if not index and not unet_config:
                raise UnknownModelError("is not a diffusers model folder (no model_index.json, no text_encoder/config.json)", path=folder)
            raise UnknownModelError(
                f"has no text encoder conceptlib recognises (UNet cross-attention width {cross})", path=folder
            )
        encoders = [EncoderInfo(k, ENCODERS[k]) for k in by_cross[cross]]
        notes.append("no text_encoder config: encoders inferred from the UNet's cross-attention width")
    family = _family_of([e.key for e in encoders], folder)
    prediction = "epsilon"
    scheduler_path = folder / "scheduler" / "scheduler_config.json"
    if scheduler_path.is_file():
        value = _read_json(scheduler_path).get("prediction_type")
        if isinstance(value, str) and value:
            prediction = value
    else:
        notes.append("no scheduler config: prediction type assumed to be epsilon")
    sample_size = None
    latent = unet_config.get("sample_size")
    if isinstance(latent, int):
        vae_blocks = 4
        vae_path = folder / "vae" / "config.json"
        if vae_path.is_file():
            blocks = _read_json(vae_path).get("block_out_channels")
            if isinstance(blocks, list) and blocks:
                vae_blocks = len(blocks)
        sample_size = latent * 2 ** (vae_blocks - 1)
    variant = _variant(family, [e.key for e in encoders], unet_config.get("in_channels"))
    for weight in weight_files:
        _check_lfs(weight)
    if not any(e.fingerprint for e in encoders):
        notes.append("no text-encoder weights: no fingerprint, vocabulary norms unknown")
    return ModelInfo(
        source=str(folder),
        kind="diffusers",
        family=family,
        label=_label(family, variant, prediction, sample_size),
        prediction_type=prediction,
        encoders=_sorted(encoders),
        variant=variant,
        sample_size=sample_size,
        pipeline_class=pipeline,
        notes=notes,
        path=str(folder),
    )


def _sorted(encoders: list[EncoderInfo]) -> list[EncoderInfo]:
    order = sort_encoders([e.key for e in encoders])
    return sorted(encoders, key=lambda e: order.index(e.key))


def _family_of(keys: list[str], where: Path) -> str:
    if len(set(keys)) != len(keys):
        raise UnknownModelError(f"has two text encoders of the same kind ({', '.join(keys)})", path=where)
    family = family_for_encoders(keys)
    if family is None:
        raise UnknownModelError(
            f"has text encoders {describe_widths({k: ENCODERS[k] for k in keys})}, "
            "which match no Stable Diffusion 1.x/2.x/XL family",
            path=where,
        )
    return family.key


def _variant(family: str, keys: list[str], in_channels: object) -> str | None:
    if family == "sdxl" and keys == ["clip_g"]:
        return "refiner"
    if in_channels == 9:
        return "inpainting"
    return None


def _label(family: str, variant: str | None, prediction: str | None, size: int | None) -> str:
    base = FAMILIES[family].label
    if family == "sd2":
        if prediction == "v_prediction":
            base = "SD 2.x 768-v" if size == 768 else f"SD 2.x (v-prediction{f', {size} px' if size else ''})"
        elif prediction == "epsilon":
            base = "SD 2.x base" + (f" ({size} px)" if size else "")
        else:
            base = "SD 2.x (prediction type unknown)"
    elif prediction == "v_prediction":
        base += " (v-prediction)"
    if variant:
        base += f" {variant}"
    return base


# --- single-file checkpoints -------------------------------------------------------------------


def _sibling_yaml_prediction(path: Path) -> str | None:
    """AUTOMATIC1111 reads ``<model>.yaml`` next to a checkpoint; ``parameterization: v`` means v."""
    yaml = path.with_suffix(".yaml")
    if not yaml.is_file() or yaml.stat().st_size > 1 << 20:
        return None
    text = yaml.read_text(encoding="utf-8", errors="replace")
    match = re.search(r"^\s*parameterization:\s*[\"']?(\w+)", text, re.MULTILINE)
    if match:
        return "v_prediction" if match.group(1) == "v" else "epsilon"
    return None


def _read_checkpoint(path: Path) -> ModelInfo:
    """A single file's description, without hashes."""
    _check_lfs(path)
    with open(path, "rb") as handle:
        head = handle.read(9)
    metadata: dict[str, str] = {}
    shapes: dict[str, tuple[int, ...]]
    fetch: Any
    if len(head) == 9 and head[8:9] == b"{":
        header, metadata, start = _safetensors_header(path)
        shapes = {k: tuple(v.get("shape") or ()) for k, v in header.items() if isinstance(v, dict)}

        def fetch(key: str) -> Tensor:
            return _safetensors_tensor(path, header, start, key)

    elif not head:
        raise UnknownModelError("empty file (0 bytes)", path=path, hint="download or copy it again")
    elif head[:2] == b"PK" or head[:1] == b"\x80":
        state = _load_pickle_state(path)
        shapes = {k: v.shape for k, v in state.items() if isinstance(k, str) and isinstance(v, Tensor)}

        def fetch(key: str) -> Tensor:
            value: Tensor = state[key]
            return value

    else:
        raise UnknownModelError(
            f"is not a model checkpoint (.safetensors or torch file); first bytes {head[:8]!r}", path=path
        )
    for marker, what in _FOREIGN_CHECKPOINT_MARKERS.items():
        if any(k.startswith(marker) for k in shapes):
            raise UnknownModelError(f"is {what}, not Stable Diffusion 1.x/2.x/XL", path=path)
    found: dict[str, tuple[str, tuple[int, ...]]] = {}
    for key in _CHECKPOINT_TOKEN_KEYS:
        shape = shapes.get(key)
        if shape is None:
            continue
        if len(shape) != 2:
            raise CorruptFileError(f"{key} has shape {list(shape)}, expected [vocab, width]", path=path)
        actual = WIDTH_TO_ENCODER.get(shape[1])
        if actual is None:
            raise UnknownModelError(f"text encoder width {shape[1]} is no Stable Diffusion encoder ({key})", path=path)
        found.setdefault(actual, (key, shape))
    if not found:
        if any(k.startswith("model.diffusion_model.") for k in shapes):
            raise UnknownModelError(
                "holds a UNet but no text encoder, so its family cannot be told from the file",
                path=path,
                hint="pass the family name instead (--model sd1, sd2, sd2-v or sdxl)",
            )
        raise UnknownModelError("holds no Stable Diffusion text encoder (not a checkpoint, or a LoRA/VAE?)", path=path)
    keys = sort_encoders(list(found))
    family = _family_of(keys, path)
    encoders: list[EncoderInfo] = []
    for enc_key in keys:
        state_key, shape = found[enc_key]
        enc = EncoderInfo(enc_key, ENCODERS[enc_key], vocab_size=shape[0], component=state_key.rsplit(".token_embedding", 1)[0])
        _fill_weights(enc, fetch(state_key), path)
        encoders.append(enc)
    notes: list[str] = []
    prediction: str | None = None
    if "v_pred" in shapes:  # the marker key ComfyUI and A1111 read for v-prediction SDXL models
        prediction = "v_prediction"
    spec = metadata.get("modelspec.prediction_type")
    if prediction is None and spec:
        prediction = "v_prediction" if spec.startswith("v") else "epsilon"
    if prediction is None:
        prediction = _sibling_yaml_prediction(path)
    if prediction is None:
        if family == "sd2":
            notes.append(
                "SD 2.x single files do not say whether they are 512-base (epsilon) or 768-v "
                "(v-prediction); pass --model sd2 or sd2-v if it matters, or add a .yaml beside it"
            )
        else:
            prediction = "epsilon"
    in_shape = shapes.get(_UNET_IN_KEY)
    variant = _variant(family, keys, in_shape[1] if in_shape and len(in_shape) == 4 else None)
    size = {"sd1": 512, "sdxl": 1024}.get(family)
    if family == "sd2" and prediction == "v_prediction":
        size = 768
    elif family == "sd2" and prediction == "epsilon":
        size = 512
    notes.append("single-file checkpoint: no tokenizer inside; token checks use the standard CLIP vocabulary when stored")
    return ModelInfo(
        source=str(path),
        kind="checkpoint",
        family=family,
        label=_label(family, variant, prediction, size),
        prediction_type=prediction,
        encoders=encoders,
        variant=variant,
        sample_size=size,
        notes=notes,
        path=str(path),
    )


# --- compatibility -----------------------------------------------------------------------------


#: Attention widths of the reference UNets by family: (cross-attention context width, the
#: channel widths of the blocks that attend). SDXL's first block has no attention.
FAMILY_ATTENTION: dict[str, tuple[int, tuple[int, ...]]] = {
    "sd1": (768, (320, 640, 1280)),
    "sd2": (1024, (320, 640, 1280)),
    "sdxl": (2048, (640, 1280)),
}


def attention_widths(model: ModelInfo) -> tuple[int | None, tuple[int, ...]]:
    """The widths a hypernetwork meets in the model's UNet: the cross-attention context width
    (the text encoder's) and the channel widths of the blocks with attention (their
    self-attention context), read from ``unet/config.json`` when the folder has one, else the
    family's reference UNet (:data:`FAMILY_ATTENTION`).

    Example:
        >>> attention_widths(family_model("sd1"))
        (768, (320, 640, 1280))
    """
    config: dict[str, Any] = {}
    if model.kind == "diffusers" and model.path and (Path(model.path) / "unet" / "config.json").is_file():
        try:
            config = _read_json(Path(model.path) / "unet" / "config.json")
        except CorruptFileError:
            config = {}
    channels = config.get("block_out_channels")
    if isinstance(channels, list) and all(isinstance(c, int) for c in channels):
        down = config.get("down_block_types") or []
        up = config.get("up_block_types") or []
        widths = {c for c, kind in zip(channels, down, strict=False) if "Attn" in str(kind)}
        widths |= {c for c, kind in zip(reversed(channels), up, strict=False) if "Attn" in str(kind)}
        if "Attn" in str(config.get("mid_block_type") or "UNetMidBlock2DCrossAttn") and channels:
            widths.add(channels[-1])
        cross = config.get("cross_attention_dim")
        return (cross if isinstance(cross, int) else None), tuple(sorted(widths))
    return FAMILY_ATTENTION.get(model.family, (None, ()))


def _encoder_set(embedding: object) -> set[str]:
    # An Embedding's encoders is a list, a library Concept's a {key: width} dict; both iterate keys.
    encoders = getattr(embedding, "encoders", embedding)
    if not isinstance(encoders, Iterable) or isinstance(encoders, str):
        raise TypeError(f"expected an embedding, a concept or encoder keys, got {type(embedding).__name__}")
    return {str(key) for key in encoders}


def compatible(embedding: Embedding | Iterable[str] | object, model: ModelInfo | str) -> bool:
    """Whether a concept's vectors fit a model's text encoders exactly.

    An SD 1.x concept fits SD 1.x models, SD 2.x fits SD 2.x, an SDXL concept needs both SDXL
    encoders; an SDXL refiner (clip_g only) takes SDXL concepts (it uses their clip_g half).

    Args:
        embedding: an :class:`~conceptlib.embedding.Embedding`, a library ``Concept`` (anything
            with an ``encoders`` list or dict), or an iterable of encoder keys.
        model: a :class:`ModelInfo`, or a registered name, path or family name.

    Returns:
        True when the concept can be loaded into the model as it is.

    Example:
        >>> compatible(["clip_l"], "sd1"), compatible(["clip_l"], "sdxl")
        (True, False)
    """
    info = model if isinstance(model, ModelInfo) else resolve_model(model, hash_files=False)
    have = _encoder_set(embedding)
    need = set(info.encoder_keys)
    if info.variant == "refiner":
        return need <= have <= {"clip_l", "clip_g"}
    return have == need


# --- registry ----------------------------------------------------------------------------------


def models_dir(home: str | os.PathLike[str] | None = None) -> Path:
    """The folder of registered model records: ``<home>/models``."""
    return library_home(home) / "models"


def _stored_vocab_path(vocab_hash: str, home: str | os.PathLike[str] | None) -> Path:
    return models_dir(home) / "vocab" / f"{vocab_hash}.json"


def _check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise UsageError(
            f"invalid model name {name!r}",
            hint="use letters, digits, '.', '_', '+' or '-' (up to 100, starting with a letter or digit)",
        )
    return name


def _default_name(path: Path) -> str:
    stem = path.name if path.is_dir() else path.stem
    name = re.sub(r"[^A-Za-z0-9._+-]+", "-", stem).strip("-._+") or "model"
    return name[:100]


def _store_vocab(tok: TokenizerInfo, home: str | os.PathLike[str] | None) -> None:
    from conceptlib._atomic import atomic_write_bytes

    target = _stored_vocab_path(tok.vocab_hash, home)
    if target.is_file() or not tok.path:
        return
    folder = Path(tok.path)
    source = folder / "vocab.json" if (folder / "vocab.json").is_file() else folder / "tokenizer.json"
    atomic_write_bytes(target, _canonical_vocab(_read_vocab(source)))


def add_model(
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    home: str | os.PathLike[str] | None = None,
    force: bool = False,
    hash_files: bool = True,
    model_config: str | os.PathLike[str] | None = None,
) -> ModelInfo:
    """Register a model so ``validate --model NAME`` works offline.

    The record (family, encoders, fingerprints, vocabulary norms, hashes) is written atomically
    to ``<home>/models/<name>.json``; each tokenizer vocabulary is stored once under
    ``<home>/models/vocab/``.

    Args:
        path: a diffusers folder or a single-file checkpoint.
        name: the name to register (default: the folder name or file stem).
        home: the library folder (default: ``CONCEPTLIB_HOME``).
        force: replace an existing record with this name.
        hash_files: hash the weight files (slow for multi-GB checkpoints, needed to match the
            checkpoint hash recorded in AUTOMATIC1111 embeddings).
        model_config: for a single-file checkpoint, the diffusers folder or Hub repository
            with its configs and tokenizer, remembered for ``train``/``render``. Its
            tokenizer's vocabulary then serves token checks, and its scheduler settles the
            prediction type when the file does not declare one.

    Returns:
        The registered description, with ``name`` and ``added`` set.

    Raises:
        DestinationExistsError: the name is taken and ``force`` is False.
        UsageError: the name has characters that cannot be a file name.
        ModelNotFoundError: ``path`` does not exist.
        ModelConfigError: ``model_config`` cannot be found or describes another model.
        GitLFSPointerError, UnknownModelError, CorruptFileError: see :func:`read_model`.

    Example:
        >>> add_model("models/stable-diffusion-v1-5", name="sd15")  # doctest: +SKIP
    """
    from conceptlib._atomic import atomic_write_bytes

    source = Path(path).expanduser()
    if not source.exists():
        raise ModelNotFoundError(str(path), hint="check the path")
    model_name = _check_name(name) if name is not None else _default_name(source.resolve())
    record = models_dir(home) / f"{model_name}.json"
    if record.exists() and not force:
        raise DestinationExistsError(
            f"a model named {model_name!r} is already registered", path=record,
            hint="pass --force to replace it, or --name to choose another name",
        )  # fmt: skip
    info = read_model(source, hash_files=hash_files, home=home)
    if model_config is not None:
        _attach_configs(info, model_config)
    _check_family_name(model_name, info)
    for enc in info.encoders:
        if enc.tokenizer:
            _store_vocab(enc.tokenizer, home)
    info.name = model_name
    info.added = datetime.now(timezone.utc).isoformat(timespec="seconds")
    data = json.dumps(info.to_dict(), indent=2, ensure_ascii=False) + "\n"
    atomic_write_bytes(record, data.encode("utf-8"))
    return info


def _check_family_name(name: str, info: ModelInfo) -> None:
    """Refuse to register a model under a family name (``sd1``, ``sd15``, ``sd2-v``) of another family.

    A registered name wins over the family name it spells, so ``--model sd15`` can mean a real
    SD 1.5 folder (with its vocabulary and hashes); under another family's name it would turn
    every ``--model sd15`` into a model that family's concepts do not fit.
    """
    try:
        named = family_model(name)
    except ModelNotFoundError:
        return
    if info.family != named.family or (info.prediction_type is not None and info.prediction_type != named.prediction_type):
        raise UsageError(
            f"{name!r} is the family name of {named.label}, and this model is {info.label}",
            hint="choose another --name (a family name may only name a model of that family)",
        )


def _attach_configs(info: ModelInfo, model_config: str | os.PathLike[str]) -> None:
    """Record a single file's configs, and take what the file lacks from them."""
    from conceptlib.single_file import resolve_configs

    if info.kind != "checkpoint":
        raise UsageError("--model-config is for single-file checkpoints; a diffusers folder has its own configs")
    configs = resolve_configs(info, model_config)
    info.model_config = configs.source
    for enc in info.encoders:
        theirs = configs.described.encoder(enc.key)
        if enc.tokenizer is None and theirs is not None:
            enc.tokenizer = theirs.tokenizer
    info.prediction_type = configs.prediction_type
    info.sample_size = configs.sample_size or info.sample_size
    info.label = _label(info.family, info.variant, info.prediction_type, info.sample_size)
    info.notes = [n for n in info.notes if not n.startswith(("single-file checkpoint: no tokenizer", "SD 2.x single files"))]
    info.notes.append(f"configs and tokenizer from {info.model_config}")


def _records(home: str | os.PathLike[str] | None) -> Iterator[Path]:
    folder = models_dir(home)
    if folder.is_dir():
        yield from sorted(p for p in folder.glob("*.json") if p.is_file() and not p.name.startswith("."))


def _load_record(record: Path) -> ModelInfo:
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
        info = ModelInfo.from_dict(data)
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptFileError(
            f"is not a valid model record ({exc.__class__.__name__}: {exc})", path=record,
            hint="register the model again with `conceptlib models add PATH --force`",
        ) from None  # fmt: skip
    info.name = record.stem
    return info


def list_models(home: str | os.PathLike[str] | None = None) -> list[ModelInfo]:
    """The registered models, sorted by name.

    Args:
        home: the library folder (default: ``CONCEPTLIB_HOME``).

    Returns:
        Their descriptions (empty when none is registered).

    Raises:
        CorruptFileError: a record cannot be read.

    Example:
        >>> [m.name for m in list_models()]  # doctest: +SKIP
        ['sd15', 'sdxl-base']
    """
    return [_load_record(r) for r in _records(home)]


def get_model(name: str, *, home: str | os.PathLike[str] | None = None) -> ModelInfo:
    """A registered model by name.

    Args:
        name: the registered name.
        home: the library folder (default: ``CONCEPTLIB_HOME``).

    Returns:
        Its description.

    Raises:
        ModelNotFoundError: no model is registered under this name.

    Example:
        >>> get_model("sd15").family  # doctest: +SKIP
        'sd1'
    """
    if _NAME_RE.match(name):
        record = models_dir(home) / f"{name}.json"
        if record.is_file():
            return _load_record(record)
    raise ModelNotFoundError(name, known=[r.stem for r in _records(home)])


def resolve_model(
    spec: str | os.PathLike[str] | ModelInfo,
    *,
    home: str | os.PathLike[str] | None = None,
    hash_files: bool = True,
) -> ModelInfo:
    """Turn what a user typed after ``--model`` into a description.

    Tried in order: an existing path, a registered name, a family name.

    Args:
        spec: a path, a registered model name, a family name, or a description (returned as is).
        home: the library folder (default: ``CONCEPTLIB_HOME``).
        hash_files: hash weight files when ``spec`` is a path (see :func:`read_model`).

    Returns:
        The description.

    Raises:
        ModelNotFoundError: none of the three matches (the message lists registered names).

    Example:
        >>> resolve_model("sdxl").encoder_keys
        ['clip_l', 'clip_g']
    """
    if isinstance(spec, ModelInfo):
        return spec
    text = os.fspath(spec)
    if Path(text).expanduser().exists():
        return read_model(text, hash_files=hash_files, home=home)
    if _NAME_RE.match(text) and (models_dir(home) / f"{text}.json").is_file():
        return get_model(text, home=home)
    try:
        return family_model(text)
    except ModelNotFoundError:
        raise ModelNotFoundError(text, known=[r.stem for r in _records(home)]) from None
