"""Every crasher the fuzzers found, rebuilt from scratch (issue 17).

Each test builds its file from a description (no binary fixtures) and asserts the contract:
a BadInputError naming the file on one line of fewer than 1,000 characters, or, where the file
is an embedding with one odd field, either that or a clean read. The docstring of each test
says what it found, where (``reader function``) and on which commit; the bombs (memory, time)
live in ``tests/test_memory_bounds.py`` with the same builders (``fuzzing.BOMBS``).

Found on 7240273 (the readers before the issue 17 hardening) unless said otherwise.
"""

from __future__ import annotations

import base64
import json
import pickle
import struct
from pathlib import Path

import fuzzing as fz
import pytest

from conceptlib.embedding import Embedding
from conceptlib.errors import BadInputError, ConceptlibError
from conceptlib.formats import _torchpickle as tp
from conceptlib.formats import read_bytes
from conceptlib.tensor import Tensor
from factory import vectors

VEC = vectors(1, 768)


def assert_refused(data: bytes, suffix: str, *, match: str | None = None) -> BadInputError:
    """The reader refuses ``data`` with a BadInputError naming the file in one bounded line."""
    path = f"/regress/input{suffix}"
    try:
        emb = read_bytes(data, path)
    except BadInputError as exc:
        fz.check_error_message(exc, path)
        if match is not None:
            assert match in str(exc), str(exc)
        return exc
    raise AssertionError(f"read, as {emb.source_format} {emb.width_label}, instead of being refused")


def assert_reads_or_refused(data: bytes, suffix: str) -> Embedding | BadInputError:
    """Either outcome is fine; any other exception, or a bad message, is the bug."""
    path = f"/regress/input{suffix}"
    try:
        return read_bytes(data, path)
    except BadInputError as exc:
        fz.check_error_message(exc, path)
        return exc
    except ConceptlibError as exc:  # pragma: no cover - a ConceptlibError that is not bad input
        raise AssertionError(f"{type(exc).__name__} is not a BadInputError: {exc}") from exc


def st_file(header: object, payload: bytes = bytes(3072)) -> bytes:
    return fz.safetensors_with_header(fz.dump_json(header), payload)


def st_raw(header_text: bytes, payload: bytes = bytes(3072)) -> bytes:
    return fz.safetensors_with_header(header_text, payload)


def one_tensor(**entry: object) -> dict[str, object]:
    return {"<tok>": {"dtype": "F32", "shape": [1, 768], "data_offsets": [0, 3072], **entry}}


def png_with_json(raw: bytes, how: str = "tEXt") -> bytes:
    return fz.tiny_png(extra=[fz.text_chunk(base64.b64encode(raw), how)])


A1111_JSON = {"string_to_token": {"*": 265}, "string_to_param": {"*": {"TORCHTENSOR": [[0.001] * 768]}}, "name": "n", "step": 5}


# --- safetensors (conceptlib/formats/_safetensors.py: read_header, read) ------------------------


def test_safetensors_5000_digit_integer() -> None:
    """ValueError 'Exceeds the limit (4300 digits) for integer string conversion' escaped
    ``json.loads`` in ``_safetensors.read_header`` (only JSONDecodeError was caught)."""
    assert_refused(st_raw(b'{"t":{"dtype":"F32","shape":[' + fz.BIG_DIGITS.encode() + b',768],"data_offsets":[0,3072]}}'), ".safetensors")
    assert_refused(st_raw(b'{"t":{"dtype":"F32","shape":[1,768],"data_offsets":[0,-' + fz.BIG_DIGITS.encode() + b"]}}"), ".safetensors")


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_safetensors_deeply_nested_header(depth: int) -> None:
    """RecursionError from ``json.loads`` in ``_safetensors.read_header``."""
    assert_refused(st_raw(b'{"t":' + b"[" * depth + b"]" * depth + b"}", b""), ".safetensors")


@pytest.mark.parametrize("dtype", [[], ["F32"], {}, {"a": 1}], ids=["list", "list-F32", "dict", "dict-a"])
def test_safetensors_dtype_that_is_not_a_string(dtype: object) -> None:
    """TypeError 'unhashable type' from ``SAFETENSORS_TO_DTYPE.get(code)`` in ``_safetensors.read``."""
    assert_refused(st_file(one_tensor(dtype=dtype)), ".safetensors")


