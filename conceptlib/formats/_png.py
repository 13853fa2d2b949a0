"""AUTOMATIC1111 embeddings inside a PNG, read and written without torch.

A1111 ("save images with embedding in PNG chunks") stores one payload, the A1111 ``.pt`` dict
serialised as JSON with every tensor turned into ``{"TORCHTENSOR": nested list}``, in two
independent containers of the same image (docs/formats.md b.9):

* container A (``"text"``): a tEXt chunk ``sd-ti-embedding`` holding base64 of the JSON;
* container B (``"pixels"``): the zlib-compressed JSON split into nibbles, whitened with an LCG
  and painted as two data blocks left and right of the cover image.

A1111 reads A first and falls back to B. :func:`read_payload` does the same, implementing A1111's
pixel algorithm step by step (its quirks are what decide which files load there).
:func:`encode_png` writes both containers, so the file works with A1111's reader and survives
tools that drop text chunks (but not JPEG conversion, resizing or cropping).

Vectors stay bit-exact: float32 values are written with the shortest repr of their float64
widening, which parses back to the same float32. A tensor of another dtype is written as its
(exact) values with a ``conceptlib_dtype`` key beside ``TORCHTENSOR``, which this reader uses to
cast it back. It sits inside the tensor's object because A1111 (and its forks) turn any object
holding ``TORCHTENSOR`` into a tensor whatever else it holds, while for SDXL payloads A1111 calls
``.detach()`` on every top-level value (``create_embedding_from_data``): the top-level
``conceptlib_dtypes`` dict that older conceptlib versions wrote broke those files there, and is
still read. ComfyUI and InvokeAI do not read embedding PNGs at all.

Reading a file from the wild costs time and memory in proportion to its size, whatever it claims
(every limit ends in a conceptlib error naming the file):

* PNG chunks are walked from the raw bytes first (at most :data:`MAX_PNG_CHUNKS`), checking the
  CRCs of the chunks used. An ``sd-ti-embedding`` text chunk (tEXt, or zTXt/iTXt inflated with a
  byte cap) of at most :data:`MAX_TEXT_BYTES` is read without decoding a single pixel.
* Without one, pixels are decoded only if the image could carry data blocks: not greyscale,
  and at most :data:`MAX_IMAGE_PIXELS` (checked from the IHDR chunk, or from Pillow's header parse
  for other formats, with Pillow's decompression-bomb warning turned into an error); a lossy
  WebP, which cannot keep low bits, is never decoded. Such images raise
  :class:`NoEmbeddingInImageError`, so a folder of thumbnails is skipped cheaply.
* The data blocks may hold at most about :data:`MAX_JSON_BYTES` of compressed stream, which
  inflates with the same cap.
* The JSON is at most :data:`MAX_JSON_BYTES`, within
  :func:`conceptlib.formats._interpret.check_json_budget`, and nested at most
  :data:`MAX_JSON_DEPTH` deep.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import struct
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin, UnidentifiedImageError

from conceptlib._atomic import atomic_write_bytes
from conceptlib.errors import (
    CorruptFileError,
    NoEmbeddingInImageError,
    ResourceLimitError,
    UnknownFormatError,
)
from conceptlib.formats._interpret import JSONBudgetError, check_json_budget, load_json
from conceptlib.tensor import DTYPES, Tensor

__all__ = ["DTYPES_KEY", "TENSOR_DTYPE_KEY", "TEXT_KEY", "encode_png", "read_payload", "write_png"]

#: The tEXt keyword of container A.
TEXT_KEY = "sd-ti-embedding"
#: The key beside ``TORCHTENSOR`` naming a tensor's dtype when it is not float32 (conceptlib's
#: own; every A1111 reader ignores it).
TENSOR_DTYPE_KEY = "conceptlib_dtype"
#: The top-level payload key older conceptlib versions wrote for the same purpose (dotted path
#: -> dtype); still read, never written, as it breaks SDXL files in A1111.
DTYPES_KEY = "conceptlib_dtypes"
#: The JSON key that marks a tensor.
TENSOR_KEY = "TORCHTENSOR"
#: The largest payload JSON read or written. The largest honest one, 75 SDXL vectors, is
#: 3.4 MB (1.4 MB compressed); parsing the worst 8 MiB within the JSON budget builds ~100 MB of
#: Python objects.
MAX_JSON_BYTES = 8 * 1024 * 1024
#: The largest ``sd-ti-embedding`` text read, before base64 decoding: 4/3 of
#: :data:`MAX_JSON_BYTES` plus room for line breaks (the non-validating decoder skips them).
MAX_TEXT_BYTES = 12 * 1024 * 1024
#: The largest image whose pixels are decoded (~140 MB at peak). An embedding image is the
#: training preview (at most 2048 x 2048 in practice) plus the data blocks (about 2/3 of a pixel
#: per compressed byte, ~1 MP for 75 SDXL vectors).
MAX_IMAGE_PIXELS = 12_000_000
#: PNG chunks walked at most. Pillow writes 64 KiB IDAT chunks and libpng 8 KiB ones, so
#: even the largest image decoded has a few thousand; a file of empty chunks would otherwise
#: cost a Python loop turn per 12 bytes.
MAX_PNG_CHUNKS = 65_536
#: JSON nesting allowed in a payload: an A1111 payload nests 5 deep, SDXL 4.
MAX_JSON_DEPTH = 32

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_TEXT_KEY_BYTES = TEXT_KEY.encode("latin-1")
_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
_GREYSCALE = (0, 4)  # PNG colour types without separate R, G and B
# Two data blocks of at least one column, two separator columns and a cover column.
_MIN_WIDTH = 5
_LCG_A = 1664525
_LCG_C = 1013904223
_MASK32 = 0xFFFFFFFF
# States computed at once by the LCG; beyond this the stream is produced chunk by chunk so its
# uint64 working set stays at 8 MiB whatever the block size.
_LCG_CHUNK = 1 << 20
_DEFAULT_COVER_SIZE = 512
_NO_EMBEDDING = (
    "holds no embedding (no sd-ti-embedding text chunk and no data blocks in the pixels)"
)

_U8 = npt.NDArray[np.uint8]


# --- the LCG whitening stream ------------------------------------------------------------------


def _lcg_states(count: int) -> tuple[npt.NDArray[np.uint64], int, int]:
    """States s_1..s_count of A1111's LCG seeded with 0, and the affine map advancing ``count``
    steps when ``count`` is a power of two.

    A1111 draws these one by one in Python; a 75-vector payload needs ~10^6 of them per block, so
    the states are computed by jump-ahead instead: the affine map s -> a*s + c composed with itself
    is again affine, which lets every pass fill twice as many states from the ones already known.
    Products of two 32-bit numbers plus a 32-bit increment fit in uint64, and only the low 32 bits
    matter, so numpy's wrap-around arithmetic is exact.
    """
    states = np.empty(count, dtype=np.uint64)
    if count:
        states[0] = _LCG_C  # s_1 = a*0 + c
    filled = 1
    mul, inc = _LCG_A, _LCG_C  # the map that advances `filled` steps
    while filled < count:
        take = min(filled, count - filled)
        states[filled : filled + take] = (
            states[:take] * np.uint64(mul) + np.uint64(inc)
        ) & np.uint64(_MASK32)
        filled += take
        mul, inc = (mul * mul) & _MASK32, (mul * inc + inc) & _MASK32
    return states, mul, inc


def _lcg_outputs(count: int) -> _U8:
    """The first ``count`` outputs r_k = s_{k+1} mod 255 of A1111's LCG seeded with 0."""
    if count <= _LCG_CHUNK:
        states, _, _ = _lcg_states(count)
        return np.remainder(states, np.uint64(255), out=states).astype(np.uint8)
    # _LCG_CHUNK is a power of two, so (mul, inc) advances exactly one chunk.
    states, mul, inc = _lcg_states(_LCG_CHUNK)
    out = np.empty(count, dtype=np.uint8)
    scratch = np.empty_like(states)
    for start in range(0, count, _LCG_CHUNK):
        if start:
            np.multiply(states, np.uint64(mul), out=states)
            np.add(states, np.uint64(inc), out=states)
            np.bitwise_and(states, np.uint64(_MASK32), out=states)
        take = min(_LCG_CHUNK, count - start)
        np.remainder(states[:take], np.uint64(255), out=scratch[:take])
        out[start : start + take] = scratch[:take]
    return out


