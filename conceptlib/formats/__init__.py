"""Read and write every textual-inversion file format found in the wild, without torch.

>>> from conceptlib.formats import read, write
>>> emb = read("EasyNegative.pt")            # any format; never runs code from the file
>>> write(emb, "EasyNegative.safetensors")   # format chosen from the name

Reading sniffs the bytes (never trusts the extension), decodes the container (torch pickle
through an allowlist, safetensors, or a PNG's text chunk / pixels) and recognises the dict
layout (:mod:`conceptlib.formats._interpret`). Writing is atomic and refuses to overwrite
without ``force``. Vectors are kept bit for bit, in their dtype.

Whatever a file holds, reading it costs time and memory in proportion to its size and ends in
a :class:`~conceptlib.errors.BadInputError` naming it, never in another exception: files are
read up to :data:`MAX_FILE_SIZE` bytes, each decoder caps what it unpacks (safetensors headers,
PNG text chunks and pixels, JSON payloads; see their modules), and :func:`read_bytes` turns
any failure a decoder did not foresee into :class:`~conceptlib.errors.CorruptFileError`.

To add a format: write a ``_write_<name>`` function below, add a :class:`Format` entry to
:data:`FORMATS`, teach ``_interpret.interpret`` to recognise its layout, and add it to the
round-trip tests (CONTRIBUTING.md walks through it).
"""

from __future__ import annotations

import json
import lzma
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from conceptlib._atomic import atomic_write_bytes
from conceptlib._inputs import Folder, read_folder_words, read_named
from conceptlib._terminal import invisible_characters, printable
from conceptlib.embedding import Embedding
from conceptlib.errors import (
    ConceptlibError,
    CorruptFileError,
    DestinationExistsError,
    EmbeddingFileError,
    FormatCapabilityError,
    GitLFSPointerError,
    NonFiniteError,
    ResourceLimitError,
    UnknownFormatError,
    UsageError,
)
from conceptlib.formats import _safetensors
from conceptlib.formats._interpret import (
    CANONICAL_KEY,
    CANONICAL_VALUE,
    META_PREFIX,
    interpret,
    is_text,
)
from conceptlib.tensor import Tensor

__all__ = ["FORMATS", "Format", "detect_container", "format_for_path", "read", "read_bytes", "sdxl_pair", "write"]

#: Refuse files larger than this, before reading them. The largest honest embedding is an early
#: sd-concepts-library learned_embeds.bin that saved CLIP's whole token table (49,408 x 768
#: float32, 152 MB); a 75-vector SDXL file is under 1 MB. Decoding costs a few times the file
#: (the bytes, then the vectors copied out), so this also bounds a read's memory.
MAX_FILE_SIZE = 256 << 20
#: Files sd-concepts-library folders and diffusers output folders hold, in order of preference.
FOLDER_FILES = ("learned_embeds.safetensors", "learned_embeds.bin", "embeddings.pt")
SDXL_PAIR_SUFFIX = "_2"


@dataclass(frozen=True)
class Format:
    """A writable (or read-only) format.

    Attributes:
        name: the key used by ``--to``.
        description: one line for ``--help`` and errors.
        suffix: the file suffix written ('' for folder formats).
        single: can hold a single-encoder (SD 1.x/2.x) embedding.
        sdxl: can hold an SDXL (clip_l + clip_g) embedding.
        holds: the Embedding fields the format keeps besides the vectors.
        writer: None for read-only formats.
    """

    name: str
    description: str
    suffix: str
    single: bool
    sdxl: bool
    holds: frozenset[str]
    writer: Callable[[Embedding, Path], list[tuple[Path, bytes]]] | None


# --- reading -----------------------------------------------------------------------------------

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_LFS_MAGIC = b"version https://git-lfs"


