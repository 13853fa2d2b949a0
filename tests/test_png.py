"""AUTOMATIC1111 embedding PNGs: both containers, bit-exact round trips, A1111's own fixture.

The reference reader below is written from docs/formats.md b.9 alone and shares no code with
conceptlib.formats._png, so a bug in the module cannot hide behind the same bug in the check.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, PngImagePlugin, features

from conceptlib.errors import CorruptFileError, ResourceLimitError, UnknownFormatError
from conceptlib.formats import _png
from conceptlib.formats._png import encode_png, read_payload, write_png
from conceptlib.tensor import Tensor

SHARED_EMBEDDINGS = Path(__file__).resolve().parents[2] / "shared" / "data" / "embeddings"
A1111_PNG = SHARED_EMBEDDINGS / "fgjd4j23423f+sd+test_embedding.png"


# --- an independent reference implementation of A1111's reader (b.9) ---------------------------


@functools.lru_cache(maxsize=4)
def ref_lcg(count: int) -> tuple[int, ...]:
    """A1111's generator, one step at a time: s = (1664525*s + 1013904223) mod 2^32, yield s mod 255."""
    state, out = 0, []
    for _ in range(count):
        state = (1664525 * state + 1013904223) % 2**32
        out.append(state % 255)
    return tuple(out)


def ref_xor(block: np.ndarray) -> np.ndarray:
    stream = np.array(ref_lcg(block.size), dtype=np.uint8).reshape(block.shape)
    return block ^ (stream & 0x0F)


def ref_json(raw: bytes) -> dict[str, Any]:
    """json.loads with A1111's EmbeddingDecoder rule, then float32 as A1111 uses the tensors."""

    def hook(obj: dict[str, Any]) -> Any:
        if "TORCHTENSOR" in obj:
            with np.errstate(
                over="ignore"
            ):  # float64 values beyond float32 become inf, as in torch
                return np.array(obj["TORCHTENSOR"]).astype(np.float32)
        return obj

    result: dict[str, Any] = json.loads(raw, object_hook=hook)
    return result


def ref_read_text(png: bytes) -> dict[str, Any]:
    with Image.open(io.BytesIO(png)) as image:
        text = image.text["sd-ti-embedding"]  # type: ignore[attr-defined]
    return ref_json(base64.b64decode(text))


def ref_read_pixels(png: bytes) -> dict[str, Any]:
    return ref_json(ref_pixel_json(png))


def ref_pixel_json(png: bytes) -> bytes:
    """Steps 1-7 of the b.9 reader: the JSON bytes the data blocks carry."""
    with Image.open(io.BytesIO(png)) as image:
        img = np.array(image.convert("RGB"), dtype=np.uint8)  # step 1
    mask = np.asarray(np.all(img > 0, axis=2))  # step 2
    cols, rows = np.asarray(np.any(mask, axis=0)), np.asarray(np.any(mask, axis=1))
    top, bottom = int(rows.argmax()), img.shape[0] - int(rows[::-1].argmax())
    left, right = int(cols.argmax()), img.shape[1] - int(cols[::-1].argmax())
    img = img[top:bottom, left:right]
    low_nibbles = img & 0x0F  # step 3
    black = np.where(low_nibbles.sum(axis=(0, 2)) == 0)[0]  # step 4
    assert black.size >= 2, "No Image data blocks found"
    lower = ref_xor(low_nibbles[:, : black.min()])  # step 5
    upper = ref_xor(low_nibbles[:, black.max() + 1 :])
    data = ((upper << 4) | lower).flatten().tobytes()  # step 6
    return zlib.decompress(data)  # step 7


# --- helpers -----------------------------------------------------------------------------------


def strip_text(png: bytes) -> bytes:
    """Re-save only the pixels (Pillow writes no text chunk without pnginfo)."""
    with Image.open(io.BytesIO(png)) as image:
        out = io.BytesIO()
        image.save(out, format="PNG")
    return out.getvalue()