def test_safetensors_boolean_dimension() -> None:
    """``shape: [true, 768]`` passed the ``isinstance(d, int)`` check (bool is an int) and
    numpy's reshape raised TypeError 'an integer is required' in ``Tensor.from_bytes``."""
    assert_refused(st_file(one_tensor(shape=[True, 768])), ".safetensors")


@pytest.mark.parametrize(
    ("field", "value"),
    [("dtype", "x" * 5000), ("dtype", "1" * 5000), ("shape", "x" * 5000), ("shape", [0] * 100_000), ("shape", [{"TORCHTENSOR": [[0.0] * 768]}])],
    ids=["long-dtype", "digit-dtype", "string-shape", "100k-dims", "object-dim"],
)
def test_safetensors_message_is_bounded(field: str, value: object) -> None:
    """The refusal quoted the whole hostile value: 5,000 to 300,000-character messages."""
    assert_refused(st_file(one_tensor(**{field: value})), ".safetensors")


def test_safetensors_message_is_one_line() -> None:
    """A dtype holding a newline and a terminal escape was printed raw: a two-line message."""
    assert_refused(st_file(one_tensor(dtype="a\nb\r\x1b[31mred")), ".safetensors")


def test_safetensors_long_tensor_name_message_is_bounded() -> None:
    """A 1 MB tensor name of the wrong width: UnknownEncoderError quoted all of it
    (``_interpret._as_vectors``: ``f"tensor {token!r}"``). Still found after the hardening
    began (working tree of 2026-12-06)."""
    header = {"k" * 1_000_000: {"dtype": "F32", "shape": [1, 7], "data_offsets": [0, 28]}}
    assert_refused(st_file(header, bytes(28)), ".safetensors")


@pytest.mark.parametrize(
    "value",
    ["[" * 100_000 + "]" * 100_000, '{"a": ' + fz.BIG_DIGITS + "}", '{"a": ' * 5000 + "1" + "}" * 5000],
    ids=["deep-list", "big-int", "deep-object"],
)
def test_safetensors_conceptlib_metadata_json(value: str) -> None:
    """The ``conceptlib.metadata`` string is JSON parsed by ``_interpret._from_metadata``, which
    caught only JSONDecodeError: RecursionError and the 4300-digit ValueError escaped."""
    header = {"__metadata__": {"format": "pt", "conceptlib.metadata": value}, **one_tensor()}
    assert_reads_or_refused(st_file(header), ".safetensors")


# --- the step field (conceptlib/formats/_interpret.py: _int_or_none) ----------------------------


@pytest.mark.parametrize("step", ["1" * 5000, "\u00b2", "\u00b2\u00b3", " 9" + "9" * 4999], ids=["5000-digits", "superscript-2", "superscripts", "padded-5000"])
def test_step_string_that_int_refuses(step: str) -> None:
    """``_int_or_none`` tested ``str.isdigit()`` then called ``int()``: '²' is a digit for
    isdigit but not for int (ValueError 'invalid literal'), and 5000 digits exceed Python's
    int conversion limit. The file is a fine embedding: reading it (step None) is best."""
    header = {"__metadata__": {"format": "pt", "conceptlib.step": step}, **one_tensor()}
    assert_reads_or_refused(st_file(header), ".safetensors")
    pt = tp.dumps({"string_to_token": {"*": 265}, "string_to_param": {"*": VEC}, "name": "n", "step": step})
    assert_reads_or_refused(pt, ".pt")
    assert_reads_or_refused(png_with_json(json.dumps({**A1111_JSON, "step": step}).encode()), ".png")


def test_step_integer_of_5000_digits_in_a_pickle() -> None:
    """A pickled int step of 10**5000 (LONG4): ValueError when it is turned into text."""
    pt = tp.dumps({"string_to_token": {"*": 265}, "string_to_param": {"*": VEC}, "name": "n", "step": 10**5000})
    assert_reads_or_refused(pt, ".pt")


# --- pickled keys and names (conceptlib/formats/_interpret.py) ----------------------------------


def test_pickle_key_of_5000_digits() -> None:
    """A dict key that is a 5000-digit int: ValueError from ``str(key)`` in ``interpret``
    (the token of a one-tensor dict, or the key list of a refusal)."""
    assert_reads_or_refused(tp.dumps({10**5000: VEC}), ".bin")
    assert_refused(tp.dumps({10**5000: 1}), ".bin")


