"""Files from the wild, safely: every hostile file is refused cheaply, with a conceptlib error.

Each file is built here byte by byte (PNG chunks, safetensors headers, JSON payloads, A1111
data blocks), never by conceptlib's writers, so a reader bug cannot hide behind the same bug in
a writer. The limits these tests meet are documented in the reading modules.
"""

from __future__ import annotations

import base64
import io
import json
import lzma
import math
import re
import struct
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, features

from conceptlib.embedding import MAX_STEP, Embedding
from conceptlib.errors import (
    BadInputError,
    CorruptFileError,
    EmbeddingStructureError,
    NoEmbeddingInImageError,
    ResourceLimitError,
)
from conceptlib.formats import _png, _safetensors, _torchpickle, read, read_bytes
from conceptlib.formats._png import read_payload
from factory import vectors

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
KEY = b"sd-ti-embedding"

# --- builders ------------------------------------------------------------------------------------


def chunk(ctype: bytes, body: bytes) -> bytes:
    """One PNG chunk with its length and CRC."""
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def zero_rows(width: int, height: int, channels: int = 3) -> bytes:
    """The IDAT stream of an all-black image, compressed row by row (never held whole)."""
    packer = zlib.compressobj(9)
    row = b"\0" * (1 + width * channels)
    out = [packer.compress(row) for _ in range(height)]
    out.append(packer.flush())
    return b"".join(out)


def png(
    width: int, height: int, *extra: bytes, colour: int = 2, idat: bytes | None = None
) -> bytes:
    """A PNG from raw chunks: IHDR, the extra chunks, one IDAT (black pixels by default), IEND."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    if idat is None:
        idat = zero_rows(width, height, channels)
    return PNG_MAGIC + chunk(b"IHDR", ihdr) + b"".join(extra) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def text_chunk(doc: Any) -> bytes:
    """A tEXt sd-ti-embedding chunk holding ``doc`` (JSON-encoded unless already bytes)."""
    raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return chunk(b"tEXt", KEY + b"\0" + base64.b64encode(raw))


def a1111_doc(**fields: Any) -> dict[str, Any]:
    """An A1111 payload with one 768-wide vector."""
    doc: dict[str, Any] = {"string_to_token": {"*": 265}, "string_to_param": {"*": {"TORCHTENSOR": [[0.01] * 768]}}}
    doc.update(fields)
    return doc


def deflate_bomb(size: int) -> bytes:
    """A zlib stream of ``size`` zero bytes, built in 1 MiB steps."""
    packer = zlib.compressobj(9)
    block = b"\0" * (1 << 20)
    out = [packer.compress(block) for _ in range(size >> 20)]
    out.append(packer.flush())
    return b"".join(out)


def lcg_nibbles(count: int) -> np.ndarray:
    """A1111's whitening stream (docs/formats.md b.9 step 6), one step at a time."""
    state, out = 0, np.empty(count, dtype=np.uint8)
    for k in range(count):
        state = (1664525 * state + 1013904223) % 2**32
        out[k] = (state % 255) & 0x0F
    return out


def painted_blocks(stream: bytes, height: int = 64) -> bytes:
    """A PNG whose data blocks (container B) carry ``stream``, laid out as A1111 lays them out."""
    n = len(stream)
    m1 = n + (height - n % height)
    m = m1 + (3 * height - m1 % (3 * height))
    padded = np.resize(np.frombuffer(stream, dtype=np.uint8), m)
    noise = lcg_nibbles(m)
    # A high nibble of 1 keeps every data pixel non-black, so A1111's crop keeps all of them.
    low = (((padded & 0x0F) ^ noise) | 0x10).reshape(height, -1, 3)
    high = (((padded >> 4) ^ noise) | 0x10).reshape(height, -1, 3)
    black = np.zeros((height, 1, 3), dtype=np.uint8)
    cover = np.full((height, 8, 3), 9, dtype=np.uint8)
    canvas = np.concatenate([low, black, cover, black, high], axis=1)
    out = io.BytesIO()
    Image.fromarray(canvas).save(out, format="PNG")
    return out.getvalue()


