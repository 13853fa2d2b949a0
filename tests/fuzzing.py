"""Fuzzing helpers shared by the fuzz tests, the memory-bound tests and the benchmarks.

* A **seed corpus**: files written by conceptlib's own writers for every writable format and
  every family (SD 1.x 768, SD 2.x 1024, SDXL 768 + 1280), dtype (float32, float16, bfloat16)
  and size (1 and 75 vectors), plus what no writer makes (the legacy torch container, zTXt/iTXt
  and pixel-only PNGs, lossless WebP, the read-only layouts) and the real third-party files of
  ``../shared/data/embeddings`` when they are present.
* **Mutators** over bytes, generic (flips, truncation, splices, ...) and structure-aware (zip
  header fields, safetensors header length and JSON values, pickle opcodes and their
  arguments, PNG chunks and the embedding JSON inside them). Every mutator takes a
  :class:`Chooser`, so the same code is driven by hypothesis in the tests (shrinkable,
  deterministic) and by a seeded :class:`random.Random` in ``benchmarks/fuzz_campaign.py``.
* The **properties**: :func:`check_read_bytes`, :func:`check_read_path`, :func:`check_cli`.
* **Bombs**: small files built from scratch that ask a reader for gigabytes or hours
  (:data:`BOMBS`), and :func:`isolated_read`, which reads a file in a fresh interpreter under an
  address-space limit and a wall-clock timeout.

Nothing here imports torch.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import io
import json
import math
import os
import pickle
import pickletools
import random
import re
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from conceptlib.embedding import Embedding
from conceptlib.errors import ConceptlibError, FormatCapabilityError
from conceptlib.formats import FORMATS, plan
from conceptlib.formats import _torchpickle as tp
from conceptlib.tensor import DTYPES, Tensor
from factory import sd1, sd2, sdxl

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]
SHARED_EMBEDDINGS = (REPO.parent / "shared" / "data" / "embeddings").resolve()

#: The property's bounds (see check_read_bytes). The time bound is generous so that a loaded CI
#: machine does not flake; bench_hostile.py records the real figures.
TIME_LIMIT_S = 5.0
MEMORY_LIMIT_BYTES = 300 * 2**20
MESSAGE_LIMIT = 1000

FAMILIES: dict[str, Callable[..., Embedding]] = {"sd1": sd1, "sd2": sd2, "sdxl": sdxl}
FLOAT_DTYPES = ("float32", "float16", "bfloat16")
COUNTS = (1, 75)


# =============================================================================================
# Choosers: where mutators get their decisions from
# =============================================================================================


class Chooser(Protocol):
    """A source of decisions: hypothesis (tests) or a seeded RNG (the campaign)."""

    def integer(self, lo: int, hi: int) -> int: ...

    def choice(self, items: Sequence[T]) -> T: ...

    def binary(self, max_size: int) -> bytes: ...


class RandomChooser:
    """Decisions from a seeded :class:`random.Random` (reproducible from the seed)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def choice(self, items: Sequence[T]) -> T:
        return items[self.rng.randrange(len(items))]

    def binary(self, max_size: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(0, max_size))


class HypothesisChooser:
    """Decisions drawn from hypothesis' ``data`` object, so failures shrink."""

    def __init__(self, data: Any) -> None:
        from hypothesis import strategies as st

        self._data = data
        self._st = st

    def integer(self, lo: int, hi: int) -> int:
        return int(self._data.draw(self._st.integers(lo, hi)))

    def choice(self, items: Sequence[T]) -> T:
        return items[self.integer(0, len(items) - 1)]

    def binary(self, max_size: int) -> bytes:
        return bytes(self._data.draw(self._st.binary(max_size=max_size)))


# =============================================================================================
# The seed corpus
# =============================================================================================


@dataclass(frozen=True)
class Seed:
    """One input: a single file, or a folder of files (``files`` names are relative)."""

    label: str
    files: tuple[tuple[str, bytes], ...]
    folder: bool = False

    @property
    def name(self) -> str:
        return self.files[0][0]

    @property
    def data(self) -> bytes:
        return self.files[0][1]

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix

    def materialise(self, where: Path) -> Path:
        """Write the seed under ``where``; return the file (or the folder) to read."""
        if self.folder:
            root = where / "concept"
            for name, data in self.files:
                target = root / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            return root
        target = where / self.name
        target.write_bytes(self.data)
        return target


def synth_embedding(family: str, dtype: str, count: int) -> Embedding:
    """A seeded embedding with every field a format can keep."""
    return FAMILIES[family](
        count,
        dtype=dtype,
        seed=count,
        token=f"<fz-{family}>",
        name=f"fz-{family}-{dtype}",
        step=1234,
        checkpoint_hash="a9263745",
        checkpoint_name="sd-1.5",
        metadata={"concept_type": "style", "license": "mit"},
    )


def _format_files(emb: Embedding, fmt: str) -> tuple[tuple[str, bytes], ...] | None:
    spec = FORMATS[fmt]
    base = "concept" if not spec.suffix else f"emb{spec.suffix}"
    if fmt == "diffusers-sdxl":
        base = "learned_embeds.safetensors"
    try:
        _, files = plan(emb, Path(base), format=fmt)
    except FormatCapabilityError:
        return None
    root = Path(base) if fmt == "concepts-library" else Path(".")
    return tuple((str(p.relative_to(root)) if fmt == "concepts-library" else p.name, data) for p, data in files)


# --- PNG chunks -------------------------------------------------------------------------------

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TEXT_KEY = b"sd-ti-embedding"