def test_pickle_key_with_newline_in_refusal() -> None:
    """'holds no tensors (keys: string_to_token, a\\nb, ...)': the key list went into the
    message unescaped (two lines), and a 5,000-character key made it 5,100 characters."""
    assert_refused(tp.dumps({"string_to_token": {"*": 265}, "a\nb": {"*": VEC}, "name": "n"}), ".pt")
    assert_refused(tp.dumps({"string_to_token": {"*": 265}, "x" * 5000: {"*": VEC}, "name": "n"}), ".pt")


# --- torch pickles (conceptlib/formats/_torchpickle.py) -----------------------------------------


def _a1111_with_storage_pid(*, typename: str = "storage", storage: bytes = b"ctorch\nFloatStorage\n", key: str = "0", listed: str = "0", legacy: bool = False) -> bytes:
    """An A1111 dict whose one [1, 768] tensor has an edited persistent id (``storage`` is the
    opcodes pushing the storage type); a legacy file lists storage ``listed`` after it."""
    pid = b"(" + fz._op_str(typename) + storage + fz._op_str(key) + fz._op_str("cpu")
    pid += fz._op_int(768) + (b"N" if legacy else b"") + b"tQ"
    size, stride = fz.pickle_ops((1, 768), [], legacy=legacy), fz.pickle_ops((768, 1), [], legacy=legacy)
    tensor = b"ctorch._utils\n_rebuild_tensor_v2\n(" + pid + fz._op_int(0) + size + stride + b"\x89ccollections\nOrderedDict\n)RtR"
    pkl = b"\x80\x02}(" + fz._op_str("string_to_param") + b"}(" + fz._op_str("*") + tensor + b"u" + fz._op_str("name") + fz._op_str("n") + b"u."
    if not legacy:
        return fz.zip_pickle(pkl, {"0": bytes(3072)})
    head = b"".join(pickle.dumps(v, protocol=2) for v in (tp.LEGACY_MAGIC, tp.LEGACY_PROTOCOL, {"protocol_version": 1001}))
    return head + pkl + pickle.dumps([listed], protocol=2) + struct.pack("<q", 768) + bytes(3072)


def test_pickle_builder_is_valid() -> None:
    for legacy in (False, True):
        emb = read_bytes(_a1111_with_storage_pid(legacy=legacy), "/regress/ok.pt")
        assert emb.source_format == "a1111" and emb.num_vectors == 1


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("key", ["a\nb", "x" * 5000], ids=["newline", "5000-chars"])
def test_pickle_storage_key_in_message(legacy: bool, key: str) -> None:
    """'torch zip archive lacks the storage record data/<key>' / 'legacy torch file lists
    storage <key>': a key with a newline gave a two-line message, a 5,000-character key a
    5,060-character one (``_torchpickle._load_zip.on_persistent``, ``_load_legacy``). Still
    found on the working tree of 2026-12-06."""
    assert_refused(_a1111_with_storage_pid(key=key, legacy=legacy), ".pt")
    if legacy:
        assert_refused(_a1111_with_storage_pid(listed=key, legacy=True), ".pt")


def test_pickle_persistent_id_and_storage_type_in_message() -> None:
    """'unknown persistent id <typename>' and 'storage type <value> is not a torch storage'
    quoted 5,000-character values (``_torchpickle._parse_storage_pid``). Still found on the
    working tree of 2026-12-06."""
    assert_refused(_a1111_with_storage_pid(typename="x" * 5000), ".pt")
    assert_refused(_a1111_with_storage_pid(storage=fz._op_str("x" * 5000)), ".pt")


def test_pickle_tensor_metadata_is_not_printed_whole() -> None:
    """``_check_metadata`` built its message with ``{metadata!r}``: a 100,000-entry dict made a
    megabyte-long message (and a shared-reference tuple DAG an endless one: see the
    repr-dag-metadata-pt bomb)."""
    meta = b"}(" + b"".join(fz._op_str(f"k{i}") + b"\x88" for i in range(100_000)) + b"u"
    pkl = fz._tensor_record(768, (1, 768), (768, 1), metadata=meta)
    assert_refused(fz.zip_pickle(pkl, {"0": bytes(3072)}), ".pt")


# --- PNG (conceptlib/formats/_png.py: _read_text, read_payload) ---------------------------------