def webp_vp8l(width: int, height: int) -> bytes:
    """A lossless WebP header claiming ``width`` x ``height`` (the bitstream is not valid)."""
    payload = b"\x2f" + struct.pack("<I", (width - 1) | ((height - 1) << 14)) + b"\0" * 63
    body = b"VP8L" + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


def safetensors(header: bytes | dict[str, Any], payload: bytes = b"") -> bytes:
    """A safetensors file from a raw header (bytes used as they are)."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + payload


def f32_entry(begin: int = 0, rows: int = 1) -> dict[str, Any]:
    return {"dtype": "F32", "shape": [rows, 768], "data_offsets": [begin, begin + rows * 768 * 4]}


ZEROS_768 = b"\0" * (768 * 4)


# --- PNG: container A ------------------------------------------------------------------------------


def test_text_chunk_is_read_without_decoding_pixels() -> None:
    """A 10^10-pixel IHDR beside a valid text chunk: read from the text, the pixels never touched."""
    data = png(100_000, 100_000, text_chunk(a1111_doc(name="x", step=7)), idat=b"not even zlib")
    payload, container = read_payload("big.png", data)
    assert container == "text" and payload["step"] == 7


@pytest.mark.parametrize("ctype", [b"zTXt", b"iTXt"])
def test_compressed_text_bomb_is_refused_while_inflating(ctype: bytes) -> None:
    # 64 MiB of zeros deflate to ~64 KB; the reader must stop at its cap, not inflate it all.
    bomb = deflate_bomb(64 << 20)
    body = KEY + b"\0" + (b"\0" + bomb if ctype == b"zTXt" else b"\1\0" + b"\0\0" + bomb)
    with pytest.raises(ResourceLimitError, match=r"inflates to more than 12,582,912 bytes") as info:
        read_payload("bomb.png", png(8, 8, chunk(ctype, body)))
    assert info.value.path == "bomb.png"


def test_compressed_text_chunk_is_read() -> None:
    """zTXt and iTXt hold container A as well as tEXt does (Pillow's image.text reads all three)."""
    raw = base64.b64encode(json.dumps(a1111_doc(step=3)).encode())
    for ctype, body in (
        (b"zTXt", KEY + b"\0\0" + zlib.compress(raw)),
        (b"iTXt", KEY + b"\0\1\0en\0\0" + zlib.compress(raw)),
        (b"iTXt", KEY + b"\0\0\0\0\0" + raw),
    ):
        payload, container = read_payload("z.png", png(8, 8, chunk(ctype, body)))
        assert container == "text" and payload["step"] == 3


def test_oversized_text_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_png, "MAX_TEXT_BYTES", 10_000)
    data = png(8, 8, text_chunk(a1111_doc(pad="x" * 20_000)))
    with pytest.raises(ResourceLimitError, match="tEXt chunk .* more than any embedding"):
        read_payload("long.png", data)


def test_text_chunk_with_a_bad_crc() -> None:
    good = text_chunk(a1111_doc())
    bad = good[:-4] + bytes([good[-4] ^ 1]) + good[-3:]
    with pytest.raises(CorruptFileError, match="fails its CRC check"):
        read_payload("crc.png", png(8, 8, bad))


def test_last_text_chunk_wins_as_in_pillow() -> None:
    data = png(8, 8, text_chunk(a1111_doc(step=1)), text_chunk(a1111_doc(step=2)))
    assert read_payload("two.png", data)[0]["step"] == 2