def _whiten(block: _U8) -> _U8:
    """XOR the low nibble of every byte with the LCG stream (its own inverse)."""
    stream = _lcg_outputs(block.size).reshape(block.shape) & np.uint8(0x0F)
    return np.bitwise_xor(block, stream)


# --- JSON payload ------------------------------------------------------------------------------


def _escape(key: str) -> str:
    # Dotted paths must stay unambiguous even if a key holds a dot; '~' escapes as in JSON Pointer.
    return key.replace("~", "~0").replace(".", "~1")


def _tensor_values(tensor: Tensor) -> Any:
    # bfloat16/float16 widen exactly to float32; tolist() then yields Python floats whose repr is
    # the shortest string that parses back to the same float64, hence to the same float32.
    if tensor.dtype in ("float16", "bfloat16"):
        return tensor.to_float32().tolist()
    return tensor.array.tolist()


def _to_jsonable(value: Any, where: str) -> Any:
    """Replace tensors by ``{"TORCHTENSOR": ...}``, naming the dtype of non-float32 ones."""
    if isinstance(value, np.ndarray):
        value = Tensor.from_numpy(value)
    if isinstance(value, Tensor):
        obj: dict[str, Any] = {TENSOR_KEY: _tensor_values(value)}
        if value.dtype != "float32":
            obj[TENSOR_DTYPE_KEY] = value.dtype
        return obj
    if isinstance(value, dict):
        return {
            str(key): _to_jsonable(item, f"{where}.{key}" if where else str(key))
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(item, f"{where}.{i}" if where else str(i)) for i, item in enumerate(value)]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(
        f"cannot store a {type(value).__name__} in an embedding PNG (at {where or 'top level'})"
    )