def detect_container(data: bytes) -> str:
    """Name the container of ``data``: pickle-zip, pickle-legacy, safetensors, png, webp, jpeg,
    lfs-pointer, html, empty or unknown."""
    if not data:
        return "empty"
    if data.startswith(_LFS_MAGIC):
        return "lfs-pointer"
    if data.startswith(b"PK\x03\x04") or data.startswith(b"PK\x05\x06"):
        return "pickle-zip"
    if data.startswith(_PNG_MAGIC):
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    # safetensors first: its header length can begin with the bytes of a pickle PROTO opcode
    # (a 640-byte header is 0x80 0x02 ...), while its own test ('{' at byte 8) is strict.
    if _safetensors.looks_like_safetensors(data):
        return "safetensors"
    if data[0] == 0x80 and len(data) > 1 and data[1] <= 5:
        return "pickle-legacy"
    # Pickle protocols 0 and 1 have no PROTO opcode: a legacy torch file then opens with its
    # magic number as text (_torchpickle.LEGACY_TEXT_MAGIC, inlined so sniffing does not import the pickle reader).
    # The whole first pickle is matched, so a text file that starts with "L" stays unknown.
    if data.startswith(b"L119547037146038801333356L\n."):
        return "pickle-legacy"
    head = data[:2048].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")) or b"<html" in head:
        return "html"
    return "unknown"


def _decode(data: bytes, path: str) -> Embedding:
    """Sniff, decode and interpret ``data``; decoders may raise anything (see :func:`read_bytes`)."""
    kind = detect_container(data)
    metadata: dict[str, str] | None = None
    if kind == "empty":
        raise EmbeddingFileError("empty file (0 bytes)", path=path, hint="download or copy it again")
    if kind == "lfs-pointer":
        raise GitLFSPointerError("is a Git LFS pointer (a small text stub), not the file's content", path=path)
    if kind == "html":
        raise UnknownFormatError(
            "is an HTML page, not an embedding",
            path=path,
            hint="download the raw file (on the Hub use the /resolve/ link, not /blob/)",
        )
    if kind == "jpeg":
        raise UnknownFormatError(
            "is a JPEG image: JPEG compression destroys embedded data, so it cannot carry an embedding",
            path=path,
        )
    if kind in ("pickle-zip", "pickle-legacy"):
        from conceptlib.formats import _torchpickle

        state: Any = _torchpickle.load(path, data)
        container = "pickle"
    elif kind == "safetensors":
        state, metadata = _safetensors.read(data, path)
        container = "safetensors"
    elif kind in ("png", "webp"):
        from conceptlib.formats import _png

        state, _where = _png.read_payload(path, data)
        container = "png"
    elif Path(path).suffix.lower() == ".safetensors":
        raise CorruptFileError("not a valid safetensors file (truncated or damaged header)", path=path)
    else:
        preview = data[:16]
        raise UnknownFormatError(
            f"not an embedding file: unrecognised content (first bytes {preview!r})", path=path
        )
    return interpret(state, path, container=container, metadata=metadata)


def _unforeseen(exc: Exception, path: str) -> ConceptlibError:
    """The conceptlib error for an exception a decoder let through, keeping what it says."""
    if isinstance(exc, MemoryError):
        return ResourceLimitError("ran out of memory while decoding it", path=path)
    if isinstance(exc, RecursionError):
        return CorruptFileError("nests containers deeper than conceptlib decodes", path=path)
    try:
        said = str(exc).splitlines()[0] if str(exc) else ""
    except Exception:  # a message that cannot be rendered (a huge int in it, say)
        said = ""
    detail = f"{type(exc).__name__}: {printable(said)}" if said else type(exc).__name__
    if isinstance(exc, (zlib.error, lzma.LZMAError)):
        return CorruptFileError(f"its compressed data is damaged ({detail})", path=path)
    if isinstance(exc, (UnicodeError, json.JSONDecodeError)):
        return CorruptFileError(f"text inside it does not decode ({detail})", path=path)
    if isinstance(exc, OverflowError):
        return CorruptFileError(f"holds a number too large to use ({detail})", path=path)
    return CorruptFileError(
        f"cannot be decoded ({detail})",
        path=path,
        hint="if other tools load this file, report it; CONCEPTLIB_DEBUG=1 shows where decoding stopped",
    )