def test_too_many_chunks() -> None:
    empty = chunk(b"abCd", b"")  # an ancillary, private chunk type
    data = png(8, 8, empty * (_png.MAX_PNG_CHUNKS + 1))
    with pytest.raises(ResourceLimitError, match="more than 65,536 chunks"):
        read_payload("chunks.png", data)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"[" + b"[]," * 100_000 + b"[]]", "opens 100,002 arrays and objects"),
        (b'{"a": [' + b"0," * 1_100_000 + b"0]}", "holds 1,100,000 values"),
        (b'{"a": ' * 40 + b"1" + b"}" * 40, "nests more than 32 levels"),
    ],
    ids=["containers", "values", "depth"],
)
def test_json_budget(raw: bytes, message: str) -> None:
    with pytest.raises(ResourceLimitError, match=message):
        read_payload("json.png", png(8, 8, text_chunk(raw)))


def test_json_nested_past_pythons_parser() -> None:
    raw = b"[" * 20_000 + b"]" * 20_000
    with pytest.raises(CorruptFileError, match="nests too deeply"):
        read_payload("deep.png", png(8, 8, text_chunk(raw)))


def test_oversized_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_png, "MAX_JSON_BYTES", 2_000)
    with pytest.raises(ResourceLimitError, match="the JSON is .* bytes, more than any embedding"):
        read_payload("json.png", png(8, 8, text_chunk(a1111_doc())))


def test_utf16_json_loads_as_in_a1111() -> None:
    """A1111's json.loads(bytes) detects UTF-16; so does this reader."""
    raw = json.dumps(a1111_doc(step=4)).encode("utf-16-le")
    assert read_payload("u16.png", png(8, 8, text_chunk(raw)))[0]["step"] == 4


# --- PNG: container B and images that cannot carry it ---------------------------------------------


def test_pixel_stream_bomb_is_refused_while_inflating() -> None:
    data = painted_blocks(deflate_bomb(64 << 20))
    with pytest.raises(ResourceLimitError, match=r"inflates to more than 8,388,608 bytes"):
        read_payload("bomb.png", data)


def test_painted_blocks_are_read() -> None:
    """The block painter above is A1111's layout: a real payload painted with it reads back."""
    data = painted_blocks(zlib.compress(json.dumps(a1111_doc(step=9)).encode(), 9))
    payload, container = read_payload("painted.png", data)
    assert container == "pixels" and payload["step"] == 9


def test_image_dimensions_bomb_is_not_decoded() -> None:
    """A 100,000 x 100,000 PNG (a 400 KB file): refused from its IHDR, with no Pillow warning."""
    data = png(100_000, 100_000, idat=deflate_bomb(1 << 20))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(NoEmbeddingInImageError, match="100000x100000 .* not decoded"):
            read_payload("bomb.png", data)
    assert caught == []


@pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")
@pytest.mark.parametrize("side", [10_000, 16_384])  # past Pillow's warning, past its error
def test_webp_dimensions_bomb_is_an_error_not_a_warning(side: int) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(NoEmbeddingInImageError, match="holds no embedding") as info:
            read_bytes(webp_vp8l(side, side), "bomb.webp")
    assert caught == []
    assert "bomb.webp" in str(info.value)


def test_greyscale_png_is_not_decoded() -> None:
    with pytest.raises(NoEmbeddingInImageError, match="greyscale"):
        read_payload("grey.png", png(64, 64, colour=0))


@pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")
def test_lossy_webp_is_not_decoded() -> None:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 30, 200)).save(out, format="WEBP", quality=80)
    with pytest.raises(NoEmbeddingInImageError, match="lossy"):
        read_bytes(out.getvalue(), "photo.webp")


def test_png_that_does_not_begin_with_ihdr() -> None:
    data = PNG_MAGIC + chunk(b"IDAT", b"") + chunk(b"IEND", b"")
    with pytest.raises(CorruptFileError, match="does not begin with an IHDR"):
        read_payload("odd.png", data)