def _payload_json(payload: dict[str, object]) -> bytes:
    """Serialise like A1111's ``json.dumps(data, cls=EmbeddingEncoder)`` (default separators,
    ASCII-only, NaN/Infinity tokens); a stale ``conceptlib_dtypes`` key is dropped."""
    body = {key: value for key, value in payload.items() if key != DTYPES_KEY}
    return json.dumps(_to_jsonable(body, "")).encode("ascii")


class _Raw:
    """A TORCHTENSOR value parsed by numpy the way A1111 does, before its final dtype is known.

    Attributes:
        array: the values as numpy parsed them (float64, int64 or bool).
        dtype: the dtype named beside them by conceptlib, if any.
    """

    __slots__ = ("array", "dtype")

    def __init__(self, array: np.ndarray, dtype: str | None) -> None:
        self.array = array
        self.dtype = dtype


class _PayloadError(ValueError):
    """The JSON parsed but does not follow the TORCHTENSOR rule."""


class _TooLarge(ValueError):
    """Something inside the image unpacks to more than any embedding needs."""


def _object_hook(obj: dict[str, Any]) -> Any:
    # A1111 converts any object that *contains* the key, whatever else it holds.
    if TENSOR_KEY not in obj:
        return obj
    try:
        array = np.array(obj[TENSOR_KEY])
    except ValueError as exc:  # ragged nesting, or more than numpy's 64 dimensions
        raise _PayloadError(f"a {TENSOR_KEY} value is not a rectangular array ({exc})") from None
    if array.dtype.kind not in "biuf":
        raise _PayloadError(f"a {TENSOR_KEY} value holds non-numbers (numpy dtype {array.dtype})")
    hint = obj.get(TENSOR_DTYPE_KEY)
    return _Raw(array, hint if isinstance(hint, str) else None)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f" and b.dtype.kind == "f"))


