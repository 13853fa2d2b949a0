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
widening, which parses back to the same float32. Tensors of other dtypes are written as their
(exact) values and named in a top-level ``conceptlib_dtypes`` key, which A1111 ignores and which
this reader uses to cast them back.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin, UnidentifiedImageError

from conceptlib._atomic import atomic_write_bytes
from conceptlib.errors import (
    CorruptFileError,
    EmbeddingFileError,
    NoEmbeddingInImageError,
    UnknownFormatError,
)
from conceptlib.tensor import DTYPES, Tensor

__all__ = ["DTYPES_KEY", "TEXT_KEY", "encode_png", "read_payload", "write_png"]

#: The tEXt keyword of container A.
TEXT_KEY = "sd-ti-embedding"
#: Top-level payload key naming tensors whose dtype is not float32 (conceptlib's own; A1111
#: ignores unknown keys).
DTYPES_KEY = "conceptlib_dtypes"
#: The JSON key that marks a tensor.
TENSOR_KEY = "TORCHTENSOR"
#: Refuse to inflate more than this from the pixels: a 75-vector SD2 embedding is ~1.5 MB of JSON,
#: so anything near this limit is a decompression bomb, not an embedding.
MAX_JSON_BYTES = 64 * 1024 * 1024

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the whole (empty, fixed-CRC) end chunk
_LCG_A = 1664525
_LCG_C = 1013904223
_MASK32 = 0xFFFFFFFF
_DEFAULT_COVER_SIZE = 512
_NO_EMBEDDING = (
    "holds no embedding (no sd-ti-embedding text chunk and no data blocks in the pixels)"
)

_U8 = npt.NDArray[np.uint8]


# --- the LCG whitening stream ------------------------------------------------------------------


def _lcg_outputs(count: int) -> _U8:
    """The first ``count`` outputs r_k = s_{k+1} mod 255 of A1111's LCG seeded with 0.

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
    return (states % np.uint64(255)).astype(np.uint8)


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


def _to_jsonable(value: Any, path: str, dtypes: dict[str, str]) -> Any:
    """Replace tensors by ``{"TORCHTENSOR": ...}`` and note the non-float32 ones in ``dtypes``."""
    if isinstance(value, np.ndarray):
        value = Tensor.from_numpy(value)
    if isinstance(value, Tensor):
        if value.dtype != "float32":
            dtypes[path] = value.dtype
        return {TENSOR_KEY: _tensor_values(value)}
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            name = str(key)
            out[name] = _to_jsonable(
                item, f"{path}.{_escape(name)}" if path else _escape(name), dtypes
            )
        return out
    if isinstance(value, (list, tuple)):
        return [
            _to_jsonable(item, f"{path}.{i}" if path else str(i), dtypes)
            for i, item in enumerate(value)
        ]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(
        f"cannot store a {type(value).__name__} in an embedding PNG (at {path or 'top level'})"
    )


def _payload_json(payload: dict[str, object]) -> bytes:
    """Serialise like A1111's ``json.dumps(data, cls=EmbeddingEncoder)`` (default separators,
    ASCII-only, NaN/Infinity tokens), adding ``conceptlib_dtypes`` only when needed."""
    dtypes: dict[str, str] = {}
    body = {key: value for key, value in payload.items() if key != DTYPES_KEY}
    doc = _to_jsonable(body, "", dtypes)
    if dtypes:
        doc[DTYPES_KEY] = dtypes
    return json.dumps(doc).encode("ascii")


class _Raw:
    """A TORCHTENSOR value parsed by numpy the way A1111 does, before its final dtype is known."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        self.array = array


class _PayloadError(ValueError):
    """The JSON parsed but does not follow the TORCHTENSOR rule."""