def test_folder_add_skips_pictures_cheaply(tmp_path: Path) -> None:
    """Thumbnails, grey scans and bombs in a folder are skipped as pictures; the embedding is added."""
    from conceptlib.library import Library

    folder = tmp_path / "embeddings"
    folder.mkdir()
    (folder / "concept.png").write_bytes(png(8, 8, text_chunk(a1111_doc(name="concept", step=5))))
    (folder / "thumb.png").write_bytes(png(32, 32))
    (folder / "scan.png").write_bytes(png(32, 32, colour=0))
    (folder / "bomb.png").write_bytes(png(100_000, 100_000, idat=b"x"))
    library = Library.open(tmp_path / "home")
    report = library.add([folder])
    assert [c.name for c in report.added] == ["concept"]
    assert sorted(Path(r.path).name for r in report.skipped) == ["bomb.png", "scan.png", "thumb.png"]
    assert report.rejected == []


# --- safetensors headers ---------------------------------------------------------------------------


def _entry(**change: Any) -> dict[str, Any]:
    entry = f32_entry()
    entry.update(change)
    return entry


HEADER_CASES: list[tuple[str, bytes | dict[str, Any], type[BadInputError], str]] = [
    ("duplicate tensor", b'{"<x>": ' + json.dumps(f32_entry()).encode() + b', "<x>": ' + json.dumps(f32_entry()).encode() + b"}", CorruptFileError, "'<x>' appears twice"),
    ("duplicate field", b'{"<x>": {"dtype": "F32", "dtype": "F16", "shape": [1, 768], "data_offsets": [0, 3072]}}', CorruptFileError, "appears twice"),
    ("bool in shape", {"<x>": _entry(shape=[True, 768])}, CorruptFileError, "invalid shape"),
    ("negative dim", {"<x>": _entry(shape=[-1, 768])}, CorruptFileError, "invalid shape"),
    ("float dim", {"<x>": _entry(shape=[1.0, 768])}, CorruptFileError, "invalid shape"),
    ("rank 9", {"<x>": _entry(shape=[1] * 8 + [768])}, CorruptFileError, "invalid shape"),
    ("5000-digit dim", b'{"<x>": {"dtype": "F32", "shape": [' + b"9" * 5000 + b', 768], "data_offsets": [0, 3072]}}', CorruptFileError, "invalid shape '\\[<a 5,000-digit integer>, 768\\]'"),
    ("5000-digit offset", b'{"<x>": {"dtype": "F32", "shape": [1, 768], "data_offsets": [0, ' + b"9" * 5000 + b"]}}", CorruptFileError, "invalid data offsets"),
    ("bool offset", {"<x>": _entry(data_offsets=[False, 3072])}, CorruptFileError, "invalid data offsets"),
    ("reversed offsets", {"<x>": _entry(data_offsets=[3072, 0])}, CorruptFileError, "invalid data offsets"),
    ("three offsets", {"<x>": _entry(data_offsets=[0, 3072, 3072])}, CorruptFileError, "invalid data offsets"),
    ("unknown dtype", {"<x>": _entry(dtype="X99")}, CorruptFileError, "dtype 'X99', which the safetensors format does not define"),
    ("dtype not a string", {"<x>": _entry(dtype=5)}, CorruptFileError, "does not define"),
    ("dtype conceptlib skips", {"<x>": _entry(dtype="F8_E4M3", shape=[4, 768])}, CorruptFileError, "which conceptlib does not read"),
    ("entry not an object", {"<x>": [1, 2]}, CorruptFileError, "not an object"),
    ("metadata a list", {"__metadata__": ["a"], "<x>": f32_entry()}, CorruptFileError, "__metadata__ must map strings"),
    ("metadata number", {"__metadata__": {"a": 1}, "<x>": f32_entry()}, CorruptFileError, "__metadata__ must map strings"),
    ("not UTF-8", b'{"<\xff>": ' + json.dumps(f32_entry()).encode() + b"}", CorruptFileError, "not valid JSON"),
    ("UTF-16", json.dumps({"<x>": f32_entry()}).encode("utf-16-le"), CorruptFileError, "not valid JSON"),
    ("nested 20,000 deep", b'{"<x>": ' + b"[" * 20_000 + b"]" * 20_000 + b"}", CorruptFileError, "nests deeper"),
    ("empty tensor, absurd shape", {"<x>": _entry(shape=[0, 2**62], data_offsets=[0, 0])}, CorruptFileError, "absurd shape"),
    ("overlap", {"<a>": f32_entry(), "<b>": _entry(data_offsets=[1536, 4608])}, CorruptFileError, "overlap"),
]  # fmt: skip


