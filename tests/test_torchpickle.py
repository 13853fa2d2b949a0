"""Tests for the torch-free torch.save reader/writer (conceptlib.formats._torchpickle)."""

from __future__ import annotations

import csv
import io
import pickle
import random
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conceptlib.errors import (
    ConceptlibError,
    CorruptFileError,
    EmbeddingFileError,
    UnknownFormatError,
)
from conceptlib.formats import _torchpickle as tp
from conceptlib.tensor import Tensor

EMBEDDINGS = Path(__file__).resolve().parents[2] / "shared" / "data" / "embeddings"


# ----- helpers ---------------------------------------------------------------------------------


def f32(*shape: int) -> Tensor:
    count = int(np.prod(shape)) if shape else 1
    return Tensor(np.arange(count, dtype=np.float32).reshape(shape) / 7 - 3, "float32")


def bf16(values: list[float]) -> Tensor:
    bits = (np.array(values, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
    return Tensor(bits, "bfloat16")


def assert_same(got: object, want: object, where: str = "") -> None:
    """Deep equality where tensors compare bit-exactly (dtype, shape, bytes)."""
    if isinstance(want, Tensor):
        assert isinstance(got, Tensor), where
        assert got.equal(want), f"{where}: {got} != {want}"
        assert got.array.flags.c_contiguous, where
    elif isinstance(want, dict):
        assert isinstance(got, dict) and type(got) is dict, where
        assert list(got) == list(want), where
        for key in want:
            assert_same(got[key], want[key], f"{where}/{key}")
    elif isinstance(want, (list, tuple)):
        assert type(got) is type(want) and len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            assert_same(a, b, f"{where}[{i}]")
    else:
        assert type(got) is type(want) and got == want, f"{where}: {got!r} != {want!r}"


def enc(value: object) -> bytes:
    """Opcodes that push a primitive or tuple (protocol 2, without PROTO and STOP)."""
    return pickle.dumps(value, protocol=2)[2:-1]


def zip_records(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def rezip(records: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, payload in records.items():
            archive.writestr(name, payload)
    return buffer.getvalue()


def data_offsets(data: bytes) -> dict[str, int]:
    """Where each record's bytes start, read from the local headers."""
    offsets = {}
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            start = info.header_offset
            name_len, extra_len = struct.unpack("<HH", data[start + 26 : start + 30])
            offsets[info.filename] = start + 30 + name_len + extra_len
    return offsets


SAMPLE: dict[str, Any] = {
    "string_to_token": {"*": 265},
    "string_to_param": {"*": f32(3, 768)},
    "name": "my-concept",
    "step": 1500,
    "sd_checkpoint": None,
    "sd_checkpoint_name": "v1-5-pruned",
    "f16": Tensor(np.linspace(-2, 2, 12, dtype=np.float16).reshape(3, 4), "float16"),
    "bf16": bf16([1.0, -2.5, 3.140625, 0.0]),
    "long0d": Tensor(np.array(49408, dtype=np.int64), "int64"),
    "float0d": Tensor(np.array(0.25, dtype=np.float32), "float32"),
    "longs": Tensor(np.array([1, -2, 2**40], dtype=np.int64), "int64"),
    "mask": Tensor(np.array([True, False, True]), "bool"),
    "empty": Tensor(np.zeros((0, 768), dtype=np.float32), "float32"),
    "nested": {"a": {"b": [1, 2.5, -3, "x", None, True, (4, 5)], "big": 2**80, "neg": -(2**40)}},
    "bytes": b"\x00\xffraw",
    "vec": f32(1024),
}


# ----- round trip (no torch needed) -----------------------------------------------------------


def test_round_trip_all_kinds() -> None:
    assert_same(tp.load("mem.pt", tp.dumps(SAMPLE)), SAMPLE)


@pytest.mark.parametrize(
    "tensor",
    [
        f32(768),
        f32(2, 768),
        f32(),
        bf16([0.5, 1.5]),
        SAMPLE["f16"],
        SAMPLE["long0d"],
        SAMPLE["mask"],
    ],
    ids=["1d", "2d", "0d", "bf16", "f16", "long0d", "bool"],
)
def test_round_trip_single_tensor(tensor: Tensor) -> None:
    got = tp.load("mem.pt", tp.dumps({"t": tensor}))
    assert isinstance(got, dict)
    assert_same(got["t"], tensor)


def test_numpy_inputs_are_written_as_tensors() -> None:
    got = tp.load("mem.pt", tp.dumps({"a": np.ones((2, 2), np.float32), "n": np.int64(5)}))
    assert isinstance(got, dict)
    assert_same(got["a"], Tensor(np.ones((2, 2), np.float32), "float32"))
    assert got["n"] == 5


def test_dumps_is_deterministic() -> None:
    assert tp.dumps(SAMPLE) == tp.dumps(SAMPLE)
    copy = {k: v for k, v in SAMPLE.items()}  # equal content, different objects
    assert tp.dumps(copy) == tp.dumps(SAMPLE)


def test_layout_matches_torch() -> None:
    data = tp.dumps({"a": f32(4), "b": f32(2, 2)})
    names = list(zip_records(data))
    assert names == [
        "archive/data.pkl",
        "archive/byteorder",
        "archive/data/0",
        "archive/data/1",
        "archive/version",
        "archive/.data/serialization_id",
    ]
    records = zip_records(data)
    assert records["archive/version"] == b"3\n"
    assert records["archive/byteorder"] == b"little"
    assert records["archive/data/1"] == f32(2, 2).tobytes()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
            assert info.date_time == (1980, 1, 1, 0, 0, 0)
    # Every record (and in particular every storage) starts at a multiple of 64: mmap=True.
    assert all(offset % 64 == 0 for offset in data_offsets(data).values())


def test_pickle_uses_torch_opcodes() -> None:
    pkl = zip_records(tp.dumps({"t": f32(2, 3)}))["archive/data.pkl"]
    ops = [(op.name, arg) for op, arg, _ in __import__("pickletools").genops(pkl)]
    assert ops[0] == ("PROTO", 2)
    globals_ = [arg for name, arg in ops if name == "GLOBAL"]
    assert globals_ == [
        "torch._utils _rebuild_tensor_v2",
        "torch FloatStorage",
        "collections OrderedDict",
    ]
    assert ("BINPERSID", None) in ops


def test_archive_name_and_dump(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "concept.pt"
    tp.dump({"t": f32(8)}, target, archive_name="concept")
    assert all(name.startswith("concept/") for name in zip_records(target.read_bytes()))
    assert_same(tp.load(target), {"t": f32(8)})
    assert [p.name for p in target.parent.iterdir()] == ["concept.pt"]  # no temp file left


def test_same_tensor_twice_shares_one_storage() -> None:
    t = f32(4)
    data = tp.dumps({"a": t, "b": t})
    assert sum(name.startswith("archive/data/") for name in zip_records(data)) == 1
    got = tp.load("mem.pt", data)
    assert_same(got, {"a": t, "b": t})


def test_writer_rejects_unsupported_values() -> None:
    with pytest.raises(TypeError):
        tp.dumps({"x": object()})
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(ValueError):
        tp.dumps(loop)
    with pytest.raises(ValueError):
        tp.dumps({}, archive_name="a/b")


# ----- reader details ---------------------------------------------------------------------------


def test_any_inner_folder_name() -> None:
    records = zip_records(tp.dumps({"t": f32(3)}))
    renamed = {name.replace("archive/", "negative_hand-neg/", 1): v for name, v in records.items()}
    assert_same(tp.load("mem.pt", rezip(renamed)), {"t": f32(3)})


def test_big_endian_archive_is_swapped() -> None:
    want = {"f": f32(2, 3), "b": bf16([1.0, -2.0]), "i": SAMPLE["longs"], "m": SAMPLE["mask"]}
    records = zip_records(tp.dumps(want))
    records["archive/byteorder"] = b"big"
    for key, tensor in zip(["0", "1", "2", "3"], want.values(), strict=True):
        records[f"archive/data/{key}"] = tensor.array.byteswap().tobytes()
    assert_same(tp.load("mem.pt", rezip(records)), want)


def _tensor_pickle(
    numel: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    *,
    offset: int = 0,
    storage: str = "FloatStorage",
    location: str = "cpu",
    legacy: bool = False,
) -> bytes:
    """A hand-made torch pickle {'t': tensor} with arbitrary (possibly lying) metadata."""
    pid = b"(" + enc("storage") + b"ctorch\n" + storage.encode() + b"\n" + enc("0") + enc(location)
    pid += enc(numel) + (b"N" if legacy else b"") + b"tQ"
    args = pid + enc(offset) + enc(size) + enc(stride) + b"\x89ccollections\nOrderedDict\n)R"
    return b"\x80\x02}" + enc("t") + b"ctorch._utils\n_rebuild_tensor_v2\n(" + args + b"tRs."


def _zip_with(pkl: bytes, storages: dict[str, bytes]) -> bytes:
    records = {"archive/data.pkl": pkl, "archive/version": b"3\n"}
    records.update({f"archive/data/{k}": v for k, v in storages.items()})
    return rezip(records)


def _legacy_with(pkl: bytes, storages: list[tuple[str, int, bytes]]) -> bytes:
    head = pickle.dumps(tp.LEGACY_MAGIC, protocol=2) + pickle.dumps(tp.LEGACY_PROTOCOL, protocol=2)
    head += pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2)
    tail = pickle.dumps([key for key, _, _ in storages], protocol=2)
    for _key, count, raw in storages:
        tail += struct.pack("<q", count) + raw
    return head + pkl + tail


VALUES = np.arange(100, dtype=np.float32)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize(
    ("size", "stride", "offset", "expect"),
    [
        ((10,), (1,), 20, VALUES[20:30]),  # a view into a larger storage
        ((5, 4), (1, 5), 0, VALUES[:20].reshape(4, 5).T),  # transposed (non-contiguous)
        ((3, 3), (20, 3), 7, VALUES[7 + np.add.outer(np.arange(3) * 20, np.arange(3) * 3)]),
        ((), (), 42, VALUES[42]),  # 0-d view at an offset
        ((2, 3), (0, 1), 5, np.broadcast_to(VALUES[5:8], (2, 3))),  # stride-0 broadcast
        ((0, 4), (4, 1), 100, np.zeros((0, 4), np.float32)),  # empty view at the very end
    ],
    ids=["slice", "transposed", "strided", "0d", "broadcast", "empty"],
)
def test_views_are_materialised_compactly(
    legacy: bool, size: tuple[int, ...], stride: tuple[int, ...], offset: int, expect: np.ndarray
) -> None:
    pkl = _tensor_pickle(100, size, stride, offset=offset, legacy=legacy)
    data = (
        _legacy_with(pkl, [("0", 100, VALUES.tobytes())])
        if legacy
        else _zip_with(pkl, {"0": VALUES.tobytes()})
    )
    got = tp.load("mem.pt", data)
    assert isinstance(got, dict)
    tensor = got["t"]
    assert isinstance(tensor, Tensor) and tensor.dtype == "float32"
    assert tensor.shape == size
    np.testing.assert_array_equal(tensor.array, np.asarray(expect))
    assert tensor.array.flags.c_contiguous and tensor.array.flags.owndata
    assert tensor.array.nbytes == int(np.prod(size)) * 4  # just the view, not the storage


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize(
    ("size", "stride", "offset"),
    [
        ((101,), (1,), 0),
        ((10,), (1,), 95),
        ((2, 60), (60, 1), 0),
        ((10,), (12,), 0),
        ((3,), (-1,), 5),
    ],
    ids=["too-long", "offset", "2d", "stride", "negative"],
)
def test_views_outside_the_storage_are_refused(
    legacy: bool, size: tuple[int, ...], stride: tuple[int, ...], offset: int
) -> None:
    pkl = _tensor_pickle(100, size, stride, offset=offset, legacy=legacy)
    data = (
        _legacy_with(pkl, [("0", 100, VALUES.tobytes())])
        if legacy
        else _zip_with(pkl, {"0": VALUES.tobytes()})
    )
    with pytest.raises(CorruptFileError):
        tp.load("mem.pt", data)


def test_cuda_location_is_read_to_cpu() -> None:
    pkl = _tensor_pickle(100, (100,), (1,), location="cuda:0")
    got = tp.load("mem.pt", _zip_with(pkl, {"0": VALUES.tobytes()}))
    assert isinstance(got, dict)
    np.testing.assert_array_equal(got["t"].array, VALUES)


def test_untyped_storage_with_rebuild_v3() -> None:
    # torch >= 2.1 writes _rebuild_tensor_v3(UntypedStorage, ..., dtype) for its newer dtypes.
    pid = (
        b"("
        + enc("storage")
        + b"ctorch\nUntypedStorage\n"
        + enc("0")
        + enc("cpu")
        + enc(400)
        + b"tQ"
    )
    args = (
        pid
        + enc(2)
        + enc((3,))
        + enc((1,))
        + b"\x89ccollections\nOrderedDict\n)R"
        + b"ctorch\nfloat32\n"
    )
    pkl = b"\x80\x02}" + enc("t") + b"ctorch._utils\n_rebuild_tensor_v3\n(" + args + b"tRs."
    got = tp.load("mem.pt", _zip_with(pkl, {"0": VALUES.tobytes()}))
    assert isinstance(got, dict)
    np.testing.assert_array_equal(got["t"].array, VALUES[2:5])


def test_numpy_arrays_in_a_pickle_become_tensors() -> None:
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    for protocol in (0, 2, 4):
        pkl = pickle.dumps(
            {"a": arr, "f": np.asfortranarray(arr), "s": np.float32(1.5), "i": np.int64(-3)},
            protocol=protocol,
        )
        got = tp.load("mem.pt", _zip_with(pkl, {}))
        assert isinstance(got, dict)
        assert_same(got["a"], Tensor(arr, "float32"))
        assert_same(got["f"], Tensor(arr, "float32"))
        assert got["s"] == 1.5 and got["i"] == -3


def test_ordered_dict_set_and_torch_dtype() -> None:
    from collections import OrderedDict

    pkl = pickle.dumps(OrderedDict([("z", 1), ("a", {1, 2})]), protocol=2)
    got = tp.load("mem.pt", _zip_with(pkl, {}))
    assert got == {"z": 1, "a": {1, 2}} and type(got) is dict and list(got) == ["z", "a"]
    pkl = b"\x80\x02}X\x05\x00\x00\x00dtypectorch\nbfloat16\ns."
    assert tp.load("mem.pt", _zip_with(pkl, {})) == {"dtype": "torch.bfloat16"}


# ----- damaged files -----------------------------------------------------------------------------


def test_empty_file() -> None:
    with pytest.raises(CorruptFileError, match="empty file"):
        tp.load("e.pt", b"")


def test_truncated_zip() -> None:
    data = tp.dumps(SAMPLE)
    with pytest.raises(
        CorruptFileError, match=r"truncated torch zip archive \(central directory missing\)"
    ) as info:
        tp.load("cut.pt", data[: len(data) // 2])
    assert info.value.path == "cut.pt"


def test_bad_zip_central_directory() -> None:
    data = bytearray(tp.dumps(SAMPLE))
    cd = data.rfind(b"PK\x01\x02")
    data[cd : cd + 4] = b"XXXX"
    with pytest.raises(CorruptFileError, match="zip"):
        tp.load("bad.pt", bytes(data))


def test_crc_mismatch() -> None:
    data = bytearray(tp.dumps({"t": f32(16)}))
    start = data_offsets(bytes(data))["archive/data/0"]
    data[start] ^= 0xFF
    with pytest.raises(CorruptFileError, match="CRC"):
        tp.load("crc.pt", bytes(data))


def test_missing_data_pkl() -> None:
    records = zip_records(tp.dumps({"t": f32(3)}))
    del records["archive/data.pkl"]
    with pytest.raises(CorruptFileError, match="data.pkl"):
        tp.load("m.pt", rezip(records))


def test_missing_storage_record() -> None:
    records = zip_records(tp.dumps({"t": f32(3)}))
    del records["archive/data/0"]
    with pytest.raises(CorruptFileError, match="data/0"):
        tp.load("m.pt", rezip(records))


def test_short_storage_record() -> None:
    records = zip_records(tp.dumps({"t": f32(3)}))
    records["archive/data/0"] = records["archive/data/0"][:8]
    with pytest.raises(CorruptFileError, match="declares 12 bytes"):
        tp.load("m.pt", rezip(records))


def test_malformed_pickle() -> None:
    records = zip_records(tp.dumps({"t": f32(3)}))
    records["archive/data.pkl"] = records["archive/data.pkl"][:-10]
    with pytest.raises(CorruptFileError, match="malformed pickle"):
        tp.load("m.pt", rezip(records))


def test_legacy_truncated() -> None:
    pkl = _tensor_pickle(100, (100,), (1,), legacy=True)
    data = _legacy_with(pkl, [("0", 100, VALUES.tobytes())])
    assert isinstance(tp.load("l.pt", data), dict)
    for cut in (len(data) - 1, len(data) - 400, len(data) - 404, 30, 3):
        with pytest.raises(CorruptFileError):
            tp.load("l.pt", data[:cut])


def test_plain_pickle_is_not_a_torch_file() -> None:
    with pytest.raises(CorruptFileError, match="magic number"):
        tp.load("p.pkl", pickle.dumps({"a": 1}, protocol=2))


def test_unknown_bytes() -> None:
    with pytest.raises(UnknownFormatError):
        tp.load("x.pt", b"hello world, not a torch file")


def test_unsupported_dtype_is_reported() -> None:
    pkl = _tensor_pickle(4, (4,), (1,), storage="ComplexFloatStorage")
    with pytest.raises(EmbeddingFileError):
        tp.load("c.pt", _zip_with(pkl, {"0": bytes(32)}))


def _mutations(data: bytes, rng: random.Random) -> list[bytes]:
    out = [data[:cut] for cut in range(0, len(data), max(1, len(data) // 300))]
    for _ in range(300):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        out.append(bytes(mutated))
    return out


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_fuzzed_files_raise_only_conceptlib_errors(legacy: bool) -> None:
    rng = random.Random(1234)
    if legacy:
        data = _legacy_with(
            _tensor_pickle(100, (10, 10), (10, 1), legacy=True), [("0", 100, VALUES.tobytes())]
        )
    else:
        data = tp.dumps(
            {"string_to_param": {"*": f32(2, 8)}, "name": "x", "step": 3, "t": SAMPLE["long0d"]}
        )
    for sample in _mutations(data, rng):
        try:
            tp.load("fuzz.pt", sample)
        except ConceptlibError:
            pass


# ----- the real files in ../shared/data/embeddings ------------------------------------------------


def _real_files() -> list[Path]:
    if not EMBEDDINGS.is_dir():
        return []
    return sorted(p for p in EMBEDDINGS.iterdir() if p.suffix in (".pt", ".bin"))


def _provenance() -> dict[str, str]:
    with (EMBEDDINGS / "PROVENANCE.tsv").open(newline="", encoding="utf-8") as handle:
        return {row["file"]: row["what it is"] for row in csv.DictReader(handle, delimiter="\t")}


def _lookup(obj: object, dotted: str) -> object:
    for part in dotted.split("."):
        assert isinstance(obj, dict) and part in obj, dotted
        obj = obj[part]
    return obj


needs_shared = pytest.mark.skipif(
    not EMBEDDINGS.is_dir(), reason="../shared/data/embeddings is absent"
)


@pytest.mark.shared
@needs_shared
@pytest.mark.parametrize("path", _real_files(), ids=lambda p: p.name)
def test_real_files_load_with_listed_shapes(path: Path) -> None:
    obj = tp.load(path)
    assert isinstance(obj, dict)
    what = _provenance()[path.name]
    if path.name.endswith("empty.pt"):
        assert obj == {}
        return
    tensors = re.findall(r"([\w*<>.-]+)=\(([\d, ]*)\) (\w+)", what.split("||")[-1])
    ints = re.findall(r"([\w*.]+)=int:(\d+)", what)
    # The LDM file is described from its opcodes: "string_to_token[*]=0-d int64 tensor" and
    # "string_to_param=torch.nn.ParameterDict{*: Parameter (1,768) float32".
    tensors += [(f"{k}.*", "", d) for k, d in re.findall(r"(\w+)\[\*\]=0-d (\w+) tensor", what)]
    tensors += [
        (f"{k}.*", s, d)
        for k, s, d in re.findall(
            r"(\w+)=torch\.nn\.ParameterDict\{\*: Parameter \(([\d,]+)\) (\w+)", what
        )
    ]
    if not tensors:  # "{token: tensor(768,)} float32"
        assert re.search(r"tensor\(768,\)\} float32", what), what
        assert len(obj) == 1
        tensors = [(next(iter(obj)), "768,", "float32")]
    for key, shape, dtype in tensors:
        value = _lookup(obj, key)
        assert isinstance(value, Tensor), key
        assert value.shape == tuple(int(n) for n in shape.split(",") if n.strip()), key
        assert value.dtype == dtype, key
        assert np.isfinite(value.to_float32()).all()
    for key, number in ints:
        assert _lookup(obj, key) == int(number)


@pytest.mark.shared
@needs_shared
def test_ldm_embeddings_pt_parameter_dict() -> None:
    path = EMBEDDINGS / "eastonhill+stable-diffusion+embeddings.pt"
    obj = tp.load(path)
    assert isinstance(obj, dict) and list(obj) == ["string_to_token", "string_to_param"]
    token = obj["string_to_token"]["*"]
    param = obj["string_to_param"]["*"]
    assert type(obj["string_to_param"]) is dict and list(obj["string_to_param"]) == ["*"]
    assert isinstance(token, Tensor) and token.dtype == "int64" and token.shape == ()
    assert isinstance(param, Tensor) and param.dtype == "float32" and param.shape == (1, 768)
    # The token is element 1 of a 77-long LongStorage (the tokenized prompt).
    storage = zip_records(path.read_bytes())["archive/data/0"]
    assert len(storage) == 77 * 8
    assert token.item() == struct.unpack("<q", storage[8:16])[0]


# ----- cross-checks with real torch ------------------------------------------------------------


def _from_torch(value: Any) -> Any:
    torch = pytest.importorskip("torch")
    if isinstance(value, torch.Tensor):
        t = value.detach().contiguous()
        if t.dtype == torch.bfloat16:
            return Tensor(t.view(torch.int16).numpy().view(np.uint16), "bfloat16")
        return Tensor.from_numpy(t.numpy())
    if isinstance(value, torch.nn.ParameterDict):
        return {k: _from_torch(v) for k, v in value._parameters.items()}
    if isinstance(value, dict):
        return {k: _from_torch(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_torch(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_from_torch(v) for v in value)
    return value


def _to_torch(value: Any) -> Any:
    torch = pytest.importorskip("torch")
    if isinstance(value, Tensor):
        if value.dtype == "bfloat16":
            return torch.from_numpy(value.array.view(np.int16).copy()).view(torch.bfloat16)
        return torch.from_numpy(value.array.copy())
    if isinstance(value, dict):
        return {k: _to_torch(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_torch(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_to_torch(v) for v in value)
    return value


def _torch_state() -> dict[str, Any]:
    torch = pytest.importorskip("torch")
    from collections import OrderedDict

    big = torch.arange(49409 * 8, dtype=torch.float32).reshape(49409, 8)
    params = torch.nn.ParameterDict({"*": torch.nn.Parameter(torch.randn(1, 8))})
    return {
        "string_to_token": {"*": big[1, 3].long()},
        "view": big[49408],  # a small view of a large storage
        "transposed": torch.arange(12.0).reshape(3, 4).t(),
        "strided": torch.arange(40.0).reshape(4, 10)[:, ::3],
        "param": torch.nn.Parameter(torch.randn(2, 8)),
        "ordered": OrderedDict([("b", torch.ones(2)), ("a", 3)]),
        "param_dict": params,
        "bf16": torch.randn(3, 5).to(torch.bfloat16),
        "f16": torch.randn(4).half(),
        "long0d": torch.tensor(265),
        "mask": torch.tensor([True, False]),
        "meta": {"name": "x", "step": 12, "none": None, "list": [1, 2.5, "s"]},
    }


def _expected_from_torch(state: dict[str, Any]) -> Any:
    expected = _from_torch(state)
    expected["ordered"] = dict(expected["ordered"])
    return expected


@pytest.mark.torch
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_reads_what_torch_save_writes(tmp_path: Path, zip_format: bool) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    state = _torch_state()
    path = tmp_path / "state.pt"
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    got = tp.load(path)
    assert_same(got, _expected_from_torch(state))
    assert isinstance(got, dict)
    assert got["view"].array.nbytes == 8 * 4  # not the 49409 x 8 storage


def _relocate(data: bytes, zip_format: bool) -> bytes:
    """Pretend the tensors were saved on a GPU: 'cpu' -> 'cuda:0' in the pickle."""
    old = pickle.dumps("cpu", protocol=2)[2:-3]  # just BINUNICODE 'cpu' (no BINPUT, no STOP)
    new = pickle.dumps("cuda:0", protocol=2)[2:-3]
    if not zip_format:
        assert data.count(old) == 1
        return data.replace(old, new)
    records = zip_records(data)
    name = next(n for n in records if n.endswith("data.pkl"))
    assert records[name].count(old) == 1
    records[name] = records[name].replace(old, new)
    return rezip(records)


@pytest.mark.torch
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_reads_cuda_location(tmp_path: Path, zip_format: bool) -> None:
    torch = pytest.importorskip("torch")
    state = {"emb": torch.randn(2, 768), "bf": torch.randn(768).to(torch.bfloat16)}
    buffer = io.BytesIO()
    torch.save(state, buffer, _use_new_zipfile_serialization=zip_format)
    data = _relocate(buffer.getvalue(), zip_format)
    path = tmp_path / "cuda.pt"
    path.write_bytes(data)
    assert_same(tp.load(path), _from_torch(state))
    # torch itself agrees (it maps cuda:0 to the CPU when told to).
    reloaded = torch.load(path, map_location="cpu", weights_only=True)
    assert_same(_from_torch(reloaded), _from_torch(state))


@pytest.mark.torch
@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mmap"])
def test_torch_loads_what_dump_writes(tmp_path: Path, mmap: bool) -> None:
    torch = pytest.importorskip("torch")
    path = tmp_path / "ours.pt"
    tp.dump(SAMPLE, path)
    loaded = torch.load(path, weights_only=True, mmap=mmap)
    assert_same(_from_torch(loaded), SAMPLE)
    assert loaded["long0d"].dtype == torch.int64 and loaded["long0d"].dim() == 0
    assert loaded["bf16"].dtype == torch.bfloat16
    assert loaded["mask"].dtype == torch.bool


@pytest.mark.torch
def test_pickle_is_byte_identical_to_torch_save() -> None:
    torch = pytest.importorskip("torch")
    state = {
        k: SAMPLE[k]
        for k in (
            "string_to_token",
            "string_to_param",
            "name",
            "step",
            "sd_checkpoint",
            "bf16",
            "long0d",
        )
    }
    buffer = io.BytesIO()
    torch.save(_to_torch(state), buffer)
    theirs = zip_records(buffer.getvalue())["archive/data.pkl"]
    ours = zip_records(tp.dumps(state))["archive/data.pkl"]
    assert ours == theirs


@pytest.mark.torch
@pytest.mark.shared
@needs_shared
@pytest.mark.parametrize("path", _real_files(), ids=lambda p: p.name)
def test_real_files_match_torch(path: Path) -> None:
    torch = pytest.importorskip("torch")
    with torch.serialization.safe_globals([torch.nn.ParameterDict]):
        want = torch.load(path, weights_only=True, map_location="cpu")
    assert_same(tp.load(path), _from_torch(want))