def png_chunk(kind: bytes, data: bytes, *, crc: int | None = None) -> bytes:
    """One PNG chunk with its CRC (or the CRC given)."""
    value = zlib.crc32(kind + data) & 0xFFFFFFFF if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", value)


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]] | None:
    """The (type, data) chunks of a PNG, or None when the framing is broken."""
    if not data.startswith(PNG_MAGIC):
        return None
    pos, out = 8, []
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        if pos + 12 + length > len(data):
            return None
        out.append((kind, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def png_from_chunks(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return PNG_MAGIC + b"".join(png_chunk(kind, data) for kind, data in chunks)


def text_chunk(text: bytes, how: str, key: bytes = TEXT_KEY) -> tuple[bytes, bytes]:
    """A text chunk carrying ``text``: ``tEXt``, ``zTXt`` or ``iTXt`` (``iTXt-z`` compressed)."""
    if how == "tEXt":
        return b"tEXt", key + b"\0" + text
    if how == "zTXt":
        return b"zTXt", key + b"\0\0" + zlib.compress(text)
    if how == "iTXt":
        return b"iTXt", key + b"\0\0\0" + b"\0" + b"\0" + text
    if how == "iTXt-z":
        return b"iTXt", key + b"\0\1\0" + b"\0" + b"\0" + zlib.compress(text)
    raise ValueError(how)


def png_text_payload(data: bytes) -> bytes | None:
    """The raw (base64) text of the sd-ti-embedding chunk, whichever kind carries it."""
    for kind, body in png_chunks(data) or []:
        if kind == b"tEXt" and body.startswith(TEXT_KEY + b"\0"):
            return body[len(TEXT_KEY) + 1 :]
        if kind == b"zTXt" and body.startswith(TEXT_KEY + b"\0"):
            with contextlib.suppress(zlib.error):
                return zlib.decompressobj().decompress(body[len(TEXT_KEY) + 2 :], 64 * 2**20)
        if kind == b"iTXt" and body.startswith(TEXT_KEY + b"\0"):
            rest = body[len(TEXT_KEY) + 1 :]
            if len(rest) < 2:
                return None
            compressed, rest = rest[0], rest[2:]
            parts = rest.split(b"\0", 2)
            if len(parts) < 3:
                return None
            with contextlib.suppress(zlib.error):
                return zlib.decompressobj().decompress(parts[2], 64 * 2**20) if compressed else parts[2]
    return None


def png_retext(data: bytes, text: bytes | None, how: str = "tEXt") -> bytes:
    """``data`` with its sd-ti-embedding chunk replaced by ``text`` in a ``how`` chunk (None: removed)."""
    chunks = png_chunks(data)
    assert chunks is not None
    kept = [(k, b) for k, b in chunks if not (k in (b"tEXt", b"zTXt", b"iTXt") and b.startswith(TEXT_KEY + b"\0"))]
    if text is not None:
        kept.insert(1, text_chunk(text, how))
    return png_from_chunks(kept)


def tiny_png(width: int = 1, height: int = 1, *, extra: Sequence[tuple[bytes, bytes]] = ()) -> bytes:
    """A valid RGB PNG of one grey colour plus ``extra`` chunks (before IDAT)."""
    raw = b"".join(b"\0" + b"\x40" * (3 * width) for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return png_from_chunks([(b"IHDR", ihdr), *extra, (b"IDAT", zlib.compress(raw)), (b"IEND", b"")])


_LCG_A, _LCG_C = 1664525, 1013904223


def _lcg_nibbles(count: int) -> np.ndarray:
    """A1111's whitening stream: r_k = s_{k+1} mod 255 with s_{k+1} = a*s_k + c mod 2**32, s_0 = 0;
    only the low nibble is used. Computed by doubling: knowing the first n states and the map
    that advances n steps (again affine) gives the next n at once."""
    states = np.empty(count, dtype=np.uint64)
    if count:
        states[0] = _LCG_C
    filled, mul, inc = 1, _LCG_A, _LCG_C
    while filled < count:
        take = min(filled, count - filled)
        states[filled : filled + take] = (states[:take] * np.uint64(mul) + np.uint64(inc)) & np.uint64(0xFFFFFFFF)
        filled += take
        mul, inc = (mul * mul) & 0xFFFFFFFF, (mul * inc + inc) & 0xFFFFFFFF
    return ((states % np.uint64(255)) & np.uint64(0x0F)).astype(np.uint8)


def pixel_png_from_stream(stream: bytes, *, height: int = 64, cover_width: int = 64) -> bytes:
    """An image whose pixel data blocks (A1111's container B) carry ``stream`` (normally zlib),
    built independently of conceptlib's writer: ``low block | black | cover | black | high block``.
    Every data pixel gets a high nibble of 1, so A1111's crop keeps the whole image."""
    from PIL import Image

    data = np.frombuffer(stream, dtype=np.uint8)
    n = data.size
    m1 = n + (height - n % height)
    m = m1 + (3 * height - m1 % (3 * height))
    padded = np.resize(data, m)
    whitening = _lcg_nibbles(m)

    def block(nibbles: np.ndarray) -> np.ndarray:
        return ((nibbles ^ whitening) | np.uint8(0x10)).reshape(height, -1, 3)

    low, high = block(padded & np.uint8(0x0F)), block(padded >> np.uint8(4))
    width = low.shape[1]
    canvas = np.zeros((height, 2 * width + cover_width + 2, 3), dtype=np.uint8)
    canvas[:, :width] = low
    canvas[:, width + 1 : width + 1 + cover_width] = 0x41
    canvas[:, width + 2 + cover_width :] = high
    buffer = io.BytesIO()
    Image.fromarray(canvas).save(buffer, format="PNG")
    return buffer.getvalue()


def pixel_png(raw_json: bytes, *, with_text: bool = False) -> bytes:
    """An embedding PNG whose pixel container carries ``raw_json`` verbatim (any bytes, even
    invalid JSON), plus the same bytes as a tEXt chunk when ``with_text``."""
    data = pixel_png_from_stream(zlib.compress(raw_json, 9))
    return png_retext(data, base64.b64encode(raw_json)) if with_text else data


def to_webp(png: bytes) -> bytes | None:
    """The same pixels as a lossless WebP (None when Pillow lacks WebP)."""
    from PIL import Image, features

    if not features.check("webp"):
        return None
    with Image.open(io.BytesIO(png)) as image:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="WEBP", lossless=True, quality=100)
    return buffer.getvalue()


# --- pickles by hand (the legacy container has no writer) --------------------------------------


def _op_str(value: str) -> bytes:
    raw = value.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(raw)) + raw


def _op_int(value: int) -> bytes:
    return pickle.dumps(value, protocol=2)[2:-1]


def pickle_ops(obj: object, storages: list[tuple[str, Tensor]], *, legacy: bool) -> bytes:
    """Protocol-2 opcodes (no PROTO/STOP) for dicts, lists, tuples, scalars and tensors."""
    if obj is None:
        return b"N"
    if isinstance(obj, bool):
        return b"\x88" if obj else b"\x89"
    if isinstance(obj, int):
        return _op_int(obj)
    if isinstance(obj, float):
        return b"G" + struct.pack(">d", obj)
    if isinstance(obj, str):
        return _op_str(obj)
    if isinstance(obj, dict):
        body = b"".join(
            pickle_ops(k, storages, legacy=legacy) + pickle_ops(v, storages, legacy=legacy) for k, v in obj.items()
        )
        return b"}" + (b"(" + body + b"u" if obj else b"")
    if isinstance(obj, list):
        return b"](" + b"".join(pickle_ops(v, storages, legacy=legacy) for v in obj) + b"e"
    if isinstance(obj, tuple):
        return b"(" + b"".join(pickle_ops(v, storages, legacy=legacy) for v in obj) + b"t"
    if isinstance(obj, Tensor):
        key = str(len(storages))
        storages.append((key, obj))
        shape = obj.shape
        stride = tuple(int(np.prod(shape[i + 1 :], dtype=np.int64)) for i in range(len(shape)))
        numel = int(np.prod(shape, dtype=np.int64)) if shape else 1
        pid = b"(" + _op_str("storage") + b"ctorch\n" + DTYPES[obj.dtype][2].encode() + b"\n"
        pid += _op_str(key) + _op_str("cpu") + _op_int(numel) + (b"N" if legacy else b"") + b"tQ"
        args = pid + _op_int(0) + pickle_ops(shape, [], legacy=legacy) + pickle_ops(stride, [], legacy=legacy)
        args += b"\x89ccollections\nOrderedDict\n)R"
        return b"ctorch._utils\n_rebuild_tensor_v2\n(" + args + b"tR"
    raise TypeError(type(obj).__name__)


def legacy_pickle(obj: object) -> bytes:
    """``obj`` in torch's legacy (``_use_new_zipfile_serialization=False``) container."""
    storages: list[tuple[str, Tensor]] = []
    main = b"\x80\x02" + pickle_ops(obj, storages, legacy=True) + b"."
    out = pickle.dumps(tp.LEGACY_MAGIC, protocol=2) + pickle.dumps(tp.LEGACY_PROTOCOL, protocol=2)
    out += pickle.dumps({"protocol_version": 1001, "little_endian": True, "type_sizes": {"int": 4}}, protocol=2)
    out += main + pickle.dumps([key for key, _ in storages], protocol=2)
    for _key, tensor in storages:
        out += struct.pack("<q", tensor.array.size) + tensor.tobytes()
    return out


def zip_pickle(pkl: bytes, storages: dict[str, bytes] | None = None, *, deflate: Sequence[str] = (), folder: str = "archive") -> bytes:
    """A torch zip container around a hand-made pickle and raw storage records."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        records = {"data.pkl": pkl, **{f"data/{k}": v for k, v in (storages or {}).items()}, "version": b"3\n"}
        for name, payload in records.items():
            method = zipfile.ZIP_DEFLATED if name in deflate else zipfile.ZIP_STORED
            archive.writestr(f"{folder}/{name}", payload, compress_type=method, compresslevel=9)
    return buffer.getvalue()


def zip_records(data: bytes) -> list[tuple[str, bytes]] | None:
    """The records of a (small) zip, or None when zipfile cannot read it."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
            if sum(i.file_size for i in infos) > 16 * 2**20:
                return None
            return [(i.filename, archive.read(i)) for i in infos]
    except Exception:
        return None


def rezip(records: Sequence[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, payload in records:
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), payload)
    return buffer.getvalue()


# --- the corpus -------------------------------------------------------------------------------


def _vec(n: int, width: int, dtype: str = "float32") -> Tensor:
    from factory import vectors

    return vectors(n, width, dtype=dtype, seed=n + width)


def _extra_seeds() -> list[Seed]:
    """Containers and layouts no conceptlib writer produces."""
    out: list[Seed] = []
    a1111 = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": _vec(2, 768)},
        "name": "legacy-a1111",
        "step": 500,
        "sd_checkpoint": "a9263745",
        "sd_checkpoint_name": "sd-1.5",
    }
    out.append(Seed("legacy/a1111/sd1", (("legacy.pt", legacy_pickle(a1111)),)))
    out.append(Seed("legacy/concepts/sd1", (("learned_embeds.bin", legacy_pickle({"<leg>": _vec(1, 768).reshape(768)})),)))
    out.append(Seed("legacy/sdxl", (("legacy-xl.pt", legacy_pickle({"clip_g": _vec(2, 1280), "clip_l": _vec(2, 768)})),)))
    out.append(Seed("legacy/sd2-f16", (("legacy-sd2.pt", legacy_pickle({"emb_params": _vec(3, 1024, "float16")})),)))
    out.append(Seed("sdxl-emb/bf16", (("emb.pt", tp.dumps({"emb": _vec(1, 768, "bfloat16").reshape(768), "emb2": _vec(1, 1280, "bfloat16").reshape(1280)})),)))
    out.append(Seed("raw-tensor/sd1", (("raw.pt", tp.dumps(_vec(4, 768))),)))
    out.append(Seed("raw-tensor/sd1-legacy", (("raw-legacy.pt", legacy_pickle(_vec(4, 768))),)))
    from conceptlib.formats import _safetensors

    pti = _safetensors.dumps({"text_encoders_0": _vec(2, 768), "text_encoders_1": _vec(2, 1280)}, {"format": "pt"})
    out.append(Seed("sdxl-pti", (("pti.safetensors", pti),)))
    # PNG variants: the same payload in zTXt, iTXt (plain and compressed), pixels only, WebP.
    emb = synth_embedding("sd1", "float32", 1)
    files = _format_files(emb, "png")
    assert files is not None
    png = files[0][1]
    text = png_text_payload(png)
    assert text is not None
    for how in ("zTXt", "iTXt", "iTXt-z"):
        out.append(Seed(f"png-{how}/sd1/float32/1", ((f"emb-{how}.png", png_retext(png, text, how)),)))
    out.append(Seed("png-pixels/sd1/float32/1", (("emb-pixels.png", png_retext(png, None)),)))
    webp = to_webp(png_retext(png, None))
    if webp is not None:
        out.append(Seed("webp/sd1/float32/1", (("emb.webp", webp),)))
    # Small pixel-only PNGs whose JSON is conceptlib's own, with a tiny cover: cheap to fuzz.
    raw = base64.b64decode(text)
    out.append(Seed("png-pixels-small/sd1", (("small.png", pixel_png(raw)),)))
    # Folders: diffusers output (one file) and an sd-concepts-library folder with odd text files.
    st_one = _format_files(synth_embedding("sd1", "float16", 1), "diffusers")
    assert st_one is not None
    out.append(Seed("folder/diffusers-output", (("learned_embeds.safetensors", st_one[0][1]),), folder=True))
    return out


def _shared_seeds() -> list[Seed]:
    if not SHARED_EMBEDDINGS.is_dir():
        return []
    return [
        Seed(f"shared/{p.name}", ((p.name.split("+")[-1], p.read_bytes()),))
        for p in sorted(SHARED_EMBEDDINGS.iterdir())
        if p.is_file() and p.stat().st_size < 4 * 2**20
    ]


@functools.cache
def seed_corpus(size: str = "small", *, shared: bool = True) -> tuple[Seed, ...]:
    """The seeds: ``small`` (every format and family, 75 vectors except for PNG, plus the
    extra containers) or ``all`` (also the 75-vector PNGs and WebPs). Deterministic."""
    seeds: list[Seed] = []
    for family in FAMILIES:
        for dtype in FLOAT_DTYPES:
            for count in COUNTS:
                emb = synth_embedding(family, dtype, count)
                for fmt, spec in FORMATS.items():
                    if spec.writer is None:
                        continue
                    if fmt == "png" and (count > 1 and size == "small"):
                        continue
                    files = _format_files(emb, fmt)
                    if files is None:
                        continue
                    folder = fmt in ("concepts-library", "diffusers-sdxl")
                    seeds.append(Seed(f"{fmt}/{family}/{dtype}/{count}", files, folder=folder))
                    if fmt == "diffusers-sdxl":  # each file of the pair on its own, too
                        for name, data in files:
                            seeds.append(Seed(f"{fmt}-file/{family}/{dtype}/{count}/{name}", ((name, data),)))
                    if fmt == "concepts-library":
                        bin_name, bin_data = files[0]
                        seeds.append(Seed(f"{fmt}-file/{family}/{dtype}/{count}", ((bin_name, bin_data),)))
    seeds.extend(_extra_seeds())
    if shared:
        seeds.extend(_shared_seeds())
    return tuple(seeds)


def file_seeds(size: str = "small", *, shared: bool = True, max_bytes: int | None = None) -> tuple[Seed, ...]:
    """Single-file seeds only (what ``read_bytes`` takes), optionally no larger than ``max_bytes``."""
    return tuple(
        s for s in seed_corpus(size, shared=shared) if not s.folder and (max_bytes is None or len(s.data) <= max_bytes)
    )


def folder_seeds(size: str = "small") -> tuple[Seed, ...]:
    return tuple(s for s in seed_corpus(size, shared=False) if s.folder)


# =============================================================================================
# Hostile values
# =============================================================================================


class Raw(str):
    """JSON text inserted verbatim (what json.dumps cannot write: 5000-digit ints, NaN, depth)."""


BIG_DIGITS = "9" * 5000
HOSTILE_INTS = [
    0, 1, -1, 2, 7, 255, 256, 768, 1024, 1280, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1, 2**32,
    2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**31), -(2**63), 10**12, 10**30, -(10**30),
]  # fmt: skip
HOSTILE_JSON: list[object] = [
    *HOSTILE_INTS,
    True, False, None, 0.5, -0.0, 1e308, 5e-324, 768.0,
    "", "F32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "F8_E4M3", "x" * 5000, "\ud800", "\udfff\ud800",
    "a\nb\r\x1b[31mred", "\u202eevil", "\0", "../../x", "TORCHTENSOR", "1" * 5000, "\u00b2", "٣",
    [], {}, [0], [-1], [True, 768], [False], [1, 768], [768], [1, 2, 3, 4], [10**12, 768], [0, 10**12],
    [2**63, 2**64], [-5, 3], [[1]], [[768]], [1.5, 2], [0, 0], [None], ["a"], [[]] * 3, [0] * 70,
    {"dtype": "F32"}, {"dtype": "F32", "shape": [1, 768], "data_offsets": [0, 3072]},
    {"TORCHTENSOR": []}, {"TORCHTENSOR": [[]]}, {"TORCHTENSOR": "abc"}, {"TORCHTENSOR": [[1, [2]]]},
    {"TORCHTENSOR": [[0.0] * 768]}, {"TORCHTENSOR": [True] * 768}, {"TORCHTENSOR": [2**70] * 3},
    {"*": {"TORCHTENSOR": [[0.0] * 1024]}}, {"clip_l": 1, "clip_g": 2},
    Raw(BIG_DIGITS), Raw("-" + BIG_DIGITS), Raw("0." + BIG_DIGITS), Raw("1e999999"), Raw("-1e999999"),
    Raw("NaN"), Raw("Infinity"), Raw("-Infinity"), Raw("[" * 5000 + "]" * 5000),
    Raw("[" * 100_000 + "]" * 100_000), Raw('{"a":' * 3000 + "1" + "}" * 3000), Raw('"\\ud800"'),
    Raw("[" + ",".join(["0"] * 100_000) + "]"), Raw('{"TORCHTENSOR":[' + ",".join([BIG_DIGITS] * 2) + "]}"),
    Raw('{"TORCHTENSOR":' + "[" * 40 + "0" + "]" * 40 + "}"),
]  # fmt: skip
HOSTILE_KEYS = [
    "", "x" * 5000, "\ud800", "a\nb", "\x1b[2J", "__metadata__", "string_to_param", "clip_l", "clip_g",
    "emb_params", "*", "conceptlib.step", "conceptlib.metadata", "conceptlib.layout", "format",
    "conceptlib.token", "\u202e", "TORCHTENSOR", "conceptlib_dtypes",
]  # fmt: skip