@pytest.mark.parametrize(("label", "header", "error", "message"), HEADER_CASES, ids=[c[0] for c in HEADER_CASES])
def test_safetensors_header(label: str, header: bytes | dict[str, Any], error: type[BadInputError], message: str) -> None:
    data = safetensors(header, ZEROS_768 * 2)
    with pytest.raises(error, match=message) as info:
        read_bytes(data, "x.safetensors")
    assert info.value.path == "x.safetensors"


def test_safetensors_null_metadata_is_none() -> None:
    emb = read_bytes(safetensors({"__metadata__": None, "<x>": f32_entry()}, ZEROS_768), "x.safetensors")
    assert emb.token == "<x>" and emb.metadata == {}


def test_safetensors_aliasing_bomb() -> None:
    """2,000 entries all naming the same 3 MB: refused, not copied 2,000 times (6 GB)."""
    header = {f"t{i}": {"dtype": "F32", "shape": [1024, 768], "data_offsets": [0, 1024 * 768 * 4]} for i in range(2000)}
    with pytest.raises(CorruptFileError, match="overlap"):
        read_bytes(safetensors(header, b"\0" * (1024 * 768 * 4)), "alias.safetensors")


def test_safetensors_header_budget() -> None:
    header = b'{"__metadata__": {}, "x": [' + b"[]," * 100_000 + b"[]]}"
    with pytest.raises(ResourceLimitError, match="arrays and objects"):
        read_bytes(safetensors(header), "x.safetensors")


# --- numbers from files ------------------------------------------------------------------------------

STEP_CASES: list[tuple[str, bytes, int | None]] = [
    ("int", b"60", 60),
    ("largest", str(MAX_STEP).encode(), MAX_STEP),
    ("2**63", str(MAX_STEP + 1).encode(), None),
    ("negative", b"-5", None),
    ("integral float", b"3.0", 3),
    ("fraction", b"2.5", None),
    ("1e308", b"1e308", None),
    ("NaN", b"NaN", None),
    ("Infinity", b"Infinity", None),
    ("bool", b"true", None),
    ("5000 digits", b"9" * 5000, None),
    ("superscript", json.dumps("²").encode(), None),
    ("circled", json.dumps("①").encode(), None),
    ("Arabic-Indic", json.dumps("١٢").encode(), None),
    ("ASCII digit string", b'" 0012 "', 12),
    ("20 digit string", b'"' + b"9" * 20 + b'"', None),
]


@pytest.mark.parametrize(("label", "step", "expected"), STEP_CASES, ids=[c[0] for c in STEP_CASES])
def test_step_from_png(label: str, step: bytes, expected: int | None) -> None:
    raw = json.dumps(a1111_doc(name="n")).encode()[:-1] + b', "step": ' + step + b"}"
    emb = read_bytes(png(8, 8, text_chunk(raw)), "step.png")
    assert emb.step == expected


@pytest.mark.parametrize(("label", "step", "expected"), [c for c in STEP_CASES if c[1].startswith(b'"')], ids=lambda v: v if isinstance(v, str) else "")
def test_step_from_safetensors_metadata(label: str, step: bytes, expected: int | None) -> None:
    header = {"__metadata__": {"conceptlib.step": json.loads(step)}, "<x>": f32_entry()}
    assert read_bytes(safetensors(header, ZEROS_768), "x.safetensors").step == expected


@pytest.mark.parametrize("step", [2**64, -1, math.inf, math.nan, 1e300, True, "²", vectors(1, 1).reshape(1)])
def test_step_from_pickle(tmp_path: Path, step: Any) -> None:
    path = tmp_path / "x.pt"
    path.write_bytes(_torchpickle.dumps({"string_to_param": {"*": vectors(1, 768)}, "name": "x", "step": step}))
    assert read(path).step is None