def read_bytes(data: bytes, path: str | os.PathLike[str], *, strict: bool = False) -> Embedding:
    """Decode an embedding from bytes already in memory (``path`` names it in messages).

    Args:
        data: the file's bytes.
        path: the file's name, for messages and ``source_path``.
        strict: raise :class:`NonFiniteError` when a vector holds NaN or Inf.

    Returns:
        The embedding, with ``source_format`` and ``source_path`` set.

    Raises:
        BadInputError: a subclass naming the file. An exception a decoder did not turn into
            one itself (a numpy, zlib or LZMA error, RecursionError, MemoryError, ...) becomes
            :class:`CorruptFileError` (:class:`ResourceLimitError` for MemoryError), chained
            to the original; KeyboardInterrupt and SystemExit pass through.
    """
    path = os.fspath(path)
    try:
        embedding = _decode(data, path)
    except ConceptlibError:
        raise
    except Exception as exc:
        raise _unforeseen(exc, path) from exc
    if strict:
        bad = embedding.non_finite()
        if bad:
            where = ", ".join(f"{n} in {k}" for k, n in bad.items())
            raise NonFiniteError(f"vectors contain NaN/Inf values ({where})", path=path)
    return embedding


def sdxl_pair(name: str) -> tuple[str, str] | None:
    """The file names of the diffusers SDXL pair ``name`` would belong to: (clip_l, clip_g).

    Example:
        >>> sdxl_pair("learned_embeds_2.safetensors")
        ('learned_embeds.safetensors', 'learned_embeds_2.safetensors')
    """
    if not name.endswith(".safetensors"):
        return None
    stem = name[: -len(".safetensors")]
    if stem.endswith(SDXL_PAIR_SUFFIX):
        return stem[: -len(SDXL_PAIR_SUFFIX)] + ".safetensors", name
    return name, stem + SDXL_PAIR_SUFFIX + ".safetensors"


def _read_in(folder: Folder, name: str, strict: bool) -> Embedding:
    """Decode the file ``name`` of ``folder``, read without following a link out of it."""
    data = folder.read_bytes(name, limit=MAX_FILE_SIZE, what="embedding file", error=ResourceLimitError)
    return read_bytes(data, folder.path / name, strict=strict)


def _pair(one: Embedding, two: Embedding, second: str) -> Embedding | None:
    """The diffusers SDXL embedding of a clip_l file and a clip_g file, or None if they are not one."""
    if not (one.source_format == two.source_format == "diffusers"):
        return None
    if list(one.vectors) != ["clip_l"] or list(two.vectors) != ["clip_g"]:
        return None
    if one.token != two.token:
        raise EmbeddingFileError(
            f"the SDXL pair disagrees on the token ({one.token!r} vs {two.token!r} in {second})", path=one.source_path
        )
    if one.num_vectors != two.num_vectors:
        raise EmbeddingFileError(
            f"the SDXL pair holds {one.num_vectors} and {two.num_vectors} vectors ({second})", path=one.source_path
        )
    metadata = {**two.metadata, **one.metadata}
    return Embedding(
        {"clip_l": one.vectors["clip_l"], "clip_g": two.vectors["clip_g"]},
        token=one.token, source_format="diffusers-sdxl", metadata=metadata, source_path=one.source_path,
        name=one.name, step=one.step, checkpoint_hash=one.checkpoint_hash, checkpoint_name=one.checkpoint_name,
    )