def png_chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    chunks, pos = [], 8
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        chunks.append((png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return chunks


def png_with_text(pixels: Image.Image, text: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("sd-ti-embedding", text)
    out = io.BytesIO()
    pixels.save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def f32(rng: np.random.Generator, *shape: int) -> Tensor:
    return Tensor.from_numpy((rng.standard_normal(shape) * 0.05).astype(np.float32))


def a1111(tensor: Tensor, name: str = "concept", step: int | None = 500) -> dict[str, object]:
    return {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": tensor},
        "name": name,
        "step": step,
        "sd_checkpoint": "cc6cb27103",
        "sd_checkpoint_name": "v1-5-pruned-emaonly",
    }


def tensors_in(value: object, path: str = "") -> dict[str, Tensor]:
    if isinstance(value, Tensor):
        return {path: value}
    found: dict[str, Tensor] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            found.update(tensors_in(item, f"{path}/{key}"))
    return found


def without_tensors(value: object) -> object:
    if isinstance(value, Tensor):
        return "<tensor>"
    if isinstance(value, dict):
        return {key: without_tensors(item) for key, item in value.items()}
    return value


def assert_same_payload(got: dict[str, object], want: dict[str, object]) -> None:
    assert without_tensors(got) == without_tensors(want)
    got_t, want_t = tensors_in(got), tensors_in(want)
    assert got_t.keys() == want_t.keys()
    for key, tensor in want_t.items():
        assert got_t[key].dtype == tensor.dtype, key
        assert got_t[key].shape == tensor.shape, key
        assert got_t[key].tobytes() == tensor.tobytes(), key


def assert_reference_agrees(ref: dict[str, Any], want: dict[str, object]) -> None:
    """The reference reader sees the same values as float32 (A1111's view)."""
    want_t = tensors_in(want)
    ref_t = _arrays_in(ref)
    assert ref_t.keys() == want_t.keys()
    for key, tensor in want_t.items():
        assert ref_t[key].shape == tensor.shape, key
        assert ref_t[key].tobytes() == tensor.to_float32().tobytes(), key


def _arrays_in(value: object, path: str = "") -> dict[str, np.ndarray]:
    if isinstance(value, np.ndarray):
        return {path: value}
    found: dict[str, np.ndarray] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            if key != "conceptlib_dtypes":
                found.update(_arrays_in(item, f"{path}/{key}"))
    return found


# --- the LCG -----------------------------------------------------------------------------------


def test_lcg_test_vectors() -> None:
    stream = _png._lcg_outputs(100_100)
    assert stream[:8].tolist() == [253, 242, 127, 44, 157, 27, 239, 133]
    assert int(stream[100:100_100].sum(dtype=np.int64)) == 12_731_374


def test_lcg_matches_step_by_step_generator() -> None:
    # Lengths around the jump-ahead doubling boundaries.
    for count in (0, 1, 2, 3, 4, 5, 1023, 1024, 1025, 4099):
        assert _png._lcg_outputs(count).tolist() == list(ref_lcg(count))


def test_reference_lcg_vectors() -> None:
    assert list(ref_lcg(8)) == [253, 242, 127, 44, 157, 27, 239, 133]
    assert sum(ref_lcg(100_100)[100:]) == 12_731_374


# --- round trips ---------------------------------------------------------------------------------


def _cases() -> dict[str, dict[str, object]]:
    rng = np.random.default_rng(1234)
    special = np.array(
        [
            0.0,
            -0.0,
            1e-45,
            -1e-45,
            1.1754942e-38,
            3.4028235e38,
            -3.4028235e38,
            np.inf,
            -np.inf,
            np.nan,
            1 / 3,
            -2.5,
        ],
        dtype=np.float32,
    )
    special_row = np.resize(special, 768).astype(np.float32)
    # JSON has one NaN token: its sign and payload bits are lost, so only the canonical NaN
    # can round-trip (A1111 has the same limit).
    negated = np.where(np.isnan(special_row), special_row, -special_row).astype(np.float32)
    half = (rng.standard_normal((3, 768)) * 0.05).astype(np.float16)
    bf16_bits = (f32(rng, 3, 768).array.view(np.uint32) >> 16).astype(np.uint16)
    return {
        "1x768": a1111(f32(rng, 1, 768)),
        "8x768": a1111(f32(rng, 8, 768), name="eight", step=60),
        "75x768": a1111(f32(rng, 75, 768), name="long", step=None),
        "4x1024": a1111(f32(rng, 4, 1024), name="sd2"),
        "sdxl": {
            "clip_l": f32(rng, 2, 768),
            "clip_g": f32(rng, 2, 1280),
            "name": "xl",
            "step": 1000,
        },
        "float16": a1111(Tensor.from_numpy(half), name="half"),
        "bfloat16": a1111(Tensor(bf16_bits, "bfloat16"), name="bf16"),
        "sdxl-mixed": {
            "clip_l": Tensor.from_numpy(half[:2]),
            "clip_g": Tensor(np.resize(bf16_bits, (2, 1280)), "bfloat16"),
        },
        "special-values": a1111(Tensor.from_numpy(np.stack([special_row, negated]))),
        "unicode-name": a1111(f32(rng, 1, 768), name="chat noir — 黒猫 ☕"),
    }


CASES = _cases()


@pytest.fixture(scope="module")
def encoded() -> dict[str, bytes]:
    return {name: encode_png(payload) for name, payload in CASES.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_text_container(case: str, encoded: dict[str, bytes]) -> None:
    payload, container = read_payload(f"{case}.png", encoded[case])
    assert container == "text"
    assert_same_payload(payload, CASES[case])


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_pixel_container(case: str, encoded: dict[str, bytes]) -> None:
    pixels_only = strip_text(encoded[case])
    assert b"tEXt" not in pixels_only
    payload, container = read_payload(f"{case}.png", pixels_only)
    assert container == "pixels"
    assert_same_payload(payload, CASES[case])


@pytest.mark.parametrize("case", list(CASES))
def test_reference_reader_decodes_both_containers(case: str, encoded: dict[str, bytes]) -> None:
    png = encoded[case]
    by_text = ref_read_text(png)
    by_pixels = ref_read_pixels(png)
    assert_reference_agrees(by_text, CASES[case])
    assert_reference_agrees(by_pixels, CASES[case])
    # Plain values (name, step, ...) read the same through both containers.
    want_meta = {k: v for k, v in CASES[case].items() if not isinstance(v, (dict, Tensor))}
    for ref in (by_text, by_pixels):
        assert {k: v for k, v in ref.items() if not isinstance(v, (dict, np.ndarray))} == want_meta


def test_image_layout_matches_spec(encoded: dict[str, bytes]) -> None:
    """One SD1 vector on a 512-high cover: Wb = 6 and width 526 (b.9's worked example)."""
    with Image.open(io.BytesIO(encoded["1x768"])) as image:
        assert image.mode == "RGB"
        assert image.size == (526, 512)
        pixels = np.array(image)
    assert not pixels[:, 6].any() and not pixels[:, 6 + 1 + 512].any()  # black separators
    kinds = [kind for kind, _ in png_chunks(encoded["1x768"])]
    assert kinds.count(b"tEXt") == 1 and kinds.index(b"tEXt") < kinds.index(b"IDAT")


def test_padding_quirk_and_cyclic_repetition() -> None:
    payload = CASES["8x768"]
    raw = _png._payload_json(payload)
    compressed = np.frombuffer(zlib.compress(raw, 9), dtype=np.uint8)
    n, h = compressed.size, 512
    m1 = n + (h - n % h)
    m = m1 + (3 * h - m1 % (3 * h))
    with Image.open(io.BytesIO(encode_png(payload))) as image:
        pixels = np.array(image)
    wb = m // (3 * h)
    assert pixels.shape[1] == 2 * wb + 2 + 512
    low = ref_xor(pixels[:, :wb] & 0x0F).reshape(-1)
    high = ref_xor(pixels[:, -wb:] & 0x0F).reshape(-1)
    data = (high << 4) | low
    assert data.tolist() == [int(compressed[k % n]) for k in range(m)]


def test_float32_only_payload_has_no_dtype_key(encoded: dict[str, bytes]) -> None:
    assert "conceptlib_dtypes" not in ref_read_text(encoded["8x768"])
    assert "conceptlib_dtypes" not in ref_read_text(encoded["sdxl"])


def test_other_dtypes_are_named_beside_their_values(encoded: dict[str, bytes]) -> None:
    """The dtype sits inside the tensor's object, where every A1111 reader ignores it, and no
    top-level key is written (A1111's SDXL branch calls .detach() on every top-level value)."""

    def raw_doc(png: bytes) -> dict[str, Any]:
        with Image.open(io.BytesIO(png)) as image:
            result: dict[str, Any] = json.loads(base64.b64decode(image.text["sd-ti-embedding"]))  # type: ignore[attr-defined]
        return result

    fp16 = raw_doc(encoded["float16"])
    assert "conceptlib_dtypes" not in fp16
    assert fp16["string_to_param"]["*"]["conceptlib_dtype"] == "float16"
    mixed = raw_doc(encoded["sdxl-mixed"])
    assert set(mixed) == {"clip_l", "clip_g"}
    assert mixed["clip_l"]["conceptlib_dtype"] == "float16"
    assert mixed["clip_g"]["conceptlib_dtype"] == "bfloat16"
    assert "conceptlib_dtype" not in raw_doc(encoded["sdxl"])["clip_l"]


def test_old_top_level_dtype_key_is_still_read() -> None:
    """PNGs from earlier conceptlib versions name dtypes in a top-level dict by path."""
    values = np.array([[0.5, -2.0, 65504.0]], dtype=np.float16)
    doc = {
        "string_to_param": {"*": {"TORCHTENSOR": values.astype(np.float32).tolist()}},
        "conceptlib_dtypes": {"string_to_param.*": "float16"},
    }
    png = png_with_text(
        Image.new("RGB", (8, 8), (9, 9, 9)), base64.b64encode(json.dumps(doc).encode()).decode()
    )
    got, _ = read_payload("old.png", png)
    tensor = got["string_to_param"]["*"]  # type: ignore[index]
    assert tensor.dtype == "float16" and tensor.array.tobytes() == values.tobytes()
    assert "conceptlib_dtypes" not in got


def test_float32_json_matches_a1111_number_format() -> None:
    """Numbers are written as A1111 writes them: repr of the float32 widened to float64."""
    value = np.float32(0.1)
    raw = _png._payload_json({"string_to_param": {"*": Tensor.from_numpy(np.array([[value]]))}})
    assert (
        raw
        == b'{"string_to_param": {"*": {"TORCHTENSOR": [[' + repr(float(value)).encode() + b"]]}}}"
    )


def test_odd_values_round_trip() -> None:
    payload: dict[str, object] = {
        "string_to_param": {"*": f32(np.random.default_rng(5), 2, 768)},
        "scalar": Tensor.from_numpy(np.array(1.5, dtype=np.float32)),
        "float64": Tensor.from_numpy(np.array([0.1, 1e300, -(2.0**-1074)])),
        "int64": Tensor.from_numpy(np.array([[1, -2], [2**62, 0]], dtype=np.int64)),
        "flags": Tensor.from_numpy(np.array([True, False])),
        "dotted.key": {"a~b": Tensor.from_numpy(np.ones(3, dtype=np.float16))},
        "plain": [
            1,
            2.5,
            None,
            "x",
            True,
            {"nested": [Tensor.from_numpy(np.zeros((1, 2), dtype=np.float16))]},
        ],
        "name": "odd",
    }
    png = encode_png(payload)
    for data, where in ((png, "text"), (strip_text(png), "pixels")):
        got, container = read_payload("odd.png", data)
        assert container == where
        assert_same_payload(
            {k: v for k, v in got.items() if k != "plain"},
            {k: v for k, v in payload.items() if k != "plain"},
        )
        plain = got["plain"]
        assert isinstance(plain, list) and plain[:5] == [1, 2.5, None, "x", True]
        nested = plain[5]["nested"][0]
        assert isinstance(nested, Tensor) and nested.dtype == "float16" and nested.shape == (1, 2)
        scalar = got["scalar"]
        assert isinstance(scalar, Tensor) and scalar.shape == () and scalar.item() == 1.5
    # A 0-d tensor is a bare number under TORCHTENSOR, as torch's tolist() gives it.
    assert ref_read_text(png)["scalar"] == np.float32(1.5)


def test_numpy_arrays_are_accepted_as_tensors() -> None:
    vectors = (np.arange(768, dtype=np.float32) / 1000).reshape(1, 768)
    got, _ = read_payload("np.png", encode_png({"string_to_param": {"*": vectors}, "name": "np"}))
    tensor = got["string_to_param"]["*"]  # type: ignore[index]
    assert isinstance(tensor, Tensor) and tensor.array.tobytes() == vectors.tobytes()


def test_dtype_key_from_input_payload_is_replaced() -> None:
    payload = a1111(f32(np.random.default_rng(9), 1, 768))
    stale = dict(payload, conceptlib_dtypes={"string_to_param.*": "float16"})
    assert "conceptlib_dtypes" not in ref_read_text(encode_png(stale))


def test_inexact_dtype_hint_falls_back_to_float32() -> None:
    """A hint that cannot hold the values (an edited file) is ignored: A1111's float32 wins."""
    doc = {
        "string_to_param": {"*": {"TORCHTENSOR": [[0.1, 0.2]]}},
        "conceptlib_dtypes": {"string_to_param.*": "float16"},
    }
    png = png_with_text(
        Image.new("RGB", (8, 8), (9, 9, 9)), base64.b64encode(json.dumps(doc).encode()).decode()
    )
    got, _ = read_payload("edited.png", png)
    tensor = got["string_to_param"]["*"]  # type: ignore[index]
    assert tensor.dtype == "float32" and tensor.array.tolist() == [
        [np.float32(0.1), np.float32(0.2)]
    ]
    assert "conceptlib_dtypes" not in got


def test_reader_accepts_non_conceptlib_json() -> None:
    """Integers in a tensor, extra keys beside TORCHTENSOR: A1111 loads them, so must we."""
    doc = {"string_to_param": {"*": {"TORCHTENSOR": [[0, 1, 2]], "extra": 1}}, "step": 3}
    png = png_with_text(
        Image.new("RGB", (8, 8), (9, 9, 9)), base64.b64encode(json.dumps(doc).encode()).decode()
    )
    got, container = read_payload("foreign.png", png)
    tensor = got["string_to_param"]["*"]  # type: ignore[index]
    assert (
        container == "text"
        and tensor.dtype == "float32"
        and tensor.array.tolist() == [[0.0, 1.0, 2.0]]
    )


# --- covers ----------------------------------------------------------------------------------------


def _hostile_cover() -> Image.Image:
    """Black borders, black and low-nibble-zero columns, a transparent RGBA corner."""
    pixels = np.full((300, 200, 4), 255, dtype=np.uint8)
    pixels[:, :, :3] = 0x40  # every low nibble zero
    pixels[:, 20:30] = (0, 0, 0, 255)
    pixels[:10] = 0
    pixels[-10:] = 0
    pixels[:, :5] = 0
    pixels[:, -5:] = 0
    return Image.fromarray(pixels)


@pytest.mark.parametrize(
    "cover",
    [
        _hostile_cover(),
        Image.new("L", (64, 64), 0),
        Image.new("RGB", (1, 2), (0, 0, 0)),
        Image.new("P", (100, 700)),
    ],
    ids=["hostile", "black-grey", "tiny", "palette"],
)
def test_any_cover_decodes(cover: Image.Image) -> None:
    payload = a1111(f32(np.random.default_rng(3), 4, 768))
    png = encode_png(payload, cover=cover)
    got, container = read_payload("cover.png", strip_text(png))
    assert container == "pixels"
    assert_same_payload(got, payload)
    assert_reference_agrees(ref_read_pixels(png), payload)
    with Image.open(io.BytesIO(png)) as image:
        middle = np.array(image)[:, image.width // 2 - cover.width // 2 :][:, : cover.width]
    # The cover changes by at most one level per channel.
    assert int(np.abs(middle.astype(int) - np.array(cover.convert("RGB")).astype(int)).max()) <= 1


def test_one_pixel_high_cover_is_refused() -> None:
    with pytest.raises(ValueError, match="too small"):
        encode_png(a1111(f32(np.random.default_rng(4), 1, 768)), cover=Image.new("RGB", (5, 1)))


def test_default_cover_caption() -> None:
    payload = a1111(f32(np.random.default_rng(6), 8, 768), step=60)
    assert _png._default_footer(payload) == "v1-5-pruned-emaonly   [cc6cb27103]   8v 60s"
    sdxl: dict[str, object] = {
        "clip_l": f32(np.random.default_rng(6), 3, 768),
        "clip_g": f32(np.random.default_rng(7), 3, 1280),
    }
    assert _png._default_footer(sdxl) == "3v"
    # Explicit title/footer (even very long ones) still give a 512x512 cover and a readable file.
    png = encode_png(payload, title="a very long title " * 10, footer="")
    with Image.open(io.BytesIO(png)) as image:
        assert image.height == 512
    assert read_payload("t.png", strip_text(png))[1] == "pixels"


def test_write_png_is_readable_from_disk(tmp_path: Path) -> None:
    payload = a1111(f32(np.random.default_rng(8), 2, 768))
    target = tmp_path / "sub" / "concept.png"
    write_png(payload, target, title="Concept")
    got, container = read_payload(target)
    assert container == "text"
    assert_same_payload(got, payload)
    assert [p.name for p in target.parent.iterdir()] == ["concept.png"]  # no temporary left over


@pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")
def test_lossless_webp_pixels_are_read() -> None:
    payload = a1111(f32(np.random.default_rng(10), 2, 768))
    with Image.open(io.BytesIO(encode_png(payload))) as image:
        out = io.BytesIO()
        image.save(out, format="WEBP", lossless=True)
    got, container = read_payload("concept.webp", out.getvalue())
    assert container == "pixels"
    assert_same_payload(got, payload)


# --- AUTOMATIC1111's own test image ------------------------------------------------------------


@pytest.fixture
def a1111_png() -> bytes:
    if not A1111_PNG.is_file():
        pytest.skip("../shared/data/embeddings is not present (a fresh clone)")
    return A1111_PNG.read_bytes()


def test_a1111_fixture_both_containers(a1111_png: bytes) -> None:
    by_text, where_text = read_payload(A1111_PNG)
    by_pixels, where_pixels = read_payload(A1111_PNG, strip_text(a1111_png))
    assert (where_text, where_pixels) == ("text", "pixels")
    for payload in (by_text, by_pixels):
        tensor = payload["string_to_param"]["*"]  # type: ignore[index]
        assert isinstance(tensor, Tensor) and tensor.dtype == "float32" and tensor.shape == (8, 768)
        assert payload["name"] == "rick" and payload["step"] == 60
        assert payload["string_to_token"] == {"*": 265}
        assert payload["sd_checkpoint"] is None and payload["sd_checkpoint_name"] is None
    assert by_text["string_to_param"]["*"].equal(by_pixels["string_to_param"]["*"])  # type: ignore[index]
    # The reference reader agrees on the real file too.
    ref = ref_read_pixels(a1111_png)
    assert ref["string_to_param"]["*"].tobytes() == by_text["string_to_param"]["*"].tobytes()  # type: ignore[index]


def test_a1111_fixture_rewrites_identically(a1111_png: bytes) -> None:
    """Our JSON is byte-identical to A1111's, and so are our data blocks up to the padding.

    The fixture pads with zeros where current A1111 code (and this writer) repeat the stream
    cyclically; readers stop at the end of the zlib stream, so both decode the same.
    """
    payload, _ = read_payload(A1111_PNG)
    with Image.open(io.BytesIO(a1111_png)) as image:
        raw = base64.b64decode(image.text["sd-ti-embedding"])  # type: ignore[attr-defined]
        original = np.array(image.convert("RGB"))
    assert _png._payload_json(payload) == raw
    ours = np.array(
        Image.open(
            io.BytesIO(encode_png(payload, cover=Image.new("RGB", (512, 512), (50, 50, 50))))
        )
    )
    assert ours.shape == original.shape == (512, 592, 3)
    n = len(zlib.compress(raw, 9))
    for cols in (slice(0, 39), slice(-39, None)):
        ours_data = ref_xor(ours[:, cols] & 0x0F).reshape(-1)
        theirs_data = ref_xor(original[:, cols] & 0x0F).reshape(-1)
        assert (ours_data[:n] == theirs_data[:n]).all()
        assert not theirs_data[n:].any()
        # The decoration (high nibbles) is A1111's pixel for pixel.
        assert ((ours[:, cols] & 0xF0) == (original[:, cols] & 0xF0)).all()


# --- bad input -----------------------------------------------------------------------------------


def _png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGB", (64, 48), (0, 0, 0)),
        Image.new("RGB", (64, 48), (128, 128, 128)),  # every column low-nibble zero
        Image.new("RGB", (64, 48), (255, 0, 0)),
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)),
        Image.fromarray(
            np.tile(
                np.array([[[0x30, 0x30, 0x30]], [[0x31, 0x32, 0x33]]], dtype=np.uint8), (8, 40, 1)
            )
        ),
    ],
    ids=["black", "grey", "red", "noise", "stripes"],
)
def test_plain_png_is_not_an_embedding(image: Image.Image) -> None:
    with pytest.raises(UnknownFormatError, match="PNG holds no embedding"):
        read_payload("photo.png", _png_bytes(image))


def test_not_an_image_at_all() -> None:
    with pytest.raises(UnknownFormatError):
        read_payload("notes.png", b"hello, this is text")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("!!!not base64 at all@@", "not valid base64"),
        (base64.b64encode(b"{not json").decode(), "does not hold a valid embedding payload"),
        (base64.b64encode(b"[1, 2, 3]").decode(), "not an object"),
        (base64.b64encode(b'{"x": {"TORCHTENSOR": [[1, 2], [3]]}}').decode(), "rectangular"),
        (base64.b64encode(b'{"x": {"TORCHTENSOR": ["a"]}}').decode(), "non-numbers"),
        (base64.b64encode(b"\xff\xfe\x00garbage").decode(), "valid embedding payload"),
    ],
    ids=["base64", "json", "not-object", "ragged", "strings", "binary"],
)
def test_bad_text_chunk(text: str, message: str) -> None:
    png = png_with_text(Image.new("RGB", (16, 16), (20, 30, 40)), text)
    with pytest.raises(CorruptFileError, match=message) as info:
        read_payload("bad.png", png)
    assert "sd-ti-embedding text chunk (container A)" in str(info.value)
    assert info.value.path == "bad.png"