def test_step_tensor_from_pickle(tmp_path: Path) -> None:
    from conceptlib.tensor import Tensor

    path = tmp_path / "x.pt"
    step = Tensor.from_numpy(np.array(1500, dtype=np.int64))
    path.write_bytes(_torchpickle.dumps({"string_to_param": {"*": vectors(1, 768)}, "name": "x", "step": step}))
    assert read(path).step == 1500


def test_steps_beyond_sqlite_reach_the_index_as_none(tmp_path: Path) -> None:
    from conceptlib.library import Library

    path = tmp_path / "big-step.png"
    path.write_bytes(png(8, 8, text_chunk(json.dumps(a1111_doc(name="big")).encode()[:-1] + b', "step": 18446744073709551616}')))
    library = Library.open(tmp_path / "home")
    report = library.add([path])
    assert report.rejected == [] and report.added[0].steps is None
    assert library.show("big").steps is None


@pytest.mark.parametrize("step", [MAX_STEP + 1, -1, True, 1.0])
def test_embedding_refuses_a_step_sqlite_cannot_store(step: Any) -> None:
    with pytest.raises(ValueError, match="step must be None or an int"):
        Embedding({"clip_l": vectors(1, 768)}, step=step)


def test_conceptlib_metadata_that_is_not_flat_is_kept_verbatim() -> None:
    nested = '{"a": ' + "[" * 900 + "]" * 900 + "}"
    header = {"__metadata__": {"conceptlib.metadata": nested, "conceptlib.name": "n"}, "<x>": f32_entry()}
    emb = read_bytes(safetensors(header, ZEROS_768), "x.safetensors")
    assert emb.metadata == {"conceptlib.metadata": nested}


def test_huge_int_key_in_a_pickle(tmp_path: Path) -> None:
    """A dict key that is a 2,000-bit int (a pickle allows it): no token, and named by size."""
    path = tmp_path / "x.pt"
    path.write_bytes(_torchpickle.dumps({2**2000 - 1: vectors(1, 768)}))
    with pytest.raises(EmbeddingStructureError, match="a key is <a 2,000-bit integer>, not a token") as info:
        read(path)
    assert str(path) in str(info.value)


# --- {emb, emb2} training snapshots ---------------------------------------------------------------


def test_snapshot_list_is_refused_with_what_it_is(tmp_path: Path) -> None:
    """XL-Textual-Inversion's all*.pt: one token saved at each step, not a multi-vector concept."""
    snapshots = [
        {"emb": vectors(1, 768, dtype="bfloat16", seed=i).reshape(768), "emb2": vectors(1, 1280, dtype="bfloat16", seed=i).reshape(1280)}
        for i in range(5)
    ]
    path = tmp_path / "allmyPuppet768.pt"
    path.write_bytes(_torchpickle.dumps(snapshots))
    with pytest.raises(EmbeddingStructureError, match=r"list of 5 \{emb, emb2\} SDXL snapshots") as info:
        read(path)
    assert "without the 'all' prefix" in (info.value.hint or "")
    # The single-snapshot file of the same tool still reads (as the shared myPuppet768.pt does).
    one = tmp_path / "myPuppet768.pt"
    one.write_bytes(_torchpickle.dumps(snapshots[-1]))
    assert read(one).source_format == "sdxl-emb"


# --- whatever a decoder lets through -------------------------------------------------------------