@pytest.mark.parametrize("how", ["tEXt", "zTXt", "iTXt"])
def test_png_payload_with_5000_digit_integer(how: str) -> None:
    """ValueError (int conversion limit) escaped ``json.loads`` in ``_png._parse_payload``:
    ``_read_text`` caught only JSONDecodeError, UnicodeDecodeError and RecursionError."""
    name = json.dumps({**A1111_JSON, "name": "x"}).replace('"x"', fz.BIG_DIGITS).encode()
    assert_reads_or_refused(png_with_json(name, how), ".png")  # a name that is not text: ignored or refused
    vector = json.dumps({**A1111_JSON, "string_to_param": {"*": {"TORCHTENSOR": ["x"]}}}).replace('"x"', fz.BIG_DIGITS).encode()
    assert_refused(png_with_json(vector, how), ".png")


def test_png_pixel_payload_with_5000_digit_integer() -> None:
    """The same ValueError from container B (pixels only)."""
    assert_refused(fz.pixel_png(b"[-" + fz.BIG_DIGITS.encode() + b"]"), ".png")


# --- text that the CLI prints (cli/formats.py, conceptlib/library/) ----------------------------


def test_lone_surrogate_token_through_the_cli(tmp_path: Path) -> None:
    """A safetensors tensor named '\\ud800' (a lone surrogate, legal in JSON): ``inspect``,
    ``inspect --json`` and ``add`` died with 'unexpected UnicodeEncodeError' (exit 1) when
    printing or storing it (``cli/formats.py`` output, ``conceptlib/library/``)."""
    folder = tmp_path
    path = folder / "surrogate.safetensors"
    path.write_bytes(st_raw(b'{"\\ud800":{"dtype":"F32","shape":[1,768],"data_offsets":[0,3072]}}'))
    fz.check_cli(fz.run_cli(["inspect", str(path)]))
    fz.check_cli(fz.run_cli(["inspect", "--json", str(path)]), json_out=True)
    fz.check_cli(fz.run_cli(["add", str(path), "--home", str(folder / "home")]))


def test_lone_surrogate_in_metadata_through_add(tmp_path: Path) -> None:
    """A safetensors ``__metadata__`` value (or key, or ``conceptlib.name``) holding a lone
    surrogate: ``add`` died with 'unexpected UnicodeEncodeError' (exit 1) storing it
    (``conceptlib/library/``). Found on the working tree of 2026-12-06, after the token case
    above was fixed."""
    header = {
        "__metadata__": {"format": "pt", "conceptlib.name": "\ud800", "note": "x\udcff"},
        "<m>": {"dtype": "F32", "shape": [1, 768], "data_offsets": [0, 3072]},
    }
    path = tmp_path / "meta.safetensors"
    path.write_bytes(fz.safetensors_with_header(fz.dump_json(header), bytes(3072)))
    fz.check_cli(fz.run_cli(["inspect", str(path)]))
    fz.check_cli(fz.run_cli(["add", str(path), "--home", str(tmp_path / "home")]))


# --- the CLI's JSON (cli/formats.py) --------------------------------------------------------------


def test_inspect_json_with_nan_vectors_is_strict_json(tmp_path: Path) -> None:
    """``inspect --json`` of a concept holding NaN/Inf printed bare ``NaN`` in its norms (not
    JSON: jq and browsers refuse it); found by the campaign on a legacy pickle."""
    import numpy as np

    values = np.zeros((2, 768), dtype=np.float32)
    values[0, 0], values[1, 1] = np.nan, np.inf
    path = tmp_path / "nan.pt"
    path.write_bytes(fz.legacy_pickle({"<nan>": Tensor(values, "float32")}))
    run = fz.run_cli(["inspect", "--json", str(path)])
    fz.check_cli(run, json_out=True)


def test_tensor_of_object_values_is_refused() -> None:
    """A TORCHTENSOR whose values are 2**70 (numpy object array) must not reach the writer or
    the JSON output as an object array."""
    raw = json.dumps({**A1111_JSON, "string_to_param": {"*": {"TORCHTENSOR": [[2**70] * 768]}}}).encode()
    outcome = assert_reads_or_refused(png_with_json(raw), ".png")
    if isinstance(outcome, Embedding):
        tensor = next(iter(outcome.vectors.values()))
        assert isinstance(tensor, Tensor) and tensor.dtype in ("float32", "float16", "bfloat16")