def test_truncated_png() -> None:
    png = encode_png(a1111(f32(np.random.default_rng(11), 2, 768)))
    for cut in (len(png) // 2, len(png) - 20, 40, 12):
        with pytest.raises(CorruptFileError, match="damaged PNG"):
            read_payload("cut.png", png[:cut])


def test_damaged_pixel_container() -> None:
    png = strip_text(encode_png(a1111(f32(np.random.default_rng(12), 2, 768))))
    with Image.open(io.BytesIO(png)) as image:
        pixels = np.array(image)
    pixels[200:260, 2] ^= 0x05  # flip low-nibble bits inside the lo block, past the zlib header
    with pytest.raises(CorruptFileError, match=r"pixels \(container B\)"):
        read_payload("edited.png", _png_bytes(Image.fromarray(pixels)))


def test_decompression_bomb_in_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    # 75 zero vectors: ~290 kB of JSON that deflates to about 1 kB.
    zeros = Tensor.from_numpy(np.zeros((75, 768), dtype=np.float32))
    png = strip_text(encode_png(a1111(zeros)))
    monkeypatch.setattr(_png, "MAX_JSON_BYTES", 100_000)
    with pytest.raises(ResourceLimitError, match="inflates to more than 100,000 bytes"):
        read_payload("bomb.png", png)


def test_oversized_data_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    png = strip_text(encode_png(a1111(f32(np.random.default_rng(13), 8, 768))))
    monkeypatch.setattr(_png, "MAX_JSON_BYTES", 1000)
    with pytest.raises(ResourceLimitError, match="more than any embedding"):
        read_payload("huge.png", png)


def test_unsupported_payload_value() -> None:
    with pytest.raises(TypeError, match="cannot store a set"):
        encode_png({"string_to_param": {"*": f32(np.random.default_rng(1), 1, 768)}, "bad": {1, 2}})


# --- what AUTOMATIC1111 does with the PNGs conceptlib writes -------------------------------------


def a1111_decode(torch: Any, raw: bytes) -> Any:
    """modules/textual_inversion/image_embedding.py, ``EmbeddingDecoder.object_hook``: every JSON
    object holding TORCHTENSOR becomes ``torch.from_numpy(np.array(value))``, whatever else it
    holds; ``embedding_from_b64`` is json.loads of the base64-decoded text with that hook."""

    def hook(obj: dict[str, Any]) -> Any:
        return torch.from_numpy(np.array(obj["TORCHTENSOR"])) if "TORCHTENSOR" in obj else obj

    return json.loads(raw, object_hook=hook)


def a1111_load_image(torch: Any, png: bytes) -> Any:
    """modules/textual_inversion/textual_inversion.py, ``EmbeddingDatabase.load_from_file``, its
    image branch: the sd-ti-embedding text through Pillow's ``image.text`` if present, else
    ``extract_image_data_embed`` (the data blocks)."""
    with Image.open(io.BytesIO(png)) as image:
        text = getattr(image, "text", {})
        if "sd-ti-embedding" in text:
            return a1111_decode(torch, base64.b64decode(text["sd-ti-embedding"]))
    return a1111_decode(torch, ref_pixel_json(png))


def a1111_create_embedding(torch: Any, data: Any) -> tuple[Any, int, int]:
    """modules/textual_inversion/textual_inversion.py, ``create_embedding_from_data``: its three
    branches in its order, down to the ``.detach().to(float32)`` on every top-level value of an
    SDXL dict. Returns (vec, shape, vectors) as A1111 sets them on the Embedding."""
    if "string_to_param" in data:
        param_dict = data["string_to_param"]
        param_dict = getattr(param_dict, "_parameters", param_dict)
        assert len(param_dict) == 1, "embedding file has multiple terms in it"
        emb = next(iter(param_dict.items()))[1]
        vec = emb.detach().to(dtype=torch.float32)
        return vec, vec.shape[-1], vec.shape[0]
    if type(data) is dict and "clip_g" in data and "clip_l" in data:
        vec = {k: v.detach().to(dtype=torch.float32) for k, v in data.items()}
        return vec, data["clip_g"].shape[-1] + data["clip_l"].shape[-1], data["clip_g"].shape[0]
    if type(data) is dict and type(next(iter(data.values()))) is torch.Tensor:
        assert len(data.keys()) == 1, "embedding file has multiple terms in it"
        emb = next(iter(data.values()))
        if len(emb.shape) == 1:
            emb = emb.unsqueeze(0)
        vec = emb.detach().to(dtype=torch.float32)
        return vec, vec.shape[-1], vec.shape[0]
    raise Exception("Couldn't identify as neither textual inversion embedding nor diffuser concept.")


@pytest.mark.torch
@pytest.mark.parametrize("container", ["text", "pixels"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_every_png_conceptlib_writes_loads_in_a1111(
    tmp_path: Path, family: str, dtype: str, container: str
) -> None:
    torch = pytest.importorskip("torch")
    import factory
    from conceptlib.formats import read_bytes, write

    make = {"sd1": factory.sd1, "sd2": factory.sd2, "sdxl": factory.sdxl}[family]
    emb = make(3, dtype=dtype, seed=7, name="concept", step=1200, checkpoint_hash="a9263745")
    target = tmp_path / "concept.png"
    write(emb, target)
    png = target.read_bytes() if container == "text" else strip_text(target.read_bytes())

    data = a1111_load_image(torch, png)
    vec, shape, count = a1111_create_embedding(torch, data)

    assert count == 3 and shape == sum(emb.widths.values())
    got = vec if isinstance(vec, dict) else {next(iter(emb.vectors)): vec}
    assert set(got) == set(emb.vectors)
    for key, tensor in emb.vectors.items():
        assert got[key].dtype == torch.float32
        assert np.array_equal(got[key].numpy(), tensor.to_float32())
    if family != "sdxl":
        assert data["name"] == "concept" and data["step"] == 1200
    # And conceptlib reads its own file back with the dtype bit for bit.
    assert read_bytes(png, target).same_vectors(emb)


@pytest.mark.torch
def test_a1111_reimplementation_rejects_the_old_top_level_dtype_key() -> None:
    """The check above is faithful: the layout earlier conceptlib versions wrote fails in it with
    A1111's own error, "'dict' object has no attribute 'detach'"."""
    torch = pytest.importorskip("torch")
    doc = {
        "clip_g": {"TORCHTENSOR": [[0.5] * 1280]},
        "clip_l": {"TORCHTENSOR": [[0.5] * 768]},
        "conceptlib_dtypes": {"clip_g": "float16", "clip_l": "float16"},
    }
    png = png_with_text(
        Image.new("RGB", (8, 8), (9, 9, 9)), base64.b64encode(json.dumps(doc).encode()).decode()
    )
    with pytest.raises(AttributeError, match="'dict' object has no attribute 'detach'"):
        a1111_create_embedding(torch, a1111_load_image(torch, png))
    # conceptlib still reads such files, restoring the recorded dtype.
    got, _ = read_payload("old-sdxl.png", png)
    clip_g = got["clip_g"]
    assert isinstance(clip_g, Tensor) and clip_g.dtype == "float16"