def _raised(make: Any) -> Exception:
    try:
        make()
    except Exception as exc:
        return exc
    raise AssertionError("did not raise")


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: lzma.decompress(b"\xfd7zXZ\x00\x00" + b"\x55" * 64), CorruptFileError, "compressed data is damaged"),
        (lambda: zlib.decompress(b"x\x9c" + b"\xff" * 16), CorruptFileError, "compressed data is damaged"),
        (lambda: b"\xff\xfe\xfd".decode("utf-8"), CorruptFileError, "text inside it does not decode"),
        (lambda: int(float("inf")), CorruptFileError, "number too large"),
        (lambda: np.frombuffer(b"", "<f4").reshape((0, 2**62)), CorruptFileError, "cannot be decoded .ValueError: array is too big"),
        (lambda: json.loads("[" * 100_000), CorruptFileError, "nests containers deeper"),
        (lambda: bytearray(2**62), ResourceLimitError, "ran out of memory"),
    ],
    ids=["lzma", "zlib", "unicode", "overflow", "numpy", "recursion", "memory"],
)
def test_unforeseen_decoder_errors_become_conceptlib_errors(make: Any, error: type, message: str) -> None:
    """The last resort of read_bytes, fed the exceptions real decoders raise on real bytes.

    A fuzz of every container (4,000 mutated files) finds no input that still reaches it; these
    are what it turns the decoders' own exceptions into should one slip through.
    """
    from conceptlib.formats import _unforeseen

    exc = _raised(make)
    mapped = _unforeseen(exc, "x.pt")
    assert isinstance(mapped, error) and mapped.path == "x.pt"
    assert re.search(message, mapped.message), mapped.message


# --- whole files ---------------------------------------------------------------------------------


def test_file_size_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import conceptlib.formats as formats

    monkeypatch.setattr(formats, "MAX_FILE_SIZE", 1000)
    path = tmp_path / "x.safetensors"
    path.write_bytes(safetensors({"<x>": f32_entry()}, ZEROS_768))
    with pytest.raises(ResourceLimitError) as info:
        read(path)
    assert info.value.message == "is 3,151 bytes, more than the 1,000 bytes an embedding file may have"


def test_device_is_not_read() -> None:
    from conceptlib.errors import NotRegularFileError

    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    with pytest.raises(NotRegularFileError, match="not a regular file"):
        read("/dev/zero")


def test_oversized_token_identifier(tmp_path: Path) -> None:
    from conceptlib.errors import TextFileError

    (tmp_path / "learned_embeds.safetensors").write_bytes(safetensors({"<x>": f32_entry()}, ZEROS_768))
    (tmp_path / "token_identifier.txt").write_bytes(b"x" * 10_000)
    with pytest.raises(TextFileError) as info:
        read(tmp_path)
    assert str(info.value) == f"{tmp_path / 'token_identifier.txt'}: is 10,000 bytes, more than the 4,096 bytes a token file may have"


def test_embedding_header_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Embedding reads refuse a header far past any embedding's before parsing it."""
    monkeypatch.setattr(_safetensors, "MAX_EMBEDDING_HEADER", 4096)
    data = safetensors({"__metadata__": {"pad": "x" * 5000}, "<x>": f32_entry()}, ZEROS_768)
    with pytest.raises(ResourceLimitError, match="more than any embedding's"):
        read_bytes(data, "x.safetensors")
    # Model checkpoints, read through read_header, keep the format's own limit.
    assert _safetensors.read_header(data, "x.safetensors")[1] == {"pad": "x" * 5000}


def test_tensor_of_integers_past_int64() -> None:
    """A TORCHTENSOR of 30-digit integers: A1111's numpy makes an object array torch refuses."""
    doc = b'{"string_to_param": {"*": {"TORCHTENSOR": [[' + b"1" * 30 + b', 2]]}}}'
    with pytest.raises(CorruptFileError, match="non-numbers"):
        read_payload("big.png", png(8, 8, text_chunk(doc)))


def test_messages_never_walk_a_whole_value() -> None:
    """A tuple holding the same tuple twice, 40 levels deep, has 2**40 leaves: its str never
    ends, so a message shows a few items of a few levels."""
    from conceptlib.formats._interpret import show

    dag: tuple[Any, ...] = ()
    for _ in range(40):
        dag = (dag, dag)
    shown = show(dag)
    assert shown.startswith("'(((<a tuple of 2>") and len(shown) < 300
    assert show(2**5000) == "<a 5,001-bit integer>"
    assert show("bell\a" + "x" * 500).startswith("'bell\\x07") and "…(+" in show("x" * 500)