def _read_folder(path: Path, strict: bool) -> Embedding:
    with Folder(path) as folder:

        def has(name: str) -> bool:
            # lexists: a link to nothing is there, and refused by name, not passed over.
            return os.path.lexists(path / name)

        emb: Embedding | None = None
        first, second = sdxl_pair(FOLDER_FILES[0]) or ("", "")
        if has(first) and has(second):
            emb = _read_in(folder, first, strict)
            emb = _pair(emb, _read_in(folder, second, strict), second) or emb
        else:
            name = next((n for n in FOLDER_FILES if has(n)), None)
            if name is None:
                raise UnknownFormatError(
                    f"folder holds no {', '.join(FOLDER_FILES)}; not a concept folder", path=path,
                    hint="pass the embedding file itself",
                )
            emb = _read_in(folder, name, strict)
        read_folder_words(folder, emb)
    emb.source_path = str(path)
    return emb


def read(path: str | os.PathLike[str], *, strict: bool = False) -> Embedding:
    """Read an embedding from any supported file or folder, without executing anything.

    A path the caller names is followed if it is a link. Inside a folder (a concept folder, or
    the folder of a file whose SDXL partner sits beside it), a file it would read that is a
    link leading out of that folder, or nowhere, is refused, never opened (see
    :mod:`conceptlib._inputs`). A concept folder's ``token_identifier.txt`` and
    ``type_of_concept.txt`` are read strictly (:func:`conceptlib._inputs.read_folder_words`).

    Args:
        path: a ``.pt``/``.bin``/``.safetensors``/``.png`` file (the content decides, not the
            suffix), a diffusers SDXL pair (either file of ``learned_embeds[_2].safetensors``),
            or a folder in sd-concepts-library / diffusers output layout.
        strict: raise :class:`NonFiniteError` when a vector holds NaN or Inf.

    Returns:
        The embedding, with ``source_format`` and ``source_path`` set.

    Raises:
        BadInputError: a subclass naming the file and the problem (LFS pointer, HTML page,
            truncated archive, unsafe pickle, wrong shape, unknown width, ...);
            :class:`ResourceLimitError` for a file larger than :data:`MAX_FILE_SIZE` or one
            that unpacks to more than any embedding, :class:`NotRegularFileError` for a device
            or pipe, :class:`UnsafeLinkError` for a link out of the folder,
            :class:`TextFileError` for a token file that is not one word of UTF-8 text.
        FileNotFoundError: the path does not exist.
    """
    p = Path(path)
    if p.is_dir():
        return _read_folder(p, strict)
    if not p.exists():
        raise FileNotFoundError(2, "No such file or directory", str(p))
    data = read_named(p, limit=MAX_FILE_SIZE, what="embedding file", error=ResourceLimitError)
    emb = read_bytes(data, p, strict=strict)
    names = sdxl_pair(p.name)
    if names is not None:
        partner = names[1] if names[0] == p.name else names[0]
        if os.path.lexists(p.parent / partner):
            # The partner was not named: the folder's link rule applies to it.
            with Folder(p.parent) as folder:
                other = _read_in(folder, partner, strict)
            one, two = (emb, other) if partner == names[1] else (other, emb)
            return _pair(one, two, names[1]) or emb
    return emb


# --- writing -----------------------------------------------------------------------------------

_ALL = frozenset({"token", "name", "step", "checkpoint_hash", "checkpoint_name", "metadata"})


def _need_token(emb: Embedding, fmt: str) -> str:
    token = emb.prompt_word()
    if not token:
        raise FormatCapabilityError(f"the {fmt} format stores a token and this embedding has none", hint="pass --token")
    return token


def _single(emb: Embedding, fmt: str) -> Tensor:
    # A lone clip_g tensor is fine: it is the second file of a diffusers SDXL pair.
    if len(emb.vectors) != 1:
        raise FormatCapabilityError(
            f"the {fmt} format holds one text encoder and this is an SDXL embedding ({emb.width_label})",
            hint="write it as sdxl, sdxl-pt, diffusers-sdxl or png",
        )
    return next(iter(emb.vectors.values()))