def _finish_tensor(raw: np.ndarray, dtype: str | None) -> Tensor:
    """Cast a parsed array to float32 (A1111's rule) or, exactly, to the dtype conceptlib recorded.

    A recorded dtype that cannot hold the values exactly is ignored: the file was edited by
    something else, and float32 is what A1111 itself would use.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        f32 = raw.astype(np.float32)
        if dtype is None or dtype == "float32" or dtype not in DTYPES:
            return Tensor(f32, "float32")
        if dtype == "bfloat16":
            bits = f32.view(np.uint32)
            if np.any(bits & np.uint32(0xFFFF)):
                return Tensor(f32, "float32")
            return Tensor((bits >> np.uint32(16)).astype(np.uint16), "bfloat16")
        # Cast from the values as written (float64, int64 or bool), not from the float32 copy,
        # so float64 and large integers survive too.
        cast = raw.astype(np.dtype(DTYPES[dtype][0]))
        back = cast.astype(raw.dtype)
    if not _same(back, raw):
        return Tensor(f32, "float32")
    return Tensor(cast, dtype)


def _finish(value: Any, path: str, legacy: dict[str, str], depth: int = 0) -> Any:
    """Turn every parsed tensor into a :class:`Tensor`: the dtype named beside it wins, then the
    one an old top-level ``conceptlib_dtypes`` gives for its path."""
    if depth > MAX_JSON_DEPTH:
        raise _TooLarge(f"the JSON nests more than {MAX_JSON_DEPTH} levels deep")
    if isinstance(value, _Raw):
        return _finish_tensor(value.array, value.dtype or legacy.get(path))
    if isinstance(value, dict):
        return {
            key: _finish(item, f"{path}.{_escape(key)}" if path else _escape(key), legacy, depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [
            _finish(item, f"{path}.{i}" if path else str(i), legacy, depth + 1)
            for i, item in enumerate(value)
        ]
    return value


def _parse_payload(raw: bytes) -> dict[str, object]:
    """Parse JSON bytes with the TORCHTENSOR rule; raises ValueError subclasses on bad input
    (:class:`_TooLarge` and :class:`JSONBudgetError` for oversized ones) and RecursionError."""
    if len(raw) > MAX_JSON_BYTES:
        raise _TooLarge(f"the JSON is {len(raw):,} bytes, more than any embedding ({MAX_JSON_BYTES:,})")
    # json.loads(bytes) detects UTF-16/32 too, and A1111 relies on it: decode the same way.
    text = raw.decode(json.detect_encoding(raw), "surrogatepass")
    doc = load_json(text, "the JSON", object_hook=_object_hook)
    if not isinstance(doc, dict):
        raise _PayloadError(f"the JSON is a {type(doc).__name__}, not an object")
    hints = doc.pop(DTYPES_KEY, None)
    legacy = (
        {str(k): v for k, v in hints.items() if isinstance(v, str)}
        if isinstance(hints, dict)
        else {}
    )
    result: dict[str, object] = _finish(doc, "", legacy)
    return result


def _payload_or_error(path: str | os.PathLike[str], raw: bytes, container: str) -> dict[str, object]:
    """:func:`_parse_payload`, with its failures as conceptlib errors naming the container."""
    try:
        return _parse_payload(raw)
    except (_TooLarge, JSONBudgetError) as exc:
        raise ResourceLimitError(f"{container}: {exc}", path=path) from None
    except (ValueError, RecursionError) as exc:
        # ValueError covers UnicodeDecodeError, JSONDecodeError and the payload rules.
        reason = "it nests too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise CorruptFileError(
            f"{container} does not hold a valid embedding payload ({reason})", path=path
        ) from None


# --- container B: pixel data blocks ------------------------------------------------------------


def _crop_black(pixels: _U8) -> _U8:
    """Crop to the bounding box of pixels whose three channels are all non-zero (A1111's step 2).

    With no such pixel A1111's argmax arithmetic keeps the whole image; so does this.
    """
    # Channel by channel: np.all over the 3-long last axis is several times slower.
    darkest = np.minimum(np.minimum(pixels[..., 0], pixels[..., 1]), pixels[..., 2])
    mask = np.asarray(darkest > 0)
    cols, rows = np.asarray(np.any(mask, axis=0)), np.asarray(np.any(mask, axis=1))
    col_start, col_end = int(cols.argmax()), mask.shape[1] - int(cols[::-1].argmax())
    row_start, row_end = int(rows.argmax()), mask.shape[0] - int(rows[::-1].argmax())
    return pixels[row_start:row_end, col_start:col_end]


def _zlib_header_ok(first: int, second: int) -> bool:
    # RFC 1950: deflate method, a header checksum that divides by 31, no preset dictionary.
    return (
        (first & 0x0F) == 8
        and (first >> 4) <= 7
        and (first * 256 + second) % 31 == 0
        and not second & 0x20
    )


def _extract_pixel_stream(pixels: _U8) -> bytes | None:
    """Steps 2-6 of A1111's reader: the (still compressed) bytes of the data blocks.

    Returns None when the image shows no data blocks. A1111 only needs two low-nibble-zero
    columns, which ordinary pictures can have (a flat 0x80 grey has nothing but), so this also
    asks for what every A1111 writer produces: two blocks of equal, non-zero width whose first
    bytes form a zlib header. Otherwise plain images would be reported as damaged embeddings.

    Raises:
        _TooLarge: the blocks hold more than any payload compresses to.
    """
    cropped = _crop_black(pixels)
    height = cropped.shape[0]
    # A column's low nibbles are all zero iff the OR of all its bytes has a zero low nibble;
    # OR-reducing is far cheaper than summing a nibble copy of the whole image.
    column_bits = np.bitwise_or.reduce(np.bitwise_or.reduce(cropped, axis=0), axis=1)
    zero_cols = np.flatnonzero((column_bits & np.uint8(0x0F)) == 0)
    if zero_cols.size < 2:
        return None
    first, last = int(zero_cols[0]), int(zero_cols[-1])
    if first == 0 or first != cropped.shape[1] - last - 1:
        return None
    nibble = np.uint8(0x0F)
    head = _whiten(cropped[0, 0, :2] & nibble) | (_whiten(cropped[0, last + 1, :2] & nibble) << np.uint8(4))
    if not _zlib_header_ok(int(head[0]), int(head[1])):
        return None
    # Compressed JSON is far smaller than the JSON (capped below) and the padding adds at most
    # 4H; bigger blocks would only cost time and memory before failing.
    size = height * first * 3
    if size > MAX_JSON_BYTES + 4 * height:
        raise _TooLarge(f"the data blocks hold {size:,} bytes, more than any embedding")
    low = (cropped[:, :first] & nibble).reshape(-1)
    high = (cropped[:, last + 1 :] & nibble).reshape(-1)
    data = (_whiten(high) << np.uint8(4)) | _whiten(low)
    return data.tobytes()


def _inflate(stream: bytes | memoryview, cap: int, what: str) -> bytes:
    """zlib-decompress at most ``cap`` bytes, ignoring what follows the end of the stream.

    Raises:
        _TooLarge: it would inflate to more than ``cap`` (nothing past ``cap + 1`` is made).
        ValueError: the stream is truncated (``zlib.error`` when it is damaged).
    """
    inflater = zlib.decompressobj()
    out = inflater.decompress(stream, cap + 1)
    if len(out) > cap:
        raise _TooLarge(f"{what} inflates to more than {cap:,} bytes")
    if not inflater.eof:
        raise ValueError(f"{what} is truncated")
    return out


# --- reading: PNG chunks -------------------------------------------------------------------------


@dataclass(frozen=True)
class _PngHeader:
    """What the chunk walk found.

    Attributes:
        width: from IHDR.
        height: from IHDR.
        colour_type: from IHDR (0 and 4 are greyscale).
        text_type: the type of the last ``sd-ti-embedding`` chunk, or None.
        text: that chunk's data (keyword included).
    """

    width: int
    height: int
    colour_type: int
    text_type: bytes | None
    text: memoryview | None


def _damaged(path: str | os.PathLike[str], why: str) -> CorruptFileError:
    return CorruptFileError(f"damaged PNG: {why}", path=path)


def _scan_png(path: str | os.PathLike[str], data: bytes) -> _PngHeader:
    """Walk the chunks from the raw bytes, checking the CRC of the chunks used.

    The other chunks' CRCs are left to Pillow, which checks them where A1111 depends on them.
    """
    view = memoryview(data)
    pos = len(_PNG_MAGIC)
    ihdr: tuple[int, int, int] | None = None
    text_type: bytes | None = None
    text: memoryview | None = None
    for _ in range(MAX_PNG_CHUNKS):
        if pos + 12 > len(data):
            raise _damaged(path, "truncated (no IEND chunk at the end)")
        length, ctype = struct.unpack(">I4s", view[pos : pos + 8])
        body, end = pos + 8, pos + 8 + length
        if length > 0x7FFFFFFF or end + 4 > len(data):
            raise _damaged(path, "truncated (no IEND chunk at the end)")
        if not (ctype.isascii() and ctype.isalpha()):
            raise _damaged(path, f"a chunk type at byte {pos + 4} is not four letters")
        if ihdr is None and ctype != b"IHDR":
            raise _damaged(path, "it does not begin with an IHDR chunk")
        chunk = view[body:end]
        wanted = ctype == b"IHDR" and ihdr is None
        if ctype in _TEXT_CHUNKS:
            keyword = bytes(chunk[: len(_TEXT_KEY_BYTES) + 1])
            wanted = keyword in (_TEXT_KEY_BYTES, _TEXT_KEY_BYTES + b"\0")
        if wanted:
            (crc,) = struct.unpack(">I", view[end : end + 4])
            if zlib.crc32(view[pos + 4 : end]) != crc:
                raise _damaged(path, f"the {ctype.decode()} chunk at byte {pos} fails its CRC check")
            if ctype == b"IHDR":
                if length != 13:
                    raise _damaged(path, "its IHDR chunk is not 13 bytes")
                width, height, _depth, colour = struct.unpack(">IIBB", chunk[:10])
                if not (0 < width <= 0x7FFFFFFF and 0 < height <= 0x7FFFFFFF):
                    raise _damaged(path, f"its IHDR gives a {width}x{height} image")
                ihdr = (width, height, colour)
            else:
                # Pillow's image.text keeps the last chunk of a keyword; A1111 reads that one.
                text_type, text = ctype, chunk
        if ctype == b"IEND" and ihdr is not None:  # ihdr is always set here: IHDR came first
            return _PngHeader(*ihdr, text_type, text)
        pos = end + 4
    raise ResourceLimitError(
        f"PNG holds more than {MAX_PNG_CHUNKS:,} chunks, more than any embedding image", path=path
    )


def _text_of_chunk(path: str | os.PathLike[str], ctype: bytes, chunk: memoryview) -> str:
    """The text of an ``sd-ti-embedding`` chunk, as Pillow's ``image.text`` gives it."""
    value = bytes(chunk[len(_TEXT_KEY_BYTES) + 1 :])
    where = f"the {TEXT_KEY} {ctype.decode()} chunk (container A)"
    try:
        if ctype == b"tEXt":
            if len(value) > MAX_TEXT_BYTES:
                raise _TooLarge(f"{where} is {len(value):,} bytes, more than any embedding")
            return value.decode("latin-1")
        if ctype == b"zTXt":
            if value[:1] not in (b"", b"\0"):
                raise ValueError(f"{where} names an unknown compression method {value[0]}")
            return _inflate(value[1:], MAX_TEXT_BYTES, where).decode("latin-1")
        # iTXt: compression flag and method, then language tag and translated keyword.
        flag, method = value[:1], value[1:2]
        parts = value[2:].split(b"\0", 2)
        if len(parts) != 3:
            raise ValueError(f"{where} is cut short")
        body = parts[2]
        if flag == b"\1":
            if method != b"\0":
                raise ValueError(f"{where} names an unknown compression method")
            body = _inflate(body, MAX_TEXT_BYTES, where)
        elif len(body) > MAX_TEXT_BYTES:
            raise _TooLarge(f"{where} is {len(body):,} bytes, more than any embedding")
        return body.decode("utf-8")
    except _TooLarge as exc:
        raise ResourceLimitError(str(exc), path=path) from None
    except (ValueError, zlib.error) as exc:
        raise CorruptFileError(f"{where} is damaged ({exc})", path=path) from None


def _read_text(path: str | os.PathLike[str], text: str) -> dict[str, object]:
    try:
        # Non-validating like A1111's base64.b64decode, so every file A1111 loads loads here.
        raw = base64.b64decode(text.encode("latin-1"))
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise CorruptFileError(
            f"the {TEXT_KEY} text chunk (container A) is not valid base64 ({exc})", path=path
        ) from None
    return _payload_or_error(path, raw, f"the {TEXT_KEY} text chunk (container A)")


# --- reading: pixels -----------------------------------------------------------------------------


def _webp_is_lossy(data: bytes) -> bool:
    """True when the (first frame's) bitstream is lossy VP8, which cannot keep low bits exactly."""
    pos, end = 12, len(data)
    for _ in range(64):  # a WebP holds a handful of chunks before its first bitstream
        if pos + 8 > end:
            return False
        fourcc = data[pos : pos + 4]
        (size,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        if fourcc in (b"VP8 ", b"VP8L"):
            return fourcc == b"VP8 "
        if fourcc == b"ANMF":
            pos += 8 + 16  # into the first frame: its header, then its own chunks
            end = min(end, pos - 16 + size)
            continue
        pos += 8 + size + (size & 1)
    return False


def _too_big(kind: str, width: int, height: int) -> str:
    return (
        f"{kind} holds no embedding: no {TEXT_KEY} text chunk, and at {width}x{height} it is "
        f"larger than any embedding image (at most {MAX_IMAGE_PIXELS:,} pixels), so its pixels "
        "were not decoded"
    )


def _decode_pixels(path: str | os.PathLike[str], data: bytes, kind: str) -> _U8:
    """Decode the image to RGB with Pillow, refusing images too large to be an embedding image.

    Pillow's decompression-bomb check runs when it parses the header; its warning becomes an
    error here, and both become :class:`NoEmbeddingInImageError` like any oversized image.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise NoEmbeddingInImageError(_too_big(kind, width, height), path=path)
                image.load()
                rgb = image if image.mode == "RGB" else image.convert("RGB")
                return np.asarray(rgb, dtype=np.uint8)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise NoEmbeddingInImageError(
                f"{kind} holds no embedding: it claims more pixels than Pillow decodes safely, "
                f"far more than any embedding image (at most {MAX_IMAGE_PIXELS:,} pixels)",
                path=path,
            ) from None
        except UnidentifiedImageError:
            if kind == "PNG":
                raise _damaged(path, "Pillow cannot parse its header") from None
            raise UnknownFormatError(
                "not an image Pillow can read, so not an embedding PNG", path=path
            ) from None
        except (OSError, SyntaxError, ValueError, EOFError, zlib.error, struct.error, IndexError) as exc:
            raise CorruptFileError(f"damaged {kind}: {exc}", path=path) from None


def _pixels(path: str | os.PathLike[str], data: bytes, header: _PngHeader | None) -> tuple[_U8, str]:
    """The RGB pixels of an image without container A, and its kind for messages.

    ``header`` is the PNG's chunk walk (None for other formats); pixels are decoded only when the
    image could carry data blocks.
    """
    if header is not None:
        if header.colour_type in _GREYSCALE:
            raise NoEmbeddingInImageError(
                f"PNG holds no embedding: no {TEXT_KEY} text chunk, and a greyscale image cannot "
                "carry data blocks (they need three independent channels)",
                path=path,
            )
        if header.width * header.height > MAX_IMAGE_PIXELS:
            raise NoEmbeddingInImageError(_too_big("PNG", header.width, header.height), path=path)
        if header.width < _MIN_WIDTH:
            raise NoEmbeddingInImageError(f"PNG {_NO_EMBEDDING}", path=path)
        return _decode_pixels(path, data, "PNG"), "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        if _webp_is_lossy(data):
            raise NoEmbeddingInImageError(
                "WEBP image holds no embedding: it is lossy, and lossy compression destroys the "
                "low bits data blocks are written in",
                path=path,
            )
        return _decode_pixels(path, data, "WEBP image"), "WEBP image"
    return _decode_pixels(path, data, "image"), "image"


def read_payload(
    path: str | os.PathLike[str], data: bytes | None = None
) -> tuple[dict[str, object], str]:
    """Read the A1111 payload from an embedding PNG (or another lossless image Pillow reads).

    Container A (the ``sd-ti-embedding`` text chunk) is tried first, then container B (the
    pixel data blocks), like A1111. JSON objects with a ``TORCHTENSOR`` key become float32
    :class:`Tensor` objects (A1111 casts to float32), except those whose dtype conceptlib
    recorded (``conceptlib_dtype`` beside the values, or an old top-level
    ``conceptlib_dtypes``), which get it back exactly; the old key is removed from the result.
    The module docstring lists the limits that keep hostile images cheap.

    Args:
        path: the file; read from disk unless ``data`` is given, and named in errors.
        data: the file's bytes, when already in memory.

    Returns:
        ``(payload, container)`` where container is ``"text"`` or ``"pixels"``.

    Raises:
        NoEmbeddingInImageError: the image carries neither container, or cannot carry one (a
            picture: greyscale, lossy WebP, larger than :data:`MAX_IMAGE_PIXELS`).
        CorruptFileError: the image is damaged, or a container is present but does not decode.
        ResourceLimitError: a container unpacks to more than any embedding needs.
        UnknownFormatError: not an image at all.
    """
    if data is None:
        from conceptlib.formats import MAX_FILE_SIZE

        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_SIZE + 1)
        if len(data) > MAX_FILE_SIZE:
            raise ResourceLimitError(f"is larger than {MAX_FILE_SIZE:,} bytes", path=path)
    header = _scan_png(path, data) if data.startswith(_PNG_MAGIC) else None
    if header is not None and header.text_type is not None and header.text is not None:
        return _read_text(path, _text_of_chunk(path, header.text_type, header.text)), "text"
    pixels, kind = _pixels(path, data, header)
    where = "the data blocks in the pixels (container B)"
    stream_name = "the stream in the pixels (container B)"
    try:
        stream = _extract_pixel_stream(pixels)
        del pixels  # the image is the largest thing held; the JSON does not need it
        raw = _inflate(stream, MAX_JSON_BYTES, stream_name) if stream is not None else None
    except _TooLarge as exc:
        raise ResourceLimitError(str(exc), path=path) from None
    except (zlib.error, ValueError) as exc:
        raise CorruptFileError(
            f"{where} do not decompress ({exc})",
            path=path,
            hint="the image was probably re-encoded, resized or cropped; find the original file",
        ) from None
    if raw is None:
        raise NoEmbeddingInImageError(f"{kind} {_NO_EMBEDDING}", path=path)
    return _payload_or_error(path, raw, stream_name), "pixels"


# --- writing -----------------------------------------------------------------------------------


def _iter_tensors(value: object) -> Iterator[Tensor]:
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, np.ndarray):
        yield Tensor.from_numpy(value)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _iter_tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _iter_tensors(item)


def _first_tensor(payload: dict[str, object]) -> Tensor | None:
    """The tensor A1111 decorates with: the first of ``string_to_param``, else (SDXL) the first
    one found anywhere."""
    params = payload.get("string_to_param")
    for source in (params, payload):
        for tensor in _iter_tensors(source):
            return tensor
    return None


def _edge_style(payload: dict[str, object]) -> _U8:
    """A1111's decoration shades: |row 0|[:1024] / max * 255, truncated to uint8."""
    tensor = _first_tensor(payload)
    if tensor is None or tensor.array.size == 0 or not tensor.is_float:
        return np.zeros(1, dtype=np.uint8)
    values = tensor.to_float32() if tensor.dtype != "float64" else tensor.array
    row = values.reshape(values.shape[0], -1)[0] if values.ndim >= 2 else values.reshape(-1)
    mags = np.abs(row[:1024].astype(np.float64))
    # A1111 would emit garbage shades for NaN/Inf or an all-zero row; plain black is the intent.
    mags = np.where(np.isfinite(mags), mags, 0.0)
    peak = float(mags.max())
    if peak <= 0.0:
        return np.zeros(mags.size, dtype=np.uint8)
    return (mags / peak * 255).astype(np.uint8)


def _decoration(width: int, height: int, shades: _U8) -> _U8:
    """The high nibbles of a data block: A1111's staggered grid of small grey discs.

    Readers discard high nibbles; this only makes the blocks look like A1111's.
    """
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    i = 0
    for x in range(-6, width, 8):
        for yi, y in enumerate(range(-6, height, 8)):
            offset = 4 if yi % 2 == 0 else 0
            draw.ellipse((x + offset, y, x + offset + 6, y + 6), fill=int(shades[i % len(shades)]))
            i += 1
    return np.asarray(canvas, dtype=np.uint8) & np.uint8(0xF0)


def _data_block(nibbles: _U8, height: int, shades: _U8, edge_col: int) -> _U8:
    """One whitened, decorated H x Wb x 3 block from a padded nibble sequence.

    ``edge_col`` is the block's outer column (0 for the left block, -1 for the right one).
    A1111's reader crops to the bounding box of all-channels-non-zero pixels, so that column must
    hold one such pixel or the crop would eat into the data. With hundreds of rows that is
    practically certain; when it is not, giving the column a high nibble of at least 1 fixes it
    without touching the data (readers discard high nibbles).
    """
    block = nibbles.reshape(height, -1, 3)
    block = block | _decoration(block.shape[1], height, shades)[:, :, None]
    block = _whiten(block)
    column = block[:, edge_col, :]
    if not (column > 0).all(axis=1).any():
        block[:, edge_col, :] = column | np.uint8(0x10)
    return block


def _load_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed-size bitmap font
        return ImageFont.load_default()


def _draw_centered(
    draw: ImageDraw.ImageDraw,
    text: str,
    center_x: int,
    top: int,
    max_width: int,
    size: int,
    fill: tuple[int, int, int],
) -> None:
    """Draw one line centred on ``center_x``, shrinking (then eliding) it to fit ``max_width``."""
    while True:
        font = _load_font(size)
        if draw.textlength(text, font=font) <= max_width or size <= 10:
            break
        size -= 2
    while len(text) > 1 and draw.textlength(text, font=font) > max_width:
        text = text[:-2] + "…"
    width = draw.textlength(text, font=font)
    draw.text((center_x - width / 2, top), text, font=font, fill=fill)


def _default_footer(payload: dict[str, object]) -> str:
    """A1111's caption footers: model name, ``[shorthash]`` and ``"{n}v {steps}s"``."""
    parts: list[str] = []
    model = payload.get("sd_checkpoint_name")
    if isinstance(model, str) and model:
        parts.append(model)
    shorthash = payload.get("sd_checkpoint")
    if isinstance(shorthash, str) and shorthash:
        parts.append(f"[{shorthash}]")
    # SDXL files take their vector count from clip_g (as A1111 does); others from the first tensor.
    clip_g = payload.get("clip_g")
    tensor = clip_g if isinstance(clip_g, Tensor) else _first_tensor(payload)
    count = ""
    if tensor is not None:
        count = f"{tensor.shape[0] if tensor.ndim >= 2 else 1}v"
    step = payload.get("step")
    if isinstance(step, int) and not isinstance(step, bool):
        count = f"{count} {step}s".strip()
    if count:
        parts.append(count)
    return "   ".join(parts)


def _default_cover(title: str, footer: str) -> Image.Image:
    """A dark 512 x 512 card with the title and footer, standing in for A1111's training preview."""
    size = _DEFAULT_COVER_SIZE
    # A vertical gradient whose channels never reach 0 (see _prepare_cover).
    ramp = np.linspace(0.0, 1.0, size)[:, None]
    top, bottom = np.array([52.0, 58.0, 84.0]), np.array([18.0, 20.0, 30.0])
    rows = (top + (bottom - top) * ramp).astype(np.uint8)
    pixels = np.broadcast_to(rows[:, None, :], (size, size, 3)).copy()
    cover = Image.fromarray(pixels)
    draw = ImageDraw.Draw(cover)
    margin = 24
    if title:
        _draw_centered(
            draw, title, size // 2, size // 2 - 40, size - 2 * margin, 56, (236, 238, 244)
        )
    if footer:
        _draw_centered(draw, footer, size // 2, size - 56, size - 2 * margin, 24, (176, 182, 200))
    return cover


def _prepare_cover(cover: Image.Image) -> _U8:
    """The cover as RGB pixels with every channel's low bit set.

    A1111's reader crops to pixels whose three channels are all non-zero and splits the image at
    low-nibble-zero columns. Setting the lowest bit (an invisible change of at most one level)
    makes every cover pixel count for the crop, so the crop always spans all rows, and keeps
    every cover column away from the split.
    """
    pixels = np.array(cover.convert("RGB"), dtype=np.uint8)
    return pixels | np.uint8(1)


def encode_png(
    payload: dict[str, object],
    *,
    cover: Image.Image | None = None,
    title: str | None = None,
    footer: str | None = None,
) -> bytes:
    """Build an RGB PNG carrying the payload in both A1111 containers.

    The image is ``lo block | black column | cover | black column | hi block``, the pixel
    layout A1111's reader expects, plus a tEXt ``sd-ti-embedding`` chunk. The result is checked
    by decoding the pixels again before it is returned.

    Args:
        payload: the A1111 dict (``string_to_param`` etc., or SDXL ``clip_l``/``clip_g``) with
            :class:`Tensor` (or numpy array) values for tensors.
        cover: the picture shown in the middle; by default a dark card with ``title`` and
            ``footer``.
        title: the default cover's title; defaults to the payload's ``name``.
        footer: the default cover's footer; defaults to A1111's caption (model name,
            ``[hash]``, ``"{n}v {steps}s"``).

    Returns:
        The PNG file's bytes.

    Raises:
        TypeError: the payload holds a value JSON cannot represent.
        ValueError: the payload is too large, or the cover too small for the pixel container
            to decode reliably.
    """
    raw = _payload_json(payload)
    if len(raw) > MAX_JSON_BYTES:
        raise ValueError(
            f"the payload is {len(raw)} bytes of JSON, more than readers accept ({MAX_JSON_BYTES})"
        )
    check_json_budget(raw, "the payload")  # what readers would refuse is never written
    if cover is None:
        name = payload.get("name")
        if title is None:
            title = name if isinstance(name, str) else ""
        if footer is None:
            footer = _default_footer(payload)
        cover = _default_cover(title, footer)
    cover_pixels = _prepare_cover(cover)
    height, width = cover_pixels.shape[:2]

    compressed = np.frombuffer(zlib.compress(raw, 9), dtype=np.uint8)
    n = compressed.size
    # A1111's padding quirk: each step adds a whole H (then 3H) even when n already divides.
    m1 = n + (height - n % height)
    m = m1 + (3 * height - m1 % (3 * height))
    # Cyclic repetition (numpy.resize semantics), not zeros, as A1111 pads.
    padded = np.resize(compressed, m)
    shades = _edge_style(payload)
    low = _data_block(padded & np.uint8(0x0F), height, shades, 0)
    high = _data_block(padded >> np.uint8(4), height, shades[::-1].copy(), -1)

    block_w = low.shape[1]
    canvas = np.zeros((height, 2 * block_w + width + 2, 3), dtype=np.uint8)
    canvas[:, :block_w] = low
    canvas[:, block_w + 1 : block_w + 1 + width] = cover_pixels
    canvas[:, block_w + 2 + width :] = high

    # Only a tiny cover can defeat the layout (a data column whose few nibbles all whiten to 0);
    # checking costs one decode and guarantees A1111 can read what we write.
    stream = _extract_pixel_stream(canvas)
    if stream is None or _inflate(stream, MAX_JSON_BYTES, "the data blocks") != raw:
        raise ValueError(
            f"a {width}x{height} cover is too small to carry the data blocks reliably; use a taller cover"
        )

    info = PngImagePlugin.PngInfo()
    info.add_text(TEXT_KEY, base64.b64encode(raw).decode("ascii"))
    buffer = io.BytesIO()
    Image.fromarray(canvas).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def write_png(
    payload: dict[str, object],
    path: str | os.PathLike[str],
    *,
    cover: Image.Image | None = None,
    title: str | None = None,
    footer: str | None = None,
) -> None:
    """Write :func:`encode_png`'s output to ``path`` atomically (same keyword arguments).

    Args:
        payload: the A1111 dict.
        path: the destination file; replaced if it exists.
        cover: see :func:`encode_png`.
        title: see :func:`encode_png`.
        footer: see :func:`encode_png`.
    """
    atomic_write_bytes(path, encode_png(payload, cover=cover, title=title, footer=footer))