def dump_json(doc: object) -> bytes:
    """``json.dumps`` that writes :class:`Raw` values verbatim and NaN/Infinity as JSON tokens."""
    raws: list[str] = []

    def swap(value: object) -> object:
        if isinstance(value, Raw):
            raws.append(str(value))
            return f"\ue000RAW{len(raws) - 1}\ue000"
        if isinstance(value, dict):
            return {k: swap(v) for k, v in value.items()}
        if isinstance(value, list):
            return [swap(v) for v in value]
        return value

    text = json.dumps(swap(doc), ensure_ascii=True)
    for i, raw in enumerate(raws):
        text = text.replace(json.dumps(f"\ue000RAW{i}\ue000"), raw)
    return text.encode("utf-8", "surrogatepass")


def _json_paths(doc: object, c: Chooser, depth: int = 0) -> list[object]:
    """A random path (list of keys/indices) into ``doc``; may stop anywhere."""
    path: list[object] = []
    node = doc
    while depth < 6:
        if isinstance(node, dict) and node and c.integer(0, 3):
            key = c.choice(list(node))
            path.append(key)
            node = node[key]
        elif isinstance(node, list) and node and c.integer(0, 3):
            index = c.integer(0, len(node) - 1)
            path.append(index)
            node = node[index]
        else:
            break
        depth += 1
    return path


def mutate_json(doc: object, c: Chooser) -> object:
    """Replace a value, add a key or rename a key somewhere in ``doc`` (a copy) with hostile ones."""
    doc = json.loads(json.dumps(doc))  # a deep copy that keeps surrogates
    path = _json_paths(doc, c)
    value = c.choice(HOSTILE_JSON)
    if not path:
        if isinstance(doc, dict) and c.integer(0, 1):
            doc[c.choice(HOSTILE_KEYS)] = value
            return doc
        return value
    parent: Any = doc
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    action = c.integer(0, 3)
    if action == 0 and isinstance(parent, dict):
        parent[c.choice(HOSTILE_KEYS)] = parent.pop(last)  # rename
    elif action == 1 and isinstance(parent, dict):
        parent[c.choice(HOSTILE_KEYS)] = value  # add
    elif action == 2 and isinstance(parent, list):
        parent.insert(int(str(last)), value)
    else:
        parent[last] = value
    return doc


# =============================================================================================
# Mutators
# =============================================================================================

INTERESTING_32 = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF]


def _interesting(c: Chooser, original: int, bits: int, size: int) -> int:
    mask = (1 << bits) - 1
    options = [v & mask for v in INTERESTING_32] + [
        (original + 1) & mask, (original - 1) & mask, (original * 2) & mask, original // 2,
        size & mask, (size + 1) & mask, (size - 1) & mask, mask, (1 << (bits - 1)) & mask,
    ]  # fmt: skip
    if bits == 64:
        options += [2**63, 2**63 - 1, 2**64 - 1, 100 * 2**20, 100 * 2**20 + 1]
    return c.choice(options)


def m_flip(c: Chooser, data: bytes, corpus: Sequence[bytes]) -> bytes:
    if not data:
        return bytes([c.integer(0, 255)])
    out = bytearray(data)
    for _ in range(c.integer(1, 8)):
        i = c.integer(0, len(out) - 1)
        out[i] ^= 1 << c.integer(0, 7)
    return bytes(out)


def m_set_bytes(c: Chooser, data: bytes, corpus: Sequence[bytes]) -> bytes:
    if not data:
        return c.binary(16)
    out = bytearray(data)
    for _ in range(c.integer(1, 4)):
        out[c.integer(0, len(out) - 1)] = c.choice([0, 1, 0x7F, 0x80, 0xFF, c.integer(0, 255)])
    return bytes(out)