def _sdxl_only(emb: Embedding, fmt: str) -> None:
    if not emb.is_sdxl:
        raise FormatCapabilityError(
            f"the {fmt} format is for SDXL (clip_l + clip_g) and this embedding is {emb.width_label} wide",
            hint="write it as diffusers, a1111, emb-params or png",
        )


def _st_metadata(emb: Embedding, *, with_token: bool = True) -> dict[str, str]:
    """safetensors metadata: diffusers' ``format: pt`` plus conceptlib.* keys for the fields."""
    meta = {"format": "pt"}
    values = {
        "token": emb.token if with_token else None,
        "name": emb.name,
        "step": None if emb.step is None else str(emb.step),
        "checkpoint_hash": emb.checkpoint_hash,
        "checkpoint_name": emb.checkpoint_name,
    }
    meta.update({META_PREFIX + k: v for k, v in values.items() if v is not None})
    if emb.metadata:
        meta[META_PREFIX + "metadata"] = json.dumps(emb.metadata, sort_keys=True, ensure_ascii=False)
    return meta


def _pickle(obj: Any) -> bytes:
    from conceptlib.formats import _torchpickle

    return _torchpickle.dumps(obj)


def _write_conceptlib(emb: Embedding, path: Path) -> list[tuple[Path, bytes]]:
    meta = _st_metadata(emb)
    meta[CANONICAL_KEY] = CANONICAL_VALUE
    return [(path, _safetensors.dumps(dict(emb.vectors), meta))]


def _write_diffusers(emb: Embedding, path: Path) -> list[tuple[Path, bytes]]:
    tensor = _single(emb, "diffusers")
    token = _need_token(emb, "diffusers")
    return [(path, _safetensors.dumps({token: tensor}, _st_metadata(emb, with_token=False)))]


def _write_diffusers_bin(emb: Embedding, path: Path) -> list[tuple[Path, bytes]]:
    tensor = _single(emb, "diffusers-bin")
    return [(path, _pickle({_need_token(emb, "diffusers-bin"): tensor}))]


def _write_concepts_library(emb: Embedding, path: Path) -> list[tuple[Path, bytes]]:
    tensor = _single(emb, "concepts-library")
    token = _need_token(emb, "concepts-library")
    # The notebook saved one 1-D row; multi-vector concepts keep diffusers' 2-D layout.
    value = tensor.reshape(tensor.shape[1]) if tensor.shape[0] == 1 else tensor
    concept_type = emb.metadata.get("concept_type", "object")
    return [
        (path / "learned_embeds.bin", _pickle({token: value})),
        (path / "token_identifier.txt", token.encode("utf-8")),
        (path / "type_of_concept.txt", concept_type.encode("utf-8")),
    ]


def _a1111_dict(emb: Embedding) -> dict[str, Any]:
    tensor = _single(emb, "a1111")
    return {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": tensor},
        "name": emb.name or emb.prompt_word(),
        "step": emb.step,
        "sd_checkpoint": emb.checkpoint_hash,
        "sd_checkpoint_name": emb.checkpoint_name,
    }


def _write_a1111(emb: Embedding, path: Path) -> list[tuple[Path, bytes]]:
    if emb.is_sdxl:
        # AUTOMATIC1111 reads SDXL embeddings only as a bare {clip_l, clip_g} dict.
        return _write_sdxl_pt(emb, path)
    return [(path, _pickle(_a1111_dict(emb)))]


def _write_emb_params(emb: Embedding, path: Path) -> list[tuple[Path, bytes]]:
    tensor = _single(emb, "emb-params")
    return [(path, _safetensors.dumps({"emb_params": tensor}, _st_metadata(emb)))]


def _write_emb_params_pt(emb: Embedding, path: Path) -> list[tuple[Path, bytes]]:
    return [(path, _pickle({"emb_params": _single(emb, "emb-params-pt")}))]