def _object_hook(obj: dict[str, Any]) -> Any:
    # A1111 converts any object that *contains* the key, whatever else it holds.
    if TENSOR_KEY not in obj:
        return obj
    try:
        array = np.array(obj[TENSOR_KEY])
    except ValueError as exc:  # ragged nesting
        raise _PayloadError(f"a {TENSOR_KEY} value is not a rectangular array ({exc})") from None
    if array.dtype.kind not in "biuf":
        raise _PayloadError(f"a {TENSOR_KEY} value holds non-numbers (numpy dtype {array.dtype})")
    return _Raw(array)


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


def _finish(value: Any, path: str, dtypes: dict[str, str]) -> Any:
    """Turn every parsed tensor into a :class:`Tensor`, using the recorded dtypes by path."""
    if isinstance(value, _Raw):
        return _finish_tensor(value.array, dtypes.get(path))
    if isinstance(value, dict):
        return {
            key: _finish(item, f"{path}.{_escape(key)}" if path else _escape(key), dtypes)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [
            _finish(item, f"{path}.{i}" if path else str(i), dtypes) for i, item in enumerate(value)
        ]
    return value


def _parse_payload(raw: bytes) -> dict[str, object]:
    """Parse JSON bytes with the TORCHTENSOR rule; raises ValueError subclasses on bad input."""
    doc = json.loads(raw, object_hook=_object_hook)
    if not isinstance(doc, dict):
        raise _PayloadError(f"the JSON is a {type(doc).__name__}, not an object")
    hints = doc.pop(DTYPES_KEY, None)
    dtypes = (
        {str(k): v for k, v in hints.items() if isinstance(v, str)}
        if isinstance(hints, dict)
        else {}
    )
    result: dict[str, object] = _finish(doc, "", dtypes)
    return result


# --- container B: pixel data blocks ------------------------------------------------------------


def _crop_black(pixels: _U8) -> _U8:
    """Crop to the bounding box of pixels whose three channels are all non-zero (A1111's step 2).

    With no such pixel A1111's argmax arithmetic keeps the whole image; so does this.
    """
    mask = np.asarray(np.all(pixels > 0, axis=2))
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
    """
    nibbles = _crop_black(pixels) & np.uint8(0x0F)
    zero_cols = np.flatnonzero(nibbles.sum(axis=(0, 2), dtype=np.int64) == 0)
    if zero_cols.size < 2:
        return None
    low = nibbles[:, : zero_cols[0]].reshape(-1)
    high = nibbles[:, zero_cols[-1] + 1 :].reshape(-1)
    if low.size < 2 or low.shape != high.shape:
        return None
    head = _whiten(low[:2]) | (_whiten(high[:2]) << np.uint8(4))
    if not _zlib_header_ok(int(head[0]), int(head[1])):
        return None
    # Compressed JSON is far smaller than the JSON (capped below) and the padding adds at most
    # 4H; bigger blocks would only cost time and memory before failing.
    if low.size > MAX_JSON_BYTES + 4 * nibbles.shape[0]:
        raise ValueError(f"the data blocks hold {low.size:,} bytes, more than any embedding")
    data = (_whiten(high) << np.uint8(4)) | _whiten(low)
    return data.tobytes()


def _inflate(stream: bytes) -> bytes:
    """zlib-decompress, ignoring the padding after the end of the stream, with a size cap."""
    inflater = zlib.decompressobj()
    out = inflater.decompress(stream, MAX_JSON_BYTES)
    if inflater.unconsumed_tail:
        raise ValueError(f"it inflates to more than {MAX_JSON_BYTES:,} bytes")
    if not inflater.eof:
        raise ValueError("the compressed stream is truncated")
    return out


# --- reading -----------------------------------------------------------------------------------


def _open_image(path: str | os.PathLike[str], data: bytes) -> Image.Image:
    """Open and fully decode the image, mapping Pillow's failures to conceptlib errors."""
    is_png = data.startswith(_PNG_MAGIC)
    # Pillow tolerates a PNG cut off after its last image byte; the file is still damaged (and
    # another copy may be damaged elsewhere), so say so rather than read what is left.
    if is_png and _PNG_IEND not in data:
        raise CorruptFileError("damaged PNG: truncated (no IEND chunk at the end)", path=path)
    try:
        image = Image.open(io.BytesIO(data))
        # Loading now surfaces truncation and bad CRCs; A1111 fails on those files too, as its
        # ``image.text`` access loads the whole image.
        image.load()
    except Image.DecompressionBombError as exc:
        raise EmbeddingFileError(f"image too large to read safely ({exc})", path=path) from None
    except UnidentifiedImageError:
        if is_png:
            raise CorruptFileError(
                "damaged PNG: Pillow cannot parse its header", path=path
            ) from None
        raise UnknownFormatError(
            "not an image Pillow can read, so not an embedding PNG", path=path
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error) as exc:
        kind = "PNG" if is_png else "image"
        raise CorruptFileError(f"damaged {kind}: {exc}", path=path) from None
    return image


def _read_text(path: str | os.PathLike[str], text: str) -> dict[str, object]:
    try:
        # Non-validating like A1111's base64.b64decode, so every file A1111 loads loads here.
        raw = base64.b64decode(text.encode("latin-1"))
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise CorruptFileError(
            f"the {TEXT_KEY} text chunk (container A) is not valid base64 ({exc})", path=path
        ) from None
    try:
        return _parse_payload(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, _PayloadError, RecursionError) as exc:
        raise CorruptFileError(
            f"the {TEXT_KEY} text chunk (container A) does not hold a valid embedding payload ({exc})",
            path=path,
        ) from None


def read_payload(
    path: str | os.PathLike[str], data: bytes | None = None
) -> tuple[dict[str, object], str]:
    """Read the A1111 payload from an embedding PNG (or another lossless image Pillow reads).

    Container A (the ``sd-ti-embedding`` text chunk) is tried first, then container B (the
    pixel data blocks), like A1111. JSON objects with a ``TORCHTENSOR`` key become float32
    :class:`Tensor` objects (A1111 casts to float32), except those that ``conceptlib_dtypes``
    names, which get their recorded dtype back exactly; that key is removed from the result.

    Args:
        path: the file; read from disk unless ``data`` is given, and named in errors.
        data: the file's bytes, when already in memory.

    Returns:
        ``(payload, container)`` where container is ``"text"`` or ``"pixels"``.

    Raises:
        NoEmbeddingInImageError: the image carries neither container (a picture).
        CorruptFileError: the image is damaged, or a container is present but does not decode.
        EmbeddingFileError: the image is too large to decode safely.
    """
    if data is None:
        with open(path, "rb") as handle:
            data = handle.read()
    image = _open_image(path, data)
    with image:
        # Only PNG images have ``.text`` (tEXt, zTXt and iTXt); A1111 checks the same attribute.
        text = getattr(image, "text", None) or {}
        if TEXT_KEY in text:
            return _read_text(path, str(text[TEXT_KEY])), "text"
        try:
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
        except (OSError, ValueError) as exc:
            raise CorruptFileError(f"cannot decode the image's pixels ({exc})", path=path) from None
        kind = "PNG" if data.startswith(_PNG_MAGIC) else f"{image.format or 'image'} image"
    try:
        stream = _extract_pixel_stream(pixels)
        raw = _inflate(stream) if stream is not None else None
    except (zlib.error, ValueError) as exc:
        raise CorruptFileError(
            f"the data blocks in the pixels (container B) do not decompress ({exc})",
            path=path,
            hint="the image was probably re-encoded, resized or cropped; find the original file",
        ) from None
    if raw is None:
        raise NoEmbeddingInImageError(f"{kind} {_NO_EMBEDDING}", path=path)
    try:
        return _parse_payload(raw), "pixels"
    except (UnicodeDecodeError, json.JSONDecodeError, _PayloadError, RecursionError) as exc:
        raise CorruptFileError(
            f"the data blocks in the pixels (container B) do not hold a valid embedding payload ({exc})",
            path=path,
        ) from None


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
    if stream is None or _inflate(stream) != raw:
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