def m_truncate(c: Chooser, data: bytes, corpus: Sequence[bytes]) -> bytes:
    if not data:
        return data
    cut = c.choice([c.integer(0, len(data)), len(data) - 1, len(data) // 2, 8, 9, 30, len(data) - 22])
    return data[: max(0, cut)]


def m_splice(c: Chooser, data: bytes, corpus: Sequence[bytes]) -> bytes:
    other = c.choice(corpus) if corpus else data
    a = c.integer(0, len(data))
    b = c.integer(0, len(other))
    return data[:a] + other[b:] if c.integer(0, 1) else data[:a] + other[b : b + c.integer(0, 4096)] + data[a:]


def m_insert(c: Chooser, data: bytes, corpus: Sequence[bytes]) -> bytes:
    at = c.integer(0, len(data))
    blob = c.choice([c.binary(64), b"\0" * c.integer(1, 4096), b"\xff" * c.integer(1, 64), b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06", b"{", b"IEND"])
    return data[:at] + blob + data[at:]


def m_delete(c: Chooser, data: bytes, corpus: Sequence[bytes]) -> bytes:
    if not data:
        return data
    a = c.integer(0, len(data) - 1)
    return data[:a] + data[a + c.integer(1, 256) :]


def m_duplicate(c: Chooser, data: bytes, corpus: Sequence[bytes]) -> bytes:
    if not data:
        return data
    a = c.integer(0, len(data) - 1)
    piece = data[a : a + c.integer(1, 512)]
    return data[:a] + piece * c.integer(2, 8) + data[a:]


def m_int_field(c: Chooser, data: bytes, corpus: Sequence[bytes]) -> bytes:
    """Overwrite 2, 4 or 8 bytes anywhere with an interesting little/big-endian integer."""
    width = c.choice([2, 4, 8])
    if len(data) < width:
        return data
    at = c.integer(0, len(data) - width)
    fmt = c.choice(["<", ">"]) + {2: "H", 4: "I", 8: "Q"}[width]
    (old,) = struct.unpack(fmt, data[at : at + width])
    return data[:at] + struct.pack(fmt, _interesting(c, old, width * 8, len(data))) + data[at + width :]


# --- zip ----------------------------------------------------------------------------------------

# (signature, {field: (offset, struct format)}) of local headers, central headers and the end record.
_ZIP_FIELDS = {
    b"PK\x03\x04": {"flags": (6, "<H"), "method": (8, "<H"), "crc": (14, "<I"), "csize": (18, "<I"), "usize": (22, "<I"), "name_len": (26, "<H"), "extra_len": (28, "<H")},
    b"PK\x01\x02": {"flags": (8, "<H"), "method": (10, "<H"), "crc": (16, "<I"), "csize": (20, "<I"), "usize": (24, "<I"), "name_len": (28, "<H"), "extra_len": (30, "<H"), "comment_len": (32, "<H"), "disk": (34, "<H"), "offset": (42, "<I")},
    b"PK\x05\x06": {"disk": (4, "<H"), "entries_disk": (8, "<H"), "entries": (10, "<H"), "cd_size": (12, "<I"), "cd_offset": (16, "<I"), "comment_len": (20, "<H")},
}  # fmt: skip


def m_zip_field(c: Chooser, data: bytes, corpus: Sequence[bytes]) -> bytes:
    """Edit a length, size, offset, method or count field of a zip header."""
    spots = [(sig, i) for sig in _ZIP_FIELDS for i in _find_all(data, sig)]
    if not spots:
        return m_int_field(c, data, corpus)
    sig, at = c.choice(spots)
    name = c.choice(sorted(_ZIP_FIELDS[sig]))
    offset, fmt = _ZIP_FIELDS[sig][name]
    pos = at + offset
    width = struct.calcsize(fmt)
    if pos + width > len(data):
        return data
    (old,) = struct.unpack(fmt, data[pos : pos + width])
    if name == "method":
        new = c.choice([0, 1, 6, 8, 9, 12, 14, 93, 99, 0xFFFF])
    elif name == "flags":
        new = old ^ c.choice([1, 8, 0x40, 0x800, 0x2000])
    else:
        new = _interesting(c, old, width * 8, len(data))
    return data[:pos] + struct.pack(fmt, new) + data[pos + width :]


def _find_all(data: bytes, needle: bytes, limit: int = 64) -> list[int]:
    out: list[int] = []
    at = data.find(needle)
    while at >= 0 and len(out) < limit:
        out.append(at)
        at = data.find(needle, at + 1)
    return out


# --- safetensors --------------------------------------------------------------------------------


def _st_split(data: bytes) -> tuple[dict[str, Any], bytes] | None:
    if len(data) < 10 or data[8:9] != b"{":
        return None
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8 or n > 4 * 2**20:
        return None
    try:
        header = json.loads(data[8 : 8 + n])
    except (ValueError, RecursionError):
        return None
    return (header, data[8 + n :]) if isinstance(header, dict) else None


def safetensors_with_header(header_text: bytes, payload: bytes, *, pad: bool = True) -> bytes:
    raw = header_text + (b" " * (-len(header_text) % 8) if pad else b"")
    return struct.pack("<Q", len(raw)) + raw + payload


def m_safetensors_json(c: Chooser, data: bytes, corpus: Sequence[bytes]) -> bytes:
    """Replace a value of the safetensors JSON header (dtype, shape, offsets, metadata, keys)."""
    split = _st_split(data)
    if split is None:
        return m_int_field(c, data, corpus)
    header, payload = split
    return safetensors_with_header(dump_json(mutate_json(header, c)), payload)


def m_safetensors_length(c: Chooser, data: bytes, corpus: Sequence[bytes]) -> bytes:
    """Edit the 8-byte header length."""
    if len(data) < 8:
        return data
    (old,) = struct.unpack("<Q", data[:8])
    new = c.choice([0, 1, 2, old - 1, old + 1, old + 8, old - 8, len(data) - 8, len(data) - 7, 100 * 2**20, 100 * 2**20 + 1, 2**63, 2**64 - 1, old * 2])
    return struct.pack("<Q", max(0, min(new, 2**64 - 1))) + data[8:]


# --- pickles ------------------------------------------------------------------------------------

HOSTILE_OPS = [
    b"N", b"0", b"2", b")", b"]", b"}", b"(", b"t", b"\x85", b"\x86", b"\x87", b"R", b"b", b"s", b"u", b"a",
    b"e", b"l", b"d", b"1", b"h\x00", b"h\xff", b"q\x00", b"q\xff", b"j\xff\xff\xff\x7f", b"\x94", b"Q",
    b"\x88", b"\x89", b"K\xff", b"J\xff\xff\xff\xff", b"J\xff\xff\xff\x7f", b"\x8a\x08" + b"\xff" * 8,
    b"\x8a\x01\x80", b"\x8b\xff\xff\xff\x7f", b"\x8b\x00\x10\x00\x00" + b"\x01" * 4096, b"X\xff\xff\xff\x7f",
    b"X\x03\x00\x00\x00\xff\xfe\xfd", b"\x8c\x05storag", b"C\xffabc", b"B\xff\xff\xff\x7fabc", b"\x95\xff\xff\xff\xff\xff\xff\xff\x7f",
    b"\x80\x05", b"\x80\x09", b"\x82\x01", b"\x97", b"\x8f", b"\x91", b".", b"G\x7f\xf8\x00\x00\x00\x00\x00\x00",
    b"ctorch\nFloatStorage\n", b"ctorch\nUntypedStorage\n", b"ctorch\nBFloat16Storage\n", b"ctorch\nComplexFloatStorage\n",
    b"ctorch._utils\n_rebuild_tensor_v2\n", b"ctorch._utils\n_rebuild_tensor_v3\n", b"ctorch._utils\n_rebuild_parameter\n",
    b"ctorch._tensor\n_rebuild_from_type_v2\n", b"ccollections\nOrderedDict\n", b"cbuiltins\nset\n", b"cbuiltins\nbytes\n",
    b"cbuiltins\nobject\n", b"c_codecs\nencode\n", b"ccopyreg\n_reconstructor\n", b"cnumpy\ndtype\n", b"cnumpy\nndarray\n",
    b"cnumpy.core.multiarray\n_reconstruct\n", b"cnumpy.core.multiarray\nscalar\n", b"cnumpy.core.numeric\n_frombuffer\n",
    b"ctorch.nn.modules.container\nParameterDict\n", b"ctorch.nn.parameter\nParameter\n", b"ctorch\nSize\n", b"ctorch\nfloat32\n",
    b"cos\nsystem\n", b"cbuiltins\neval\n", b"\x8c\x02os\x8c\x06system\x93",
    b"(\x8c\x07storage\x8c\x01x\x8c\x01y\x8c\x03cpuK\x01tQ", b"(tQ", b"\x8c\x01xQ",
]  # fmt: skip
HOSTILE_STRINGS = ["", "storage", "cpu", "cuda:0", "0", "x" * 5000, "\ud800", "a\nb", "../data.pkl", "module", "torch", "neg", "conj", "C", "F"]


def pickle_of(data: bytes) -> tuple[bytes, Callable[[bytes], bytes]] | None:
    """The main pickle inside a torch file and a function that puts an edited one back.

    Zip: ``data.pkl`` (the archive is rebuilt with valid CRCs, so the edit reaches the unpickler);
    legacy: the whole file (the edit lands in one of its five pickles).
    """
    if data[:2] == b"PK":
        records = zip_records(data)
        if not records:
            return None
        index = next((i for i, (name, _) in enumerate(records) if name.endswith("data.pkl")), None)
        if index is None:
            return None

        def put_back(pkl: bytes) -> bytes:
            edited = list(records)
            edited[index] = (records[index][0], pkl)
            return rezip(edited)

        return records[index][1], put_back
    if data[:1] == b"\x80":
        return data, lambda pkl: pkl
    return None


def _opcodes(pkl: bytes) -> list[tuple[pickletools.OpcodeInfo, Any, int, int]]:
    """(opcode, arg, start, end) of every pickle in ``pkl`` (a legacy file holds five)."""
    out: list[tuple[pickletools.OpcodeInfo, Any, int, int]] = []
    stream = io.BytesIO(pkl)
    while stream.tell() < len(pkl) and len(out) < 20_000:
        start_of_pickle = stream.tell()
        try:
            previous: tuple[pickletools.OpcodeInfo, Any, int] | None = None
            for op, arg, pos in pickletools.genops(stream):
                assert pos is not None  # a stream always has positions
                if previous is not None:
                    out.append((previous[0], previous[1], previous[2], pos))
                previous = (op, arg, pos)
                if len(out) >= 20_000:
                    break
            if previous is not None:
                out.append((previous[0], previous[1], previous[2], stream.tell()))
        except Exception:
            break
        if stream.tell() == start_of_pickle or pkl[stream.tell() - 1 : stream.tell()] != b".":
            break
        # The legacy container: raw storage bytes follow the fifth pickle.
        if stream.tell() < len(pkl) and pkl[stream.tell() : stream.tell() + 1] not in (b"\x80", b"(", b"]", b"}", b"K", b"J", b"\x8a"):
            break
    return out


def _encode_int_op(op: pickletools.OpcodeInfo, value: int) -> bytes:
    if op.name in ("BINPUT", "BINGET"):
        return op.code.encode("latin-1") + bytes([value & 0xFF])
    if op.name in ("LONG_BINPUT", "LONG_BINGET"):
        return op.code.encode("latin-1") + struct.pack("<I", value & 0xFFFFFFFF)
    if op.name == "BININT1":
        return b"K" + bytes([value & 0xFF])
    if op.name == "BININT2":
        return b"M" + struct.pack("<H", value & 0xFFFF)
    if -(2**31) <= value < 2**31:
        return b"J" + struct.pack("<i", value)
    return pickle.dumps(value, protocol=2)[2:-1]  # LONG1 / LONG4


def m_pickle(c: Chooser, data: bytes, corpus: Sequence[bytes]) -> bytes:
    """Edit the pickle: an opcode's argument (ints, memo indices, string lengths, globals),
    insert a hostile opcode, delete or repeat one."""
    found = pickle_of(data)
    if found is None:
        return m_flip(c, data, corpus)
    pkl, put_back = found
    ops = _opcodes(pkl)
    if not ops:
        return put_back(m_flip(c, pkl, corpus))
    op, arg, start, end = c.choice(ops)
    action = c.integer(0, 4)
    lengthy = op.name in ("BINUNICODE", "BINBYTES", "SHORT_BINUNICODE", "SHORT_BINBYTES")
    if action == 0 and isinstance(arg, int) and not isinstance(arg, bool):
        replacement = _encode_int_op(op, _interesting(c, arg, 32, len(pkl)) if c.integer(0, 1) else c.choice(HOSTILE_INTS))
    elif action == 0 and lengthy and c.integer(0, 1):  # a declared length that lies
        width = 1 if op.name.startswith("SHORT") else 4
        body = pkl[start + 1 + width : end]
        declared = _interesting(c, len(body), 8 * width, len(pkl))
        replacement = pkl[start : start + 1] + declared.to_bytes(width, "little") + body
    elif action == 0 and isinstance(arg, str):
        replacement = _op_str(c.choice(HOSTILE_STRINGS))
    elif action == 0 and op.name == "GLOBAL":
        replacement = c.choice([o for o in HOSTILE_OPS if o.startswith(b"c")])
    elif action == 1:
        return put_back(pkl[:end] + c.choice(HOSTILE_OPS) + pkl[end:])
    elif action == 2:
        replacement = b""
    elif action == 3:
        replacement = pkl[start:end] * c.integer(2, 64)
    else:
        replacement = c.choice(HOSTILE_OPS)
    return put_back(pkl[:start] + replacement + pkl[end:])


# --- PNG ----------------------------------------------------------------------------------------


def m_png(c: Chooser, data: bytes, corpus: Sequence[bytes]) -> bytes:
    """Edit a PNG chunk: the embedding JSON (re-encoded as tEXt/zTXt/iTXt), IHDR fields, chunk
    lengths and CRCs, chunk order; add text bombs."""
    chunks = png_chunks(data)
    if not chunks:
        return m_flip(c, data, corpus)
    action = c.integer(0, 6)
    text = png_text_payload(data)
    if action <= 1 and text is not None:
        try:
            doc = json.loads(base64.b64decode(text))
        except (ValueError, RecursionError):
            doc = {}
        raw = dump_json(mutate_json(doc, c))
        encoded = base64.b64encode(raw) if c.integer(0, 5) else raw
        return png_retext(data, encoded, c.choice(["tEXt", "zTXt", "iTXt", "iTXt-z"]))
    if action == 2:  # IHDR
        index = next((i for i, (k, _) in enumerate(chunks) if k == b"IHDR"), None)
        if index is None or len(chunks[index][1]) < 13:
            return data
        ihdr = bytearray(chunks[index][1])
        where = c.choice([0, 4, 8, 9, 10, 11, 12])
        if where in (0, 4):
            ihdr[where : where + 4] = struct.pack(">I", c.choice([0, 1, 2, 3, 65535, 65536, 20_000, 2**31 - 1, 2**32 - 1]))
        else:
            ihdr[where] = c.choice([0, 1, 2, 3, 4, 6, 7, 8, 16, 255])
        chunks[index] = (b"IHDR", bytes(ihdr))
        return png_from_chunks(chunks)
    if action == 3:  # drop, duplicate or move a chunk
        i = c.integer(0, len(chunks) - 1)
        how = c.integer(0, 2)
        if how == 0:
            del chunks[i]
        elif how == 1:
            chunks.insert(i, chunks[i])
        else:
            chunks.insert(c.integer(0, len(chunks)), chunks.pop(i))
        return png_from_chunks(chunks)
    if action == 4:  # a chunk length field that lies (CRC left as it was)
        spots = [8]
        pos = 8
        for _kind, body in chunks:
            spots.append(pos)
            pos += 12 + len(body)
        at = c.choice(spots)
        if at + 4 > len(data):
            return data
        (old,) = struct.unpack(">I", data[at : at + 4])
        return data[:at] + struct.pack(">I", _interesting(c, old, 32, len(data))) + data[at + 4 :]
    if action == 5:  # extra chunks: text bombs, odd text, palettes, ...
        extra = c.choice([
            text_chunk(zlib.compress(b"A" * (8 * 2**20)), "tEXt"),
            (b"zTXt", TEXT_KEY + b"\0\0" + zlib.compress(b"A" * (8 * 2**20))),
            (b"iTXt", TEXT_KEY + b"\0\1\0\0\0" + zlib.compress(b"QUFB" * (2 * 2**20))),
            (b"zTXt", TEXT_KEY + b"\0\0" + b"not zlib"),
            (b"tEXt", TEXT_KEY + b"\0" + b"\xff\xfe" * 10),
            (b"tEXt", TEXT_KEY),
            (b"iTXt", TEXT_KEY + b"\0\0\0\xff\xfe\0\0abc"),
            (b"PLTE", b"\0" * 9),
            (b"iCCP", b"x\0\0" + zlib.compress(b"\0" * 100_000)),
            (b"eXIf", b"MM\0*" + b"\0" * 100),
            (b"acTL", struct.pack(">II", 2**31 - 1, 0)),
            (b"IDAT", zlib.compress(b"\0" * 100_000)),
        ])  # fmt: skip
        chunks.insert(c.integer(1, len(chunks)), extra)
        return png_from_chunks(chunks)
    # a CRC left wrong
    pos, spots = 8, []
    for _kind, body in chunks:
        spots.append(pos + 8 + len(body))
        pos += 12 + len(body)
    at = c.choice(spots)
    return data[:at] + struct.pack(">I", c.integer(0, 2**32 - 1)) + data[at + 4 :]


GENERIC_MUTATORS: list[Callable[[Chooser, bytes, Sequence[bytes]], bytes]] = [
    m_flip, m_set_bytes, m_truncate, m_splice, m_insert, m_delete, m_duplicate, m_int_field,
]  # fmt: skip


def structure_mutators(data: bytes) -> list[Callable[[Chooser, bytes, Sequence[bytes]], bytes]]:
    """The structure-aware mutators that fit the container of ``data``."""
    if data[:2] == b"PK":
        return [m_zip_field, m_pickle, m_pickle]
    if data.startswith(PNG_MAGIC):
        return [m_png, m_png]
    if _st_split(data) is not None:
        return [m_safetensors_json, m_safetensors_json, m_safetensors_length]
    if data[:1] == b"\x80":
        return [m_pickle, m_pickle]
    return []


def mutate(c: Chooser, data: bytes, corpus: Sequence[bytes], *, rounds: int | None = None) -> bytes:
    """Apply 1-3 mutations, structure-aware ones more often than generic ones."""
    for _ in range(rounds if rounds is not None else c.integer(1, 3)):
        aware = structure_mutators(data)
        pool = GENERIC_MUTATORS + aware * 2 if aware else GENERIC_MUTATORS
        data = c.choice(pool)(c, data, corpus)
    return data


TEXT_FILE_VALUES = [
    b"", b"<tok>", b" <tok> \n", b"\xef\xbb\xbf<bom>", b"\xff\xfe\xfd", b"a\nb\nc", b"\0", b"x" * 100_000,
    b"\x1b[31mred", b"\xed\xa0\x80", b"style", b"negative", b"OBJECT", "\u202e".encode(),
]  # fmt: skip


def mutate_folder(c: Chooser, seed: Seed, corpus: Sequence[bytes]) -> tuple[tuple[str, bytes], ...]:
    """Mutate one file of a folder seed (the embedding, or its token/type text files), or add
    or remove one."""
    files = dict(seed.files)
    action = c.integer(0, 4)
    if action == 0:
        files[c.choice(["token_identifier.txt", "type_of_concept.txt"])] = c.choice(TEXT_FILE_VALUES)
    elif action == 1 and len(files) > 1:
        del files[c.choice(sorted(files))]
    elif action == 2:
        files[c.choice(["learned_embeds.safetensors", "learned_embeds_2.safetensors", "learned_embeds.bin", "embeddings.pt"])] = c.choice(corpus)
    else:
        name = c.choice(sorted(n for n in files if not n.endswith(".txt")) or sorted(files))
        files[name] = mutate(c, files[name], corpus)
    return tuple(files.items())


# =============================================================================================
# The properties
# =============================================================================================


class PropertyViolation(AssertionError):
    """A reader broke the contract; ``kind`` names how (for the campaign's crasher names)."""

    def __init__(self, kind: str, detail: str) -> None:
        self.kind = kind
        self.detail = detail
        super().__init__(f"{kind}: {detail}")


def check_error_message(exc: ConceptlibError, path: str) -> None:
    """A refusal names the file, on one line, in fewer than MESSAGE_LIMIT characters."""
    text = str(exc)
    if path not in text:
        raise PropertyViolation("message-without-path", f"{type(exc).__name__} does not name {path!r}: {text[:300]!r}")
    if "\n" in text or "\r" in text:
        raise PropertyViolation("multi-line-message", f"{type(exc).__name__}: {text[:300]!r}")
    if len(text) >= MESSAGE_LIMIT:
        raise PropertyViolation("long-message", f"{type(exc).__name__} message is {len(text)} characters: {text[:200]!r}...")


@dataclass
class Outcome:
    """What one read did."""

    embedding: Embedding | None
    error: ConceptlibError | None
    seconds: float
    peak_bytes: int | None


@contextlib.contextmanager
def _traced(memory: bool) -> Iterator[list[int]]:
    peak: list[int] = []
    if not memory:
        yield peak
        return
    was = tracemalloc.is_tracing()
    if not was:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        yield peak
    finally:
        peak.append(tracemalloc.get_traced_memory()[1] - base)
        if not was:
            tracemalloc.stop()


def _checked(call: Callable[[], Embedding], path: str, *, memory: bool, time_limit: float) -> Outcome:
    started = time.perf_counter()
    emb: Embedding | None = None
    error: ConceptlibError | None = None
    with _traced(memory) as peak:
        try:
            emb = call()
        except ConceptlibError as exc:
            error = exc
        except RecursionError as exc:
            raise PropertyViolation("RecursionError", str(exc)[:300]) from exc
        except MemoryError as exc:
            raise PropertyViolation("MemoryError", str(exc)[:300]) from exc
        except Exception as exc:
            raise PropertyViolation(type(exc).__name__, str(exc)[:300]) from exc
    seconds = time.perf_counter() - started
    if error is not None:
        check_error_message(error, path)
    if emb is not None and not isinstance(emb, Embedding):
        raise PropertyViolation("not-an-embedding", repr(type(emb)))
    if seconds > time_limit:
        raise PropertyViolation("slow", f"took {seconds:.1f} s (limit {time_limit} s)")
    if peak and peak[0] > MEMORY_LIMIT_BYTES:
        raise PropertyViolation("memory", f"allocated {peak[0] / 2**20:.0f} MiB (limit {MEMORY_LIMIT_BYTES >> 20} MiB)")
    return Outcome(emb, error, seconds, peak[0] if peak else None)


def check_read_bytes(data: bytes, path: str, *, memory: bool = True, time_limit: float = TIME_LIMIT_S) -> Outcome:
    """``read_bytes`` returns an Embedding or raises a ConceptlibError naming ``path`` in one
    bounded line; never another exception, never slower than ``time_limit``, never more than
    MEMORY_LIMIT_BYTES of Python/numpy allocations (tracemalloc sees numpy's buffers too)."""
    from conceptlib.formats import read_bytes

    return _checked(lambda: read_bytes(data, path), path, memory=memory, time_limit=time_limit)


def check_read_path(path: Path, *, memory: bool = True, time_limit: float = TIME_LIMIT_S) -> Outcome:
    """The same property for ``formats.read`` on a file or folder; the message may name the
    file inside the folder, so either path counts."""
    from conceptlib.formats import read

    try:
        return _checked(lambda: read(path), str(path), memory=memory, time_limit=time_limit)
    except PropertyViolation as exc:
        # One file of a diffusers SDXL pair is read with its partner; an error in the partner
        # may name the partner alone (it is the damaged file), which is fine.
        partner = _sdxl_partner_name(path)
        if exc.kind == "message-without-path" and partner is not None and f"{path.parent / partner}:" in exc.detail:
            return Outcome(None, None, 0.0, None)
        raise


def _sdxl_partner_name(path: Path) -> str | None:
    if path.suffix != ".safetensors":
        return None
    stem = path.stem
    return f"{stem[:-2]}.safetensors" if stem.endswith("_2") else f"{stem}_2.safetensors"


@dataclass
class CliRun:
    argv: list[str]
    code: int
    stdout: str
    stderr: str
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def run_cli(argv: list[str]) -> CliRun:
    """Run the real console entry point (``conceptlib.cli.main``) in-process, capturing output.

    stdout and stderr are UTF-8 text streams over bytes with ``errors="strict"``, as a pipe or
    a terminal is, so text that cannot be encoded (a lone surrogate) fails here as it would
    for a user instead of slipping through a StringIO.
    """
    from conceptlib.cli import main

    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict", write_through=True)
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict", write_through=True)
    started = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:  # pragma: no cover - main() returns codes
            code = int(exc.code or 0)
    seconds = time.perf_counter() - started

    def text(stream: io.TextIOWrapper) -> str:
        stream.flush()
        raw = stream.buffer.getvalue()  # type: ignore[attr-defined]
        return bytes(raw).decode("utf-8", "replace")

    return CliRun(list(argv), int(code), text(out), text(err), seconds)


def _reject_constant(name: str) -> object:
    raise ValueError(f"non-standard JSON constant {name}")


#: What the CLI's catch-all prints for an exception no handler expected ("Error: unexpected
#: ValueError: ..."); a reader's own message may say "unexpected persistent id", which is fine.
_CATCH_ALL = re.compile(r"\bunexpected [A-Za-z_][\w.]*:")


def check_cli(run: CliRun, *, allowed: tuple[int, ...] = (0, 2), json_out: str | bool = False, time_limit: float = TIME_LIMIT_S) -> None:
    """Exit 0 or 2 (validate: 1 too), no traceback, never the catch-all's "unexpected <Type>:",
    no stderr line longer than 4,000 characters; with ``json_out`` stdout is strict JSON (no
    NaN/Infinity): ``"always"`` (or True) even on errors, ``"if-any"`` whenever stdout is not empty."""
    both = run.stdout + run.stderr
    if "Traceback (most recent call last)" in both:
        raise PropertyViolation("cli-traceback", f"{run.argv}: {both[-600:]}")
    if _CATCH_ALL.search(run.stderr):
        raise PropertyViolation("cli-unexpected", f"{run.argv} exit {run.code}: {run.stderr.strip()[:600]}")
    if run.code not in allowed:
        raise PropertyViolation("cli-exit-code", f"{run.argv} exit {run.code}: {run.stderr.strip()[:600]}")
    if json_out and (json_out != "if-any" or run.stdout.strip()):
        try:
            json.loads(run.stdout, parse_constant=_reject_constant)
        except ValueError as exc:
            raise PropertyViolation("cli-bad-json", f"{run.argv} exit {run.code}: {exc}: stdout {run.stdout[:300]!r}, stderr {run.stderr[:300]!r}") from None
    for line in run.stderr.splitlines():
        if len(line) > 4 * MESSAGE_LIMIT:
            raise PropertyViolation("cli-long-line", f"{run.argv}: a {len(line)}-character line on stderr: {line[:200]!r}")
    if run.seconds > time_limit:
        raise PropertyViolation("cli-slow", f"{run.argv} took {run.seconds:.1f} s")


# =============================================================================================
# Bombs: small files that ask for gigabytes or hours
# =============================================================================================


def _tensor_record(numel: int, size: tuple[int, ...], stride: tuple[int, ...], *, key: str = "t", storage: str = "FloatStorage", legacy: bool = False, metadata: bytes = b"", rebuild: str = "_rebuild_tensor_v2") -> bytes:
    """``{key: tensor}`` as a protocol-2 pickle with arbitrary (lying) storage and view;
    ``metadata`` is the opcodes of an optional seventh argument of ``_rebuild_tensor_v2``."""
    pid = b"(" + _op_str("storage") + b"ctorch\n" + storage.encode() + b"\n" + _op_str("0") + _op_str("cpu")
    pid += _op_int(numel) + (b"N" if legacy else b"") + b"tQ"
    args = pid + _op_int(0) + pickle_ops(size, [], legacy=legacy) + pickle_ops(stride, [], legacy=legacy)
    args += b"\x89ccollections\nOrderedDict\n)R" + metadata
    return b"\x80\x02}" + _op_str(key) + b"ctorch._utils\n" + rebuild.encode() + b"\n(" + args + b"tRs."


def deflate_bomb_pt(gib: float = 1.0) -> bytes:
    """A torch zip whose storage record is a deflate bomb: ~1 MB that inflates to ``gib`` GiB of
    zeros, honestly declared in the zip; the pickle views one [1, 768] row of it."""
    size = int(gib * 2**30)
    numel = size // 4
    pkl = _tensor_record(numel, (1, 768), (768, 1))
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = bytes(1 << 20)
    stream = b"".join(compressor.compress(block) for _ in range(size >> 20)) + compressor.flush()
    # Build the zip by hand: zipfile would need the 1 GiB in memory to write it.
    records = [("archive/data.pkl", pkl, 0, pkl, len(pkl)), ("archive/data/0", stream, 8, None, size), ("archive/version", b"3\n", 0, b"3\n", 2)]
    return _raw_zip(records, crcs={"archive/data/0": _zero_crc(size)})


def _zero_crc(size: int) -> int:
    crc, block = 0, bytes(1 << 20)
    for _ in range(size >> 20):
        crc = zlib.crc32(block, crc)
    return crc & 0xFFFFFFFF


def _raw_zip(records: Sequence[tuple[str, bytes, int, bytes | None, int]], crcs: dict[str, int] | None = None) -> bytes:
    """A zip from (name, stored bytes, method, uncompressed bytes or None, uncompressed size)."""
    out = bytearray()
    central = bytearray()
    for name, stored, method, plain, usize in records:
        crc = (crcs or {}).get(name, zlib.crc32(plain or b"") & 0xFFFFFFFF)
        offset = len(out)
        raw_name = name.encode()
        out += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, len(stored), usize, len(raw_name), 0)
        out += raw_name + stored
        central += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, method, 0, 0x21, crc, len(stored), usize, len(raw_name), 0, 0, 0, 0, 0, offset)
        central += raw_name
    cd_offset = len(out)
    out += central
    out += struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(records), len(records), len(central), cd_offset, 0)
    return bytes(out)


def pickle_deflate_bomb_pt(mib: int = 60, op: bytes = b"2") -> bytes:
    """``data.pkl`` deflated: ~60 KB inflating to ``mib`` MiB of one repeated opcode (under the
    reader's 64 MiB pickle cap). ``op=b"2"`` (DUP) pushes a reference per byte: memory;
    ``op=b"N0"`` (NONE, POP) keeps the stack flat: pure opcode-walking time."""
    body = b"\x80\x02](N" + op * (mib * 2**20 // len(op)) + b"e." if op == b"2" else b"\x80\x02" + op * (mib * 2**20 // len(op)) + b"N."
    return zip_pickle(body, deflate=["data.pkl"])


def memo_dup_bomb_pt() -> bytes:
    """The DUP expansion: 60 MiB of DUP opcodes after one value, collected into a list."""
    return pickle_deflate_bomb_pt(60, b"2")


def opcode_flood_pt() -> bytes:
    """60 MiB of NONE/POP pairs: the pre-scan and the unpickler walk 63 M opcodes."""
    return pickle_deflate_bomb_pt(60, b"N0")


def huge_storage_pt(*, legacy: bool = False) -> bytes:
    """A pickle declaring a 10**12-element float storage in a 1 KB file."""
    numel = 10**12
    pkl = _tensor_record(numel, (numel,), (1,), legacy=legacy)
    if not legacy:
        return zip_pickle(pkl, {"0": b"\0" * 16})
    head = pickle.dumps(tp.LEGACY_MAGIC, protocol=2) + pickle.dumps(tp.LEGACY_PROTOCOL, protocol=2)
    head += pickle.dumps({"protocol_version": 1001}, protocol=2)
    return head + pkl + pickle.dumps(["0"], protocol=2) + struct.pack("<q", numel) + b"\0" * 16


def stride0_pt(vectors: int = 80_000, width: int = 768) -> bytes:
    """One stored [width] row broadcast (stride 0) to ``vectors`` rows: 3 KB that materialise
    as vectors * width * 4 bytes (80,000 → 245 MB, just under the reader's 256 MiB allowance)."""
    return zip_pickle(_tensor_record(width, (vectors, width), (0, 1)), {"0": bytes(4 * width)})


def stride0_millions_pt() -> bytes:
    """The same broadcast to 4 million vectors (12 GB if materialised)."""
    return stride0_pt(4_000_000)


def _dag_tuple(depth: int) -> bytes:
    """Opcodes pushing t_depth where t_0 = () and t_k = (t_{k-1}, t_{k-1}) through the memo:
    2*depth opcodes, 2**depth leaves if anything walks it without memoisation (hash, repr, str)."""
    out = b")"
    for i in range(depth):
        out += b"r" + struct.pack("<I", i) + b"j" + struct.pack("<I", i) + b"\x86"
    return out


def hash_bomb_pt(depth: int = 60) -> bytes:
    """A dict whose key is a shared-reference tuple DAG: hashing it visits 2**60 tuples.
    Python never caches tuple hashes, so the unpickler's SETITEM never returns."""
    pkl = b"\x80\x02}" + _dag_tuple(depth) + b"K\x01s."
    return zip_pickle(pkl)


def repr_bomb_pt(depth: int = 60) -> bytes:
    """A tensor whose ``metadata`` argument is {'neg': DAG}: an error message built with
    ``{metadata!r}`` would be 2**60 characters long."""
    meta = b"}" + _op_str("neg") + _dag_tuple(depth) + b"s"
    return zip_pickle(_tensor_record(768, (1, 768), (768, 1), metadata=meta), {"0": bytes(4 * 768)})


def deep_pickle_pt(depth: int = 100_000) -> bytes:
    """Tuples nested ``depth`` deep (TUPLE1 of TUPLE1 of ...), then a dict around them."""
    return zip_pickle(b"\x80\x02}" + _op_str("k") + b")" + b"\x85" * depth + b"s.")


def ztxt_bomb_png() -> bytes:
    """A zTXt sd-ti-embedding chunk: 200 KB that inflates to 200 MiB."""
    return tiny_png(extra=[(b"zTXt", TEXT_KEY + b"\0\0" + zlib.compress(b"A" * (200 * 2**20), 9))])


def itxt_bomb_png() -> bytes:
    """The same bomb in a compressed iTXt chunk."""
    return tiny_png(extra=[(b"iTXt", TEXT_KEY + b"\0\1\0\0\0" + zlib.compress(b"A" * (200 * 2**20), 9))])


def _idat_of(width: int, height: int, row: bytes) -> bytes:
    compressor = zlib.compressobj(9)
    return b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()


def huge_image_png(side: int = 13_000) -> bytes:
    """A real 13000 x 13000 1-bit image (169 M pixels, under Pillow's 179 M bomb limit): a 40 KB
    file whose pixels decode to 169 MB, 507 MB once converted to RGB."""
    row = b"\0" + b"\xff" * ((side + 7) // 8)
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return png_from_chunks([(b"IHDR", ihdr), (b"IDAT", _idat_of(side, side, row)), (b"IEND", b"")])


def huge_rgb_png(side: int = 7_000) -> bytes:
    """An 8-bit RGB 7000 x 7000 image (49 M pixels, no Pillow warning): 160 KB → 147 MB decoded."""
    row = b"\0" + b"\x01" * (3 * side)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return png_from_chunks([(b"IHDR", ihdr), (b"IDAT", _idat_of(side, side, row)), (b"IEND", b"")])


def declared_size_png() -> bytes:
    """An IHDR declaring 100000 x 100000 pixels with almost no image data."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return png_from_chunks([(b"IHDR", ihdr), (b"IDAT", zlib.compress(b"\0" * 1024)), (b"IEND", b"")])


def pixel_json_bomb_png() -> bytes:
    """Container B whose zlib stream inflates to 128 MiB, past the reader's 64 MiB JSON cap."""
    compressor = zlib.compressobj(9)
    stream = b"".join(compressor.compress(b" " * (1 << 20)) for _ in range(128)) + compressor.flush()
    return pixel_png_from_stream(stream)


def safetensors_huge_header() -> bytes:
    """A header length of 2**63 - 1 in a 100-byte file."""
    return struct.pack("<Q", 2**63 - 1) + b'{"a":{"dtype":"F32","shape":[1,768],"data_offsets":[0,3072]}}' + b"\0" * 32


def safetensors_huge_offsets() -> bytes:
    """A tensor declaring shape [10**12, 768] at offsets up to 3 * 10**15."""
    header = json.dumps({"t": {"dtype": "F32", "shape": [10**12, 768], "data_offsets": [0, 3072 * 10**12]}}).encode()
    return safetensors_with_header(header, b"\0" * 3072)


def safetensors_many_tensors(count: int = 200_000) -> bytes:
    """200,000 one-element tensors: an 12 MB header of small objects."""
    header = {f"t{i}": {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]} for i in range(count)}
    return safetensors_with_header(json.dumps(header).encode(), bytes(4 * count))


def deep_json_safetensors(depth: int = 100_000) -> bytes:
    """A safetensors header nested ``depth`` arrays deep."""
    return safetensors_with_header(b'{"t":' + b"[" * depth + b"]" * depth + b"}", b"")


def bigint_json_safetensors() -> bytes:
    """A 5000-digit integer in the safetensors header (Python refuses > 4300-digit int parses)."""
    return safetensors_with_header(b'{"t":{"dtype":"F32","shape":[' + BIG_DIGITS.encode() + b',768],"data_offsets":[0,3072]}}', b"\0" * 3072)


def deep_json_png(depth: int = 100_000) -> bytes:
    """The tEXt payload nested ``depth`` arrays deep."""
    return tiny_png(extra=[text_chunk(base64.b64encode(b"[" * depth + b"]" * depth), "tEXt")])


@dataclass(frozen=True)
class Bomb:
    """A hostile file: how to build it, its suffix and what it attacks."""

    name: str
    build: Callable[[], bytes]
    suffix: str
    attacks: str


BOMBS: dict[str, Bomb] = {
    b.name: b
    for b in [
        Bomb("deflate-storage-pt", deflate_bomb_pt, ".pt", "a 1 MB deflated storage record inflating to 1 GiB"),
        Bomb("deflate-pickle-dup-pt", memo_dup_bomb_pt, ".pt", "60 KB data.pkl: 60 MiB of DUP opcodes (63 M references)"),
        Bomb("deflate-pickle-flood-pt", opcode_flood_pt, ".pt", "60 KB data.pkl: 60 MiB of NONE/POP opcodes (CPU)"),
        Bomb("huge-storage-zip-pt", huge_storage_pt, ".pt", "a storage declaring 10**12 elements (zip)"),
        Bomb("huge-storage-legacy-pt", functools.partial(huge_storage_pt, legacy=True), ".pt", "a storage declaring 10**12 elements (legacy)"),
        Bomb("stride0-80k-pt", stride0_pt, ".pt", "one row broadcast to 80,000 vectors (245 MB)"),
        Bomb("stride0-4m-pt", stride0_millions_pt, ".pt", "one row broadcast to 4 M vectors (12 GB)"),
        Bomb("hash-dag-key-pt", hash_bomb_pt, ".pt", "a dict key that is a 2**60-leaf tuple DAG (hash)"),
        Bomb("repr-dag-metadata-pt", repr_bomb_pt, ".pt", "a 2**60-leaf tuple DAG in tensor metadata (repr in a message)"),
        Bomb("deep-pickle-pt", deep_pickle_pt, ".pt", "tuples nested 100,000 deep"),
        Bomb("ztxt-png", ztxt_bomb_png, ".png", "a zTXt chunk inflating to 200 MiB"),
        Bomb("itxt-png", itxt_bomb_png, ".png", "a compressed iTXt chunk inflating to 200 MiB"),
        Bomb("huge-image-1bit-png", huge_image_png, ".png", "13000x13000 1-bit pixels (169 M pixels decoded)"),
        Bomb("huge-image-rgb-png", huge_rgb_png, ".png", "7000x7000 RGB pixels (147 MB decoded)"),
        Bomb("declared-size-png", declared_size_png, ".png", "an IHDR declaring 10**10 pixels"),
        Bomb("pixel-json-png", pixel_json_bomb_png, ".png", "container B inflating to 128 MiB"),
        Bomb("deep-json-png", deep_json_png, ".png", "tEXt JSON nested 100,000 deep"),
        Bomb("safetensors-header-length", safetensors_huge_header, ".safetensors", "a header length of 2**63"),
        Bomb("safetensors-huge-offsets", safetensors_huge_offsets, ".safetensors", "shape [10**12, 768] and offsets to 3e15"),
        Bomb("safetensors-deep-json", deep_json_safetensors, ".safetensors", "a header nested 100,000 deep"),
        Bomb("safetensors-bigint", bigint_json_safetensors, ".safetensors", "a 5000-digit integer in the header"),
    ]
}


# =============================================================================================
# Reading in a fresh interpreter under limits
# =============================================================================================

_ISOLATED = textwrap.dedent(
    r'''
    import contextlib, io, json, os, resource, sys, time, traceback

    path, limit_mb, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    # Import and exercise everything a read can touch, so the baseline includes it.
    import numpy, PIL.Image, PIL.PngImagePlugin, PIL.WebPImagePlugin, zipfile, pickletools
    from conceptlib.errors import ConceptlibError
    from conceptlib.formats import read_bytes, _torchpickle, _png, _safetensors, _interpret
    from conceptlib.cli import main
    import conceptlib.cli.app, conceptlib.cli.formats, conceptlib.hashing

    def status_bytes(field):
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        main(["formats"])
    warm = io.BytesIO()
    PIL.Image.new("RGB", (2, 2)).save(warm, format="PNG")
    try:
        read_bytes(warm.getvalue(), "warm.png")
    except ConceptlibError:
        pass
    data = open(path, "rb").read()  # the input itself is part of the baseline
    baseline = status_bytes("VmSize")
    baseline_rss = status_bytes("VmRSS")
    try:  # reset VmHWM to the current RSS, so the peak is the read's own
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass
    if limit_mb > 0:
        resource.setrlimit(resource.RLIMIT_AS, (baseline + limit_mb * 2**20, resource.RLIM_INFINITY))
    result = {"baseline_vm": baseline, "baseline_rss": baseline_rss, "size": len(data)}

    def outcome(fn):
        started = time.perf_counter()
        try:
            value = fn()
            kind, detail = "ok", value
        except ConceptlibError as exc:
            kind, detail = "conceptlib", {"type": type(exc).__name__, "message": str(exc)[:2000], "bad": isinstance(exc, ValueError)}
        except BaseException as exc:
            frames = traceback.extract_tb(exc.__traceback__)
            where = [f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}:{f.name}" for f in frames[-4:]]
            kind, detail = "crash", {"type": type(exc).__name__, "message": str(exc)[:500], "where": where}
        return {"kind": kind, "detail": detail, "seconds": time.perf_counter() - started}

    if mode == "selftest":  # the limit is real: above it fails, below it works
        result["api"] = outcome(lambda: len(bytearray((limit_mb + 50) * 2**20)))
        result["cli"] = outcome(lambda: len(bytearray((limit_mb - 100) * 2**20)))
    if mode in ("api", "both"):
        def api():
            emb = read_bytes(data, path)
            return {"vectors": emb.num_vectors, "format": emb.source_format}
        result["api"] = outcome(api)
    if mode in ("cli", "both"):
        def cli():
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(["inspect", "--json", path])
            return {"code": code, "stdout": out.getvalue()[-2000:], "stderr": err.getvalue()[-2000:]}
        result["cli"] = outcome(cli)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over an exec from the parent that forked us.
    result["peak_rss"] = status_bytes("VmHWM")
    sys.stdout.write("\n@@RESULT@@" + json.dumps(result, default=str) + "\n")
    '''
)


def _prelude() -> str:
    """``CONCEPTLIB_FUZZ_SOURCE=DIR`` makes the child import conceptlib from DIR (a folder holding
    an installed-layout ``conceptlib`` package, e.g. an older commit's) instead of this checkout:
    the way to compare a bomb's behaviour before and after a fix."""
    source = os.environ.get("CONCEPTLIB_FUZZ_SOURCE")
    if not source:
        return ""
    return (
        "import sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
        f"sys.path.insert(0, {source!r})\n"
    )


@dataclass
class IsolatedResult:
    """What :func:`isolated_read` saw. ``api``/``cli`` are dicts with ``kind`` (ok, conceptlib,
    crash), ``detail`` and ``seconds``; ``timed_out`` when the process had to be killed."""

    timed_out: bool
    returncode: int | None
    wall: float
    api: dict[str, Any] | None = None
    cli: dict[str, Any] | None = None
    baseline_vm: int = 0
    baseline_rss: int = 0
    peak_rss: int = 0
    stderr: str = ""

    def describe(self) -> str:
        if self.timed_out:
            return f"killed after {self.wall:.1f} s (timeout)"
        parts = []
        for label, part in (("read_bytes", self.api), ("inspect --json", self.cli)):
            if part is not None:
                parts.append(f"{label}: {part['kind']} {json.dumps(part['detail'], default=str)[:400]} in {part['seconds']:.2f} s")
        if self.api is None and self.cli is None:
            parts.append(f"process died (rc {self.returncode}): {self.stderr[-500:]}")
        parts.append(f"peak RSS {self.peak_rss / 2**20:.0f} MiB (baseline {self.baseline_rss / 2**20:.0f} MiB)")
        return "; ".join(parts)


def isolated_read(data: bytes, suffix: str, *, limit_mb: int = 300, timeout: float = 30.0, mode: str = "both") -> IsolatedResult:
    """Read ``data`` (as a file named ``*suffix``) in a fresh interpreter whose address space is
    limited to its own baseline (measured after importing everything) plus ``limit_mb``, first
    through ``read_bytes`` then through ``conceptlib inspect --json`` (``mode``: api, cli, both;
    ``selftest`` allocates just above and below the allowance instead)."""
    with tempfile.TemporaryDirectory(prefix="conceptlib-bomb-") as tmp:
        path = Path(tmp) / f"bomb{suffix}"
        path.write_bytes(data)
        env = dict(os.environ, CONCEPTLIB_HOME=str(Path(tmp) / "home"), PYTHONWARNINGS="ignore")
        env.pop("CONCEPTLIB_DEBUG", None)
        started = time.perf_counter()
        try:
            proc = subprocess.run(
                [sys.executable, "-c", _prelude() + _ISOLATED, str(path), str(limit_mb), mode],
                capture_output=True, text=True, timeout=timeout, env=env,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return IsolatedResult(True, None, time.perf_counter() - started)
        wall = time.perf_counter() - started
    marker = proc.stdout.rfind("@@RESULT@@")
    if marker < 0:
        return IsolatedResult(False, proc.returncode, wall, stderr=proc.stderr)
    result = json.loads(proc.stdout[marker + len("@@RESULT@@") :])
    return IsolatedResult(
        False, proc.returncode, wall, result.get("api"), result.get("cli"), result["baseline_vm"],
        result["baseline_rss"], result["peak_rss"], proc.stderr,
    )  # fmt: skip


def refused_within_limits(result: IsolatedResult, *, wall: float) -> list[str]:
    """What is wrong with an isolated read of a bomb (empty when it was refused properly):
    both paths must end in a ConceptlibError (exit 2 from the CLI), no crash, within ``wall``."""
    problems = []
    if result.timed_out:
        return [f"did not finish: {result.describe()}"]
    if result.api is None or result.cli is None:
        return [result.describe()]
    if result.api["kind"] != "conceptlib":
        problems.append(f"read_bytes: {result.api['kind']} {json.dumps(result.api['detail'], default=str)[:400]}")
    elif not result.api["detail"].get("bad"):
        problems.append(f"read_bytes raised {result.api['detail']['type']}, not a BadInputError")
    elif "MemoryError" in result.api["detail"]["message"]:
        # Refused only because the allocator failed: without the limit it takes gigabytes.
        problems.append(f"read_bytes ran out of memory before refusing: {result.api['detail']['message'][:300]}")
    cli = result.cli
    if cli["kind"] != "ok":
        problems.append(f"inspect --json: {cli['kind']} {json.dumps(cli['detail'], default=str)[:400]}")
    elif cli["detail"]["code"] != 2 or "unexpected" in cli["detail"]["stderr"].lower():
        problems.append(f"inspect --json exit {cli['detail']['code']}: {cli['detail']['stderr'].strip()[:400]}")
    for label, part in (("read_bytes", result.api), ("inspect --json", cli)):
        if part["seconds"] > wall:
            problems.append(f"{label} took {part['seconds']:.1f} s (limit {wall} s)")
    return problems


def seed_bytes(seeds: Sequence[Seed]) -> list[bytes]:
    return [s.data for s in seeds if not s.folder]


def describe_bytes(data: bytes, limit: int = 80) -> str:
    """A short printable description of an input (for crasher reports)."""
    head = data[:limit]
    return f"{len(data)} bytes, starting {head!r}"


def finite(x: float) -> bool:
    return math.isfinite(x)


# =============================================================================================
# Running a property many times: hypothesis when installed, a seeded loop otherwise
# =============================================================================================

try:
    import hypothesis as _hypothesis
except ImportError:  # the dev extra may lack it: the same properties run from a seeded RNG
    _hypothesis = None  # type: ignore[assignment]

HAVE_HYPOTHESIS = _hypothesis is not None
#: ``CONCEPTLIB_FUZZ_SCALE=20 pytest tests/test_fuzz.py`` runs 20 times more examples.
FUZZ_SCALE = float(os.environ.get("CONCEPTLIB_FUZZ_SCALE", "1") or 1)


def fuzz_test(examples: int) -> Callable[[Callable[[Chooser], None]], Callable[..., None]]:
    """Turn ``fn(chooser)`` into a test that runs it ``examples`` times (times the scale).

    With hypothesis: deterministic (``derandomize``), no example database, no deadline (the
    property times itself), no shrinking unless ``CONCEPTLIB_FUZZ_SHRINK=1`` (a reader that
    fails on many inputs would spend minutes shrinking; the campaign minimises crashers).
    Without it: a loop over ``random.Random(f"{name}:{i}")``, reproducible from the index.
    """
    count = max(1, int(examples * FUZZ_SCALE))

    def decorate(fn: Callable[[Chooser], None]) -> Callable[..., None]:
        if _hypothesis is not None:
            from hypothesis import HealthCheck, Phase, given, settings
            from hypothesis import strategies as st

            phases = [Phase.explicit, Phase.generate]
            if os.environ.get("CONCEPTLIB_FUZZ_SHRINK"):
                phases.append(Phase.shrink)

            def body(data: Any) -> None:
                fn(HypothesisChooser(data))

            body.__name__ = fn.__name__
            wrapped = settings(
                max_examples=count, derandomize=True, database=None, deadline=None,
                suppress_health_check=list(HealthCheck), phases=phases, print_blob=False,
            )(given(st.data())(body))  # fmt: skip
        else:

            def wrapped() -> None:
                for i in range(count):
                    try:
                        fn(RandomChooser(random.Random(f"{fn.__name__}:{i}")))
                    except AssertionError as exc:
                        raise AssertionError(f"example {i} (random.Random({fn.__name__ + ':' + str(i)!r})): {exc}") from exc

        wrapped.__name__ = fn.__name__
        wrapped.__doc__ = fn.__doc__
        wrapped.__module__ = fn.__module__
        return wrapped

    return decorate