def _sdxl_dict(emb: Embedding, fmt: str) -> dict[str, Tensor]:
    _sdxl_only(emb, fmt)
    # clip_g first: the order kohya and the safetensors library (sorted keys) produce.
    return {k: emb.vectors[k] for k in ("clip_g", "clip_l") if k in emb.vectors}


def _write_sdxl(emb: Embedding, path: Path) -> list[tuple[Path, bytes]]:
    return [(path, _safetensors.dumps(_sdxl_dict(emb, "sdxl"), _st_metadata(emb)))]


def _write_sdxl_pt(emb: Embedding, path: Path) -> list[tuple[Path, bytes]]:
    return [(path, _pickle(_sdxl_dict(emb, "sdxl-pt")))]


def _write_diffusers_sdxl(emb: Embedding, path: Path) -> list[tuple[Path, bytes]]:
    _sdxl_only(emb, "diffusers-sdxl")
    if set(emb.vectors) != {"clip_l", "clip_g"}:
        raise FormatCapabilityError("the diffusers-sdxl pair needs both clip_l and clip_g vectors")
    token = _need_token(emb, "diffusers-sdxl")
    if path.suffix != ".safetensors":
        path = path / "learned_embeds.safetensors"
    second = path.with_name(path.stem + SDXL_PAIR_SUFFIX + ".safetensors")
    meta = _st_metadata(emb, with_token=False)
    return [
        (path, _safetensors.dumps({token: emb.vectors["clip_l"]}, meta)),
        (second, _safetensors.dumps({token: emb.vectors["clip_g"]}, meta)),
    ]


def _write_png(emb: Embedding, path: Path) -> list[tuple[Path, bytes]]:
    from conceptlib.formats import _png

    if emb.is_sdxl:
        payload: dict[str, Any] = dict(_sdxl_dict(emb, "png"))
    else:
        payload = _a1111_dict(emb)
    title = emb.name or emb.prompt_word() or path.stem
    steps = f"{emb.step}s" if emb.step is not None else ""
    footer = f"{emb.num_vectors}v {steps}".strip()
    if emb.checkpoint_hash:
        footer = f"[{emb.checkpoint_hash}] {footer}"
    try:
        return [(path, _png.encode_png(payload, title=title, footer=footer))]
    except ValueError as exc:  # more vectors than any PNG reader accepts
        raise FormatCapabilityError(f"the png format cannot hold this embedding: {exc}") from None


_SINGLE_META = frozenset({"name", "step", "checkpoint_hash", "checkpoint_name"})

FORMATS: dict[str, Format] = {
    f.name: f
    for f in [
        Format("conceptlib", "conceptlib canonical safetensors (one key per encoder, every field kept)", ".safetensors", True, True, _ALL, _write_conceptlib),
        Format("diffusers", "diffusers learned_embeds.safetensors: {token: [n, width]}", ".safetensors", True, False, _ALL, _write_diffusers),
        Format("diffusers-bin", "diffusers learned_embeds.bin (torch pickle): {token: [n, width]}", ".bin", True, False, frozenset({"token"}), _write_diffusers_bin),
        Format("concepts-library", "sd-concepts-library folder: learned_embeds.bin, token_identifier.txt, type_of_concept.txt", "", True, False, frozenset({"token"}), _write_concepts_library),
        Format("a1111", "AUTOMATIC1111 .pt: string_to_param, name, step, sd_checkpoint (SDXL: the bare clip_l/clip_g dict it reads, no fields)", ".pt", True, True, _SINGLE_META, _write_a1111),
        Format("emb-params", "kohya emb_params .safetensors", ".safetensors", True, False, _ALL, _write_emb_params),
        Format("emb-params-pt", "kohya emb_params .pt (torch pickle)", ".pt", True, False, frozenset(), _write_emb_params_pt),
        Format("sdxl", "SDXL clip_l + clip_g .safetensors (kohya, AUTOMATIC1111, ComfyUI)", ".safetensors", False, True, _ALL, _write_sdxl),
        Format("sdxl-pt", "SDXL clip_l + clip_g .pt (torch pickle)", ".pt", False, True, frozenset(), _write_sdxl_pt),
        Format("diffusers-sdxl", "diffusers SDXL pair: learned_embeds.safetensors + learned_embeds_2.safetensors", ".safetensors", False, True, _ALL, _write_diffusers_sdxl),
        Format("png", "AUTOMATIC1111 embedding PNG (tEXt chunk and pixel data blocks; SDXL keeps only the vectors)", ".png", True, True, _SINGLE_META, _write_png),
        Format("ldm", "original textual_inversion embeddings.pt (nn.ParameterDict); read only", ".pt", True, False, frozenset(), None),
        Format("sdxl-emb", "non-standard SDXL {emb, emb2} .pt; read only", ".pt", False, True, frozenset(), None),
        Format("sdxl-pti", "diffusers pivotal-tuning {text_encoders_0, text_encoders_1}; read only", ".safetensors", False, True, frozenset(), None),
        Format("raw-tensor", "a bare tensor with no token; read only", ".pt", True, False, frozenset(), None),
    ]
}
WRITABLE = [name for name, f in FORMATS.items() if f.writer is not None]


def format_for_path(path: str | os.PathLike[str], embedding: Embedding) -> str:
    """Pick the format from a destination's name, taking SDXL into account.

    ``.safetensors`` → diffusers (SDXL: sdxl; ``learned_embeds.safetensors``: diffusers-sdxl),
    ``.pt`` → a1111, ``.bin`` → diffusers-bin, ``.png`` → png, a folder → concepts-library
    (SDXL: diffusers-sdxl).
    """
    p = Path(path)
    suffix = p.suffix.lower()
    sdxl = embedding.is_sdxl
    if suffix == ".safetensors":
        if sdxl:
            return "diffusers-sdxl" if p.name == "learned_embeds.safetensors" else "sdxl"
        return "diffusers"
    if suffix == ".pt":
        return "a1111"
    if suffix == ".bin":
        return "sdxl-pt" if sdxl else "diffusers-bin"
    if suffix == ".png":
        return "png"
    if suffix == "" or p.is_dir() or str(path).endswith(("/", os.sep)):
        return "diffusers-sdxl" if sdxl else "concepts-library"
    raise UsageError(
        f"cannot tell the format from the name {p.name!r}",
        hint=f"pass --to with one of: {', '.join(WRITABLE)}",
    )


def plan(embedding: Embedding, path: str | os.PathLike[str], *, format: str | None = None) -> tuple[str, list[tuple[Path, bytes]]]:
    """Encode ``embedding`` for ``path`` without writing: (format name, [(file, bytes)])."""
    fmt = format or format_for_path(path, embedding)
    spec = FORMATS.get(fmt)
    if spec is None:
        raise UsageError(f"unknown format {fmt!r}", hint=f"choose one of: {', '.join(WRITABLE)}")
    if spec.writer is None:
        raise UsageError(f"the {fmt} format is read-only", hint=f"choose one of: {', '.join(WRITABLE)}")
    return fmt, spec.writer(embedding, Path(path))


def write(
    embedding: Embedding, path: str | os.PathLike[str], *, format: str | None = None, force: bool = False
) -> list[Path]:
    """Write ``embedding`` to ``path`` atomically.

    Args:
        embedding: what to write.
        path: the destination file (or folder, for folder formats).
        format: a key of :data:`FORMATS`; by default chosen by :func:`format_for_path`.
        force: overwrite existing files.

    Returns:
        The files written.

    Raises:
        DestinationExistsError: a file exists and ``force`` is False (nothing is written).
        FormatCapabilityError: the format cannot hold this embedding (SDXL into a single-encoder
            format, no token where one is stored, ...).
        UsageError: unknown or read-only format.
    """
    _fmt, files = plan(embedding, path, format=format)
    if not force:
        for target, _ in files:
            # lexists: a link to nothing is a name in use too; replacing it is overwriting.
            if os.path.lexists(target):
                raise DestinationExistsError("already exists", path=target)
    for target, _ in files:
        # os.path: a name the file system cannot hold is no folder, and the write names it.
        if os.path.isdir(target):
            raise DestinationExistsError("is a folder", path=target, hint="choose a file name")
    for target, data in files:
        # Exclusive without force: a file another process creates meanwhile is kept too.
        atomic_write_bytes(target, data, exclusive=not force)
    return [target for target, _ in files]


@dataclass(frozen=True)
class Conversion:
    """What :func:`convert` did.

    Attributes:
        source: the file read.
        source_format: its format.
        format: the format written.
        files: the files written (two for a diffusers SDXL pair).
        embedding: what was written (the source, with ``token`` applied).
        token: the prompt word the written file gives, as read back from it.
        token_stored: False when the format stores no word (``emb-params-pt``, ``sdxl-pt``):
            tools then use the file name, which ``token`` is.
    """

    source: Path
    source_format: str
    format: str
    files: list[Path]
    embedding: Embedding
    token: str | None = None
    token_stored: bool = True


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    to: str | None = None,
    token: str | None = None,
    force: bool = False,
    strict: bool = False,
) -> Conversion:
    """Convert an embedding file to another format, verifying the result before writing.

    Every file about to be written is decoded again in memory and its vectors compared bit
    for bit with the source, so a conversion can never silently lose precision.

    Args:
        src: any readable embedding file or folder.
        dst: destination file (or folder for folder formats); the format comes from its name
            unless ``to`` is given.
        to: a key of :data:`FORMATS`.
        token: placeholder token to store instead of the source's; it replaces an
            AUTOMATIC1111 name too (the prompt word of a1111 images). A format that stores no
            word (``emb-params-pt``, ``sdxl-pt``) leaves it to the file name: see
            ``Conversion.token_stored``.
        force: overwrite existing files.
        strict: refuse vectors holding NaN/Inf.

    Returns:
        A :class:`Conversion` naming the files written.

    Example:
        >>> convert("bad_prompt_version2.pt", "bad_prompt.safetensors", token="bad_prompt")
    """
    embedding = read(src, strict=strict)
    if token is not None:
        if not token.strip():
            raise UsageError("--token is empty")
        if not is_text(token):
            raise UsageError(f"--token {printable(token)} is not UTF-8 text (it holds a lone surrogate)")
        hidden = invisible_characters(token)
        if hidden:
            # The library refuses such a token at add: a file written with it would be refused
            # there, and no prompt box can type it.
            raise UsageError(
                f"--token {printable(token)} holds control or invisible characters ({', '.join(hidden)}) that no one can type",
                hint="pass --token with printable text",
            )
        # An AUTOMATIC1111 name is the source's prompt word: the new token replaces it too, or
        # formats that store only a name (a1111, png) would keep the old word.
        embedding = replace(embedding, token=token, name=token if embedding.name is not None else None)
    fmt, files = plan(embedding, dst, format=to)
    written_back: Embedding | None = None
    for target, data in files:
        if target.suffix.lower() not in (".safetensors", ".bin", ".pt", ".png"):
            continue
        back = read_bytes(data, target)
        written_back = written_back or back
        for key, tensor in back.vectors.items():
            original = embedding.vectors.get(key)
            if original is None or not original.equal(tensor):
                raise FormatCapabilityError(  # a bug, not bad input; kept loud on purpose
                    f"internal check failed: {key} vectors would not survive the {fmt} format", path=target
                )
    written = write(embedding, dst, format=fmt, force=force)
    assert written_back is not None  # every format writes a .safetensors, .bin, .pt or .png
    stored = written_back.token or written_back.name
    return Conversion(
        Path(src), embedding.source_format or "?", fmt, written, embedding,
        token=stored or written_back.prompt_word(), token_stored=stored is not None,
    )  # fmt: skip
