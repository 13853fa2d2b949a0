"""Files built to cost far more than their size are read or refused in O(size) time and memory.

Every hostile file here is written byte by byte: pickle opcodes by hand, zip archives by
:func:`zip_archive` (so sizes, CRCs and offsets can lie), nothing from torch. Each bomb is
refused with a one-line :class:`~conceptlib.errors.BadInputError` naming the file, in well
under a second, and, where memory is what the bomb attacks, within a bounded tracemalloc peak.
The shared-reference cases that are *not* bombs (the same big value referenced many times)
must load, cheaply.
"""

from __future__ import annotations

import io
import pickle
import struct
import time
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conceptlib.errors import (
    BadInputError,
    CorruptFileError,
    ResourceLimitError,
    UnknownFormatError,
)
from conceptlib.formats import _torchpickle as tp
from conceptlib.formats import detect_container, read_bytes
from conceptlib.tensor import Tensor

P61 = 2**61 - 1  # hash(n) == n % P61 for ints: n and n + P61 collide in every dict

# ----- pickle opcodes, by hand -------------------------------------------------------------


def enc(value: object) -> bytes:
    """Opcodes pushing a primitive or a tuple of them (Python's protocol-2 pickler, no PROTO/STOP)."""
    return pickle.dumps(value, protocol=2)[2:-1]


def text(value: str) -> bytes:
    """BINUNICODE pushing ``value``, without a memo entry."""
    data = value.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(data)) + data


def glob(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def put(index: int) -> bytes:
    return b"r" + struct.pack("<I", index)  # LONG_BINPUT


def get(index: int) -> bytes:
    return b"j" + struct.pack("<I", index)  # LONG_BINGET


def whole(body: bytes) -> bytes:
    return b"\x80\x02" + body + b"."


def storage_pid(key: str, numel: int, storage: str = "FloatStorage", legacy: bool = False) -> bytes:
    """BINPERSID of ``('storage', torch.<storage>, key, 'cpu', numel)`` (+ ``None`` view, legacy)."""
    return (
        b"("
        + text("storage")
        + glob("torch", storage)
        + text(key)
        + text("cpu")
        + enc(numel)
        + (b"N" if legacy else b"")
        + b"tQ"
    )


def tensor_ops(
    pid: bytes, size: tuple[int, ...], stride: tuple[int, ...], offset: int = 0
) -> bytes:
    """``torch._utils._rebuild_tensor_v2(<pid>, offset, size, stride, False, OrderedDict())``."""
    return (
        glob("torch._utils", "_rebuild_tensor_v2")
        + b"("
        + pid
        + enc(offset)
        + enc(size)
        + enc(stride)
        + b"\x89"
        + glob("collections", "OrderedDict")
        + b")RtR"
    )


def numpy_ops(
    arr: np.ndarray, module: str = "numpy.core.multiarray", fortran: bool = False
) -> bytes:
    """A numpy array exactly as numpy 1.x pickles it at protocol 2 (what torch <= 1.13 wrote).

    ``_reconstruct(ndarray, (0,), b'b')``, then BUILD with ``(1, shape, dtype, fortran, data)``,
    the dtype being ``dtype(spec, False, True)`` with its own BUILD, the bytes being
    ``_codecs.encode(latin-1 text, 'latin1')`` (in Fortran order for a Fortran array).
    """
    latin = arr.tobytes(order="F" if fortran else "C").decode("latin-1")
    dtype_state = b"(" + enc(3) + text("<") + b"NNN" + enc(-1) + enc(-1) + enc(0) + b"tb"
    return (
        glob(module, "_reconstruct")
        + glob("numpy", "ndarray")
        + enc((0,))
        + glob("_codecs", "encode")
        + text("b")
        + text("latin1")
        + b"\x86R\x87R("
        + enc(1)
        + enc(tuple(arr.shape))
        + glob("numpy", "dtype")
        + text(arr.dtype.str[1:])
        + b"\x89\x88\x87R"
        + dtype_state
        + (b"\x88" if fortran else b"\x89")
        + glob("_codecs", "encode")
        + text(latin)
        + text("latin1")
        + b"\x86Rtb"
    )


def mps_tensor_ops(arr: np.ndarray, dtype: str = "float32", device: str = "mps") -> bytes:
    """``torch._utils._rebuild_device_tensor_from_numpy(<arr>, torch.<dtype>, device, False)``."""
    return (
        glob("torch._utils", "_rebuild_device_tensor_from_numpy")
        + b"("
        + numpy_ops(arr)
        + glob("torch", dtype)
        + text(device)
        + b"\x89tR"
    )


def one_key(key: str, value_ops: bytes) -> bytes:
    """A protocol-2 pickle of ``{key: <value>}``."""
    return whole(b"}" + text(key) + value_ops + b"s")


# ----- zip archives, by hand ---------------------------------------------------------------


@dataclass
class Entry:
    """One zip record; the sizes and CRC the headers claim default to the truth."""

    name: str
    data: bytes  # the bytes after the local header (deflated already when method is 8)
    method: int = 0
    size: int | None = None  # uncompressed size claimed
    crc: int | None = None
    header_of: str | None = None  # point the directory entry at another entry's local header


def deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


def zip_archive(
    entries: list[Entry], *, count: int | None = None, pad_directory: bytes = b""
) -> bytes:
    """A zip file: local headers, central directory, end record (``count`` may lie)."""
    out = bytearray()
    offsets: dict[str, int] = {}
    for entry in entries:
        if entry.header_of is not None:
            continue
        size = len(entry.data) if entry.size is None else entry.size
        crc = zlib.crc32(entry.data) if entry.crc is None else entry.crc
        name = entry.name.encode()
        offsets[entry.name] = len(out)
        out += struct.pack(
            "<4sHHHHHLLLHH", b"PK\x03\x04", 20, 0, entry.method, 0, 0x21, crc,
            len(entry.data), size, len(name), 0,
        )  # fmt: skip
        out += name + entry.data
    directory = bytearray()
    for entry in entries:
        source = next(e for e in entries if e.name == (entry.header_of or entry.name))
        size = len(source.data) if source.size is None else source.size
        crc = zlib.crc32(source.data) if source.crc is None else source.crc
        name = entry.name.encode()
        directory += struct.pack(
            "<4sHHHHHHLLLHHHHHLL", b"PK\x01\x02", 20, 20, 0, source.method, 0, 0x21, crc,
            len(source.data), size, len(name), 0, 0, 0, 0, 0, offsets[source.name],
        )  # fmt: skip
        directory += name
    directory += pad_directory
    total = len(entries) if count is None else count
    start = len(out)
    out += directory
    out += struct.pack(
        "<4sHHHHLLH", b"PK\x05\x06", 0, 0, total & 0xFFFF, total & 0xFFFF, len(directory), start, 0
    )
    return bytes(out)


def torch_zip(pkl: bytes, storages: dict[str, bytes] | None = None) -> bytes:
    """A minimal honest torch zip around ``pkl``."""
    entries = [Entry("archive/data.pkl", pkl), Entry("archive/version", b"3\n")]
    entries += [Entry(f"archive/data/{k}", v) for k, v in (storages or {}).items()]
    return zip_archive(entries)


def legacy_file(pkl: bytes, storages: Sequence[tuple[str, bytes]] = ()) -> bytes:
    """The legacy layout around the main pickle ``pkl``; storages are float32 bytes."""
    head = pickle.dumps(tp.LEGACY_MAGIC, protocol=2) + pickle.dumps(tp.LEGACY_PROTOCOL, protocol=2)
    head += pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2)
    tail = pickle.dumps([key for key, _ in storages], protocol=2)
    for _key, raw in storages:
        tail += struct.pack("<q", len(raw) // 4) + raw
    return head + pkl + tail


# ----- the bombs ---------------------------------------------------------------------------


def bomb_deflate_lying_size() -> bytes:
    # The directory says data.pkl is 1,000 bytes; the stream inflates to 64 MB of zeros.
    stream = deflate(b"\0" * (64 << 20))
    return zip_archive([Entry("archive/data.pkl", stream, method=8, size=1000, crc=0)])


def bomb_deflate_huge_storage() -> bytes:
    # A 1 GiB storage, declared consistently by pickle and directory, from a tiny stream.
    numel = 2**28
    pkl = one_key("t", tensor_ops(storage_pid("0", numel), (numel,), (1,)))
    stream = deflate(b"\0" * 1024)
    return zip_archive(
        [
            Entry("archive/data.pkl", pkl),
            Entry("archive/data/0", stream, method=8, size=numel * 4, crc=0),
        ]
    )


def bomb_deflate_data_pkl() -> bytes:
    # An honest 60 MB data.pkl deflated to 60 KB: within MAX_PICKLE_BYTES, over the budget.
    pkl = b"\x80\x02N" + b"N0" * (30 << 20) + b"."
    return zip_archive(
        [Entry("archive/data.pkl", deflate(pkl), method=8, size=len(pkl), crc=zlib.crc32(pkl))]
    )


def bomb_many_entries() -> bytes:
    entries = [Entry("archive/data.pkl", whole(b"N"))]
    entries += [Entry(f"{i:x}", b"", header_of="archive/data.pkl") for i in range(40_000)]
    return zip_archive(entries)


def bomb_entry_count_lies() -> bytes:
    # The end record claims 2 entries, the directory holds 60,000 (1-character names).
    entries = [Entry("archive/data.pkl", whole(b"N"))]
    entries += [Entry(chr(48 + i % 40), b"", header_of="archive/data.pkl") for i in range(60_000)]
    return zip_archive(entries, count=2)


def bomb_zip64_claims() -> bytes:
    data = bytearray(torch_zip(whole(b"N")))
    end = data.rfind(b"PK\x05\x06")
    record = struct.pack("<4sQHHLLQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, 2**60, 2**60, 2**62, 0)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, end, 1)
    data[end:end] = record + locator
    return bytes(data)


def bomb_overlapping_records() -> bytes:
    # 60 storage records, all the same 1 MB local header; each tensor reads one float of its own.
    raw = b"\0" * (1 << 20)
    body = b"}"
    for i in range(60):
        body += text(f"t{i}") + tensor_ops(storage_pid(str(i), len(raw) // 4), (1,), (1,)) + b"s"
    entries = [Entry("archive/data.pkl", whole(body)), Entry("archive/data/0", raw)]
    entries += [Entry(f"archive/data/{i}", b"", header_of="archive/data/0") for i in range(1, 60)]
    return zip_archive(entries)


def bomb_broadcast() -> bytes:
    # One float viewed as 10**5 x 10**5: 40 GB from a 1 KB file.
    pkl = one_key("t", tensor_ops(storage_pid("0", 1), (10**5, 10**5), (0, 0)))
    return torch_zip(pkl, {"0": b"\0" * 4})


def bomb_repeated_views() -> bytes:
    # One 1 MB storage viewed whole 100 times: 100 MB of copies from 1 MB.
    numel = 1 << 18
    view = tensor_ops(storage_pid("0", numel), (numel,), (1,))
    return torch_zip(whole(b"](" + view * 100 + b"e"), {"0": b"\0" * (numel * 4)})


def bomb_opcode_flood() -> bytes:
    return torch_zip(whole(b"](" + b"N" * 300_000 + b"e"))


def bomb_mark_flood() -> bytes:
    return torch_zip(whole(b"(" * 100_000))


def bomb_deep_tuple_key() -> bytes:
    # (((...None...),),) 100,000 levels deep, then used as a dict key: hashing it recurses in C.
    return torch_zip(whole(b"}N" + b"\x85" * 100_000 + b"Ns"))


def bomb_tuple_hash_dag() -> bytes:
    # t[0] = (0,), t[i] = (t[i-1], t[i-1]): 7 opcodes a level, 2**60 parts to hash as a key.
    body = enc(0) + b"\x85" + put(0) + b"0"
    for i in range(1, 61):
        body += get(i - 1) + get(i - 1) + b"\x86" + put(i) + b"0"
    return torch_zip(whole(body + b"}" + get(60) + b"Ns"))


def bomb_hash_collisions() -> bytes:
    # 50,000 int keys that all share one hash value: quadratic dict insertion.
    items = b"".join(enc(P61 * k + 7) + b"N" for k in range(1, 50_001))
    return torch_zip(whole(b"}(" + items + b"u"))


def bomb_long_text_int() -> bytes:
    # Protocol 0: LONG with 100,000 digits (int() of it is quadratic, or refused by Python).
    return torch_zip(b"L" + b"7" * 100_000 + b"L\n.")


def bomb_long4() -> bytes:
    return torch_zip(whole(b"\x8b" + struct.pack("<i", 1 << 20) + b"\x01" * (1 << 20)))


def bomb_repeated_encode() -> bytes:
    # _codecs.encode of one memoised 1 MB text, 2,000 times: 2 GB of new bytes from 1 MB.
    head = (
        glob("_codecs", "encode")
        + put(0)
        + text("\xe9" * (1 << 20))
        + put(1)
        + text("latin1")
        + put(2)
    )
    calls = (get(0) + get(1) + get(2) + b"\x86R") * 2000
    return torch_zip(whole(head + b"](" + calls + b"e"))


def bomb_shared_numpy_data() -> bytes:
    # One memoised 1 MB text as the data of 200 numpy arrays: 200 MB of tensors from 1 MB.
    arr_head = glob("numpy.core.multiarray", "_reconstruct") + glob("numpy", "ndarray") + enc((0,))
    arr_head += glob("_codecs", "encode") + text("b") + text("latin1") + b"\x86R\x87R"
    dtype = glob("numpy", "dtype") + text("u1") + b"\x89\x88\x87R"
    body = text("\x01" * (1 << 20)) + put(1000) + b"0](" + dtype + put(1001)
    one = arr_head + b"(" + enc(1) + enc((1 << 20,)) + get(1001) + b"\x89" + get(1000) + b"tb"
    body += b"0" + one * 200
    return torch_zip(whole(body + b"e"))


def bomb_parameter_dict_keys() -> bytes:
    # One 100,000-key _keys dict shared by 20 ParameterDicts: rebuilding each walks it again.
    keys = b"}(" + b"".join(text(f"k{i}") + b"N" for i in range(100_000)) + b"u"
    state = b"}" + text("_keys") + keys + b"s" + put(0)
    stub = glob("torch.nn.modules.container", "ParameterDict") + b")\x81" + get(0) + b"b"
    return torch_zip(whole(state + b"0](" + stub * 20 + b"e"))


def shared_string_refs() -> bytes:
    # Not a bomb: one 1 MB string referenced 100,000 times is 100,000 references, not 100 GB.
    return torch_zip(whole(text("x" * (1 << 20)) + put(1000) + b"0](" + get(1000) * 100_000 + b"e"))


def empty_set_flood() -> bytes:
    # Not a bomb either, but the most memory per byte an opcode can ask for (a set is 216
    # bytes), as many times as MAX_PICKLE_OPCODES allows.
    return torch_zip(whole(b"](" + b"\x8f" * (tp.MAX_PICKLE_OPCODES - 8) + b"e"))


def largest_mps_concept() -> bytes:
    # The largest concept accepted, saved from an Apple GPU: its bytes are inside the pickle.
    values = np.random.default_rng(0).standard_normal(
        (tp.MAX_CONCEPT_VECTORS, tp.MAX_ENCODER_WIDTH)
    )
    return torch_zip(one_key("emb", mps_tensor_ops(values, "float64")))


LOADS: dict[str, Callable[[], bytes]] = {
    "shared-string-refs": shared_string_refs,
    "empty-set-flood": empty_set_flood,
    "largest-mps-concept": largest_mps_concept,
}

BOMBS: dict[str, Callable[[], bytes]] = {
    "deflate-lying-size": bomb_deflate_lying_size,
    "deflate-huge-storage": bomb_deflate_huge_storage,
    "deflate-data-pkl": bomb_deflate_data_pkl,
    "many-entries": bomb_many_entries,
    "entry-count-lies": bomb_entry_count_lies,
    "zip64-claims": bomb_zip64_claims,
    "overlapping-records": bomb_overlapping_records,
    "broadcast": bomb_broadcast,
    "repeated-views": bomb_repeated_views,
    "opcode-flood": bomb_opcode_flood,
    "mark-flood": bomb_mark_flood,
    "deep-tuple-key": bomb_deep_tuple_key,
    "tuple-hash-dag": bomb_tuple_hash_dag,
    "hash-collisions": bomb_hash_collisions,
    "long-text-int": bomb_long_text_int,
    "long4": bomb_long4,
    "repeated-encode": bomb_repeated_encode,
    "shared-numpy-data": bomb_shared_numpy_data,
    "parameter-dict-keys": bomb_parameter_dict_keys,
}


# ----- helpers for the tests -------------------------------------------------------------------


@contextmanager
def bounded(seconds: float = 2.0, peak_mb: float | None = None) -> Iterator[None]:
    """Fail unless the block ends within ``seconds`` and, if given, ``peak_mb`` of new memory."""
    if peak_mb is not None:
        tracemalloc.start()
    started = time.perf_counter()
    try:
        yield
        took = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1] if peak_mb is not None else 0
    finally:
        if peak_mb is not None:
            tracemalloc.stop()
    assert took < seconds, f"took {took:.2f} s"
    if peak_mb is not None:
        assert peak < peak_mb * 2**20, f"peak {peak / 2**20:.0f} MB"


def refused(data: bytes, error: type[BadInputError], match: str) -> BadInputError:
    """Load ``data`` as ``bomb.pt``; it must fail with ``error`` on one line naming the file."""
    with pytest.raises(error, match=match) as info:
        tp.load("bomb.pt", data)
    assert info.value.path == "bomb.pt"
    assert "\n" not in str(info.value) and len(str(info.value)) < 1000
    return info.value


# (error, message, tracemalloc peak in MB or None when time is what the bomb attacks)
EXPECTED: dict[str, tuple[type[BadInputError], str, float | None]] = {
    "deflate-lying-size": (CorruptFileError, "does not inflate to the 1,000 bytes", 8),
    "deflate-huge-storage": (ResourceLimitError, r"would take 1,073,741,824 bytes", 8),
    "deflate-data-pkl": (ResourceLimitError, "once inflated", 8),
    "many-entries": (ResourceLimitError, "lists 40,001 entries", 8),
    "entry-count-lies": (ResourceLimitError, "more than 16,384 entries", None),
    "zip64-claims": (ResourceLimitError, "lists 1,152,921,504,606,846,976 entries", 8),
    "overlapping-records": (ResourceLimitError, "once inflated", 8),
    "broadcast": (ResourceLimitError, r"shape \(100000, 100000\) would take 40,000,000,000", 8),
    "repeated-views": (ResourceLimitError, "at most the file's size plus 32,768,000 bytes", 48),
    "opcode-flood": (ResourceLimitError, "more than 262,144 opcodes", None),
    "mark-flood": (CorruptFileError, "nested deeper than 200 levels", None),
    "deep-tuple-key": (CorruptFileError, "a key nested deeper than 200 levels", None),
    "tuple-hash-dag": (ResourceLimitError, "more than 1,048,576 steps", None),
    "hash-collisions": (ResourceLimitError, "more than 8 keys with one hash value", None),
    "long-text-int": (ResourceLimitError, "an integer of more than 256 digits", 8),
    "long4": (ResourceLimitError, "an integer of 1,048,576 bytes", 8),
    "repeated-encode": (ResourceLimitError, "copies more than", 48),
    "shared-numpy-data": (ResourceLimitError, "uint8 tensor of shape", 48),
    "parameter-dict-keys": (ResourceLimitError, "more than 1,048,576 steps", None),
}


# ----- the bombs are refused --------------------------------------------------------------------


@pytest.mark.parametrize("name", list(BOMBS))
def test_bomb_is_refused_fast_and_small(name: str) -> None:
    data = BOMBS[name]()
    assert len(data) < 3_000_000
    error, match, peak_mb = EXPECTED[name]
    with bounded(2.0, peak_mb):
        refused(data, error, match)


@pytest.mark.parametrize("name", ["opcode-flood", "long-text-int", "repeated-encode", "mark-flood"])
def test_pickle_bombs_in_the_legacy_container(name: str) -> None:
    # The same pickles as the main pickle of a legacy file: one budget for all five pickles.
    pkl = zipfile.ZipFile(io.BytesIO(BOMBS[name]())).read("archive/data.pkl")
    error, match, _ = EXPECTED[name]
    with bounded(2.0):
        refused(legacy_file(pkl), error, match)


def test_legacy_pickle_larger_than_the_cap_is_refused() -> None:
    # Nothing bounds a legacy pickle but the file: a string of MAX_PICKLE_BYTES + 1 bytes.
    big = (
        b"\x80\x02\x8d"
        + struct.pack("<Q", tp.MAX_PICKLE_BYTES + 1)
        + b"x" * (tp.MAX_PICKLE_BYTES + 1)
    )
    refused(legacy_file(big + b"."), ResourceLimitError, "larger than 66,584,576 bytes")


def test_nothing_is_inflated_past_the_directory_size() -> None:
    # zipfile would inflate the whole 64 MB stream before noticing; only 1,001 bytes are.
    data = bomb_deflate_lying_size()
    with bounded(1.0, peak_mb=1):
        refused(data, CorruptFileError, "does not inflate")


def test_honest_deflated_records_still_load() -> None:
    values = np.arange(24, dtype=np.float32)
    pkl = one_key("t", tensor_ops(storage_pid("0", 24), (4, 6), (6, 1)))
    data = zip_archive(
        [
            Entry("archive/data.pkl", deflate(pkl), method=8, size=len(pkl), crc=zlib.crc32(pkl)),
            Entry(
                "archive/data/0",
                deflate(values.tobytes()),
                method=8,
                size=96,
                crc=zlib.crc32(values.tobytes()),
            ),
        ]
    )
    got = tp.load("deflated.pt", data)
    assert isinstance(got, dict)
    np.testing.assert_array_equal(got["t"].array, values.reshape(4, 6))


def test_truncated_deflate_stream_is_refused() -> None:
    pkl = whole(b"N")
    stream = deflate(pkl)[:-2]
    data = zip_archive(
        [Entry("archive/data.pkl", stream, method=8, size=len(pkl), crc=zlib.crc32(pkl))]
    )
    refused(data, CorruptFileError, "does not inflate")


def test_other_compression_methods_are_refused() -> None:
    data = zip_archive([Entry("archive/data.pkl", b"BZh9", method=12, size=3)])
    refused(data, tp.EmbeddingFileError, "compression method 12")


def test_storage_record_must_hold_exactly_what_is_declared() -> None:
    # torch writes each storage as exactly its bytes; a longer record is damage.
    pkl = one_key("t", tensor_ops(storage_pid("0", 4), (4,), (1,)))
    refused(
        torch_zip(pkl, {"0": b"\0" * 20}),
        CorruptFileError,
        "declares 16 bytes but the archive holds 20",
    )


def test_byteorder_record_is_capped() -> None:
    data = zip_archive(
        [Entry("archive/data.pkl", whole(b"N")), Entry("archive/byteorder", b"little" * 100)]
    )
    refused(data, ResourceLimitError, "byteorder is 600 bytes, more than the 64")


def test_the_largest_concept_may_be_a_broadcast_and_no_larger() -> None:
    # 1,000 x 4,096 float64 from one stored double is exactly MAX_EXPANSION_BYTES of tensor.
    width = tp.MAX_ENCODER_WIDTH
    for rows, ok in ((tp.MAX_CONCEPT_VECTORS, True), (tp.MAX_CONCEPT_VECTORS + 1, False)):
        pkl = one_key("t", tensor_ops(storage_pid("0", 1, "DoubleStorage"), (rows, width), (0, 0)))
        data = torch_zip(pkl, {"0": struct.pack("<d", 0.5)})
        if ok:
            got = tp.load("max.pt", data)
            assert isinstance(got, dict) and got["t"].shape == (rows, width)
            assert got["t"].array.nbytes == tp.MAX_EXPANSION_BYTES
        else:
            refused(data, ResourceLimitError, r"float64 tensor of shape \(1001, 4096\)")


def test_expansion_is_shared_by_all_tensors_of_a_file() -> None:
    # Two broadcasts of 20 MB each: each fits alone, together they pass the allowance.
    shape = (1280, 4096)
    view = tensor_ops(storage_pid("0", 1), shape, (0, 0))
    one = torch_zip(one_key("a", view), {"0": b"\0" * 4})
    assert tp.load("one.pt", one)["a"].shape == shape  # type: ignore[index]
    two = torch_zip(
        whole(b"}" + text("a") + view + b"s" + text("b") + view + b"s"), {"0": b"\0" * 4}
    )
    refused(two, ResourceLimitError, "would take 20,971,520 bytes")


# ----- shared references are cheap, not refused -------------------------------------------------


def test_one_big_string_referenced_many_times_loads_cheaply() -> None:
    data = shared_string_refs()
    with bounded(2.0, peak_mb=8):
        got = tp.load("shared.pt", data)
    assert isinstance(got, list) and len(got) == 100_000
    assert len({id(item) for item in got}) == 1


def test_shared_containers_are_rebuilt_once() -> None:
    # l0 = [], l1 = [l0, l0], ... l60: 2**60 leaves if copied naively, 120 references here.
    body = b"]" + put(0) + b"0"
    for i in range(1, 61):
        body += b"(" + get(i - 1) + get(i - 1) + b"l" + put(i) + b"0"
    with bounded(1.0):
        got = tp.load("dag.pt", torch_zip(whole(body + get(60))))
    assert isinstance(got, list) and got[0] is got[1]


def test_a_few_colliding_keys_are_fine() -> None:
    # -1 and -2 share a hash in CPython, and MAX_SAME_HASH equal-hash keys are allowed.
    keys = [-1, -2] + [P61 * k + 3 for k in range(1, tp.MAX_SAME_HASH)]
    items = b"".join(enc(k) + enc(i) for i, k in enumerate(keys))
    got = tp.load("ok.pt", torch_zip(whole(b"}(" + items + b"u")))
    assert got == {k: i for i, k in enumerate(keys)}


COLLIDING = [enc(P61 * k + 5) for k in range(1, 20)]


@pytest.mark.parametrize(
    "body",
    [
        b"}(" + b"".join(k + b"N" for k in COLLIDING) + b"u",  # SETITEMS
        b"}" + b"".join(k + b"Ns" for k in COLLIDING),  # SETITEM
        b"(" + b"".join(k + b"N" for k in COLLIDING) + b"d",  # DICT
        glob("collections", "OrderedDict")  # OrderedDict([(k, None), ...]), protocols 0-1
        + b"]"
        + b"".join(k + b"N\x86a" for k in COLLIDING)
        + b"\x85R",
        b"\x8f(" + b"".join(COLLIDING) + b"\x90",  # ADDITEMS
        b"(" + b"".join(COLLIDING) + b"\x91",  # FROZENSET
        glob("builtins", "set") + b"(" + b"".join(COLLIDING) + b"l\x85R",  # set([...])
    ],
    ids=[
        "setitems",
        "setitem",
        "dict",
        "ordereddict-pairs",
        "additems",
        "frozenset",
        "set-of-list",
    ],
)
def test_hash_collisions_are_refused_on_every_insertion_path(body: bytes) -> None:
    refused(torch_zip(whole(body)), ResourceLimitError, "one hash value")


# ----- tensors saved from devices without storage (Apple mps, xla) -------------------------------


MPS_VALUES: dict[str, np.ndarray] = {
    "float32": np.linspace(-2, 2, 2 * 768, dtype=np.float32).reshape(2, 768),
    "float16": np.linspace(-1, 1, 12, dtype=np.float16).reshape(3, 4),
    "float64": np.arange(5, dtype=np.float64) / 3,
    "int64": np.array([265, -1, 2**40], dtype=np.int64),
    "bool": np.array([True, False, True]),
    "uint8": np.arange(7, dtype=np.uint8),
}


@pytest.mark.parametrize("container", ["zip", "legacy"])
@pytest.mark.parametrize("dtype", list(MPS_VALUES))
def test_mps_numpy_tensors_are_rebuilt(container: str, dtype: str) -> None:
    values = MPS_VALUES[dtype]
    pkl = one_key("emb", mps_tensor_ops(values, dtype))
    data = torch_zip(pkl) if container == "zip" else legacy_file(pkl)
    got = tp.load("mps.pt", data)
    assert isinstance(got, dict)
    assert got["emb"].equal(Tensor.from_numpy(values))
    assert got["emb"].array.flags.c_contiguous


def test_mps_file_reads_as_an_embedding() -> None:
    values = MPS_VALUES["float32"]
    emb = read_bytes(torch_zip(one_key("<mps>", mps_tensor_ops(values))), "mps.bin")
    assert emb.token == "<mps>"
    np.testing.assert_array_equal(emb.vectors["clip_l"].array, values)


def test_mps_numpy2_and_fortran_arrays() -> None:
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    ops = numpy_ops(values, module="numpy._core.multiarray", fortran=True)
    call = glob("torch._utils", "_rebuild_device_tensor_from_numpy") + b"(" + ops
    call += glob("torch", "float32") + text("mps") + b"\x89tR"
    got = tp.load("f.pt", torch_zip(one_key("t", call)))
    assert isinstance(got, dict)
    np.testing.assert_array_equal(got["t"].array, values)
    assert got["t"].array.flags.c_contiguous


def test_mps_bfloat16_is_rounded_from_float32_like_torch() -> None:
    # torch <= 1.13 saved an mps bfloat16 tensor as float32 numpy data plus torch.bfloat16.
    bits = np.array(
        [0x3F800000, 0x3F808000, 0x3F818000, 0x3F80C000, 0xBF7FFFFF, 0x7F7FFFFF, 0x7F800000,
         0xFF800000, 0x7FC00001, 0xFFA00000, 0x00000001],
        dtype=np.uint32,
    )  # fmt: skip
    values = bits.view(np.float32)
    got = tp.load("bf.pt", torch_zip(one_key("t", mps_tensor_ops(values, "bfloat16"))))
    assert isinstance(got, dict) and got["t"].dtype == "bfloat16"
    want = [0x3F80, 0x3F80, 0x3F82, 0x3F81, 0xBF80, 0x7F80, 0x7F80, 0xFF80, 0x7FC0, 0xFFE0, 0x0000]
    assert got["t"].array.tolist() == want


def test_mps_dtype_mismatch_is_refused() -> None:
    pkl = one_key("t", mps_tensor_ops(MPS_VALUES["int64"], "float32"))
    refused(torch_zip(pkl), CorruptFileError, "numpy int64 data rebuilt as a torch float32 tensor")


def test_cpu_tensor_device_rebuild() -> None:
    # torch >= 2.2: _rebuild_device_tensor_from_cpu_tensor(cpu_tensor, dtype, device, grad).
    values = np.arange(6, dtype=np.float32)
    inner = tensor_ops(storage_pid("0", 6), (2, 3), (3, 1))
    call = glob("torch._utils", "_rebuild_device_tensor_from_cpu_tensor") + b"(" + inner
    call += glob("torch", "float32") + text("xla:0") + b"\x89tR"
    got = tp.load("xla.pt", torch_zip(one_key("t", call), {"0": values.tobytes()}))
    assert isinstance(got, dict)
    np.testing.assert_array_equal(got["t"].array, values.reshape(2, 3))


def test_build_on_a_rebuilt_array_is_refused() -> None:
    # _frombuffer's result is a stand-in; a BUILD must not plant attributes on it or a tensor.
    frombuffer = glob("numpy.core.numeric", "_frombuffer") + b"(" + enc(b"\0" * 4)
    frombuffer += (
        glob("numpy", "dtype") + text("f4") + b"\x89\x88\x87R" + enc((1,)) + text("C") + b"tR"
    )
    body = frombuffer + b"}" + text("array") + enc(1) + b"sb"
    refused(torch_zip(whole(body)), CorruptFileError, "bad numpy array state")
    for target in (b"]", b"}", text("s"), glob("torch", "float32")):
        refused(torch_zip(whole(target + b"}b")), CorruptFileError, "BUILD on")


# ----- legacy pickles of protocols 0 and 1 -------------------------------------------------------


LEGACY_VALUES = np.arange(2 * 768, dtype=np.float32) / 7 - 2.5


def legacy_protocol0_file() -> bytes:
    """What ``torch.save(..., _use_new_zipfile_serialization=False, pickle_protocol=0)`` writes."""
    sys_info = {
        "protocol_version": 1001,
        "little_endian": True,
        "type_sizes": {"short": 2, "int": 4, "long": 4},
    }
    main = (
        b"(dp0\nVemb\np1\nctorch._utils\n_rebuild_tensor_v2\np2\n"
        b"(P('storage', <class 'torch.FloatStorage'>, '94354987691792', 'cpu', 1536, None)\n"
        b"I0\n(I2\nI768\ntp3\n(I768\nI1\ntp4\nI00\nccollections\nOrderedDict\np5\n(tRp6\ntp7\n"
        b"Rp8\ns."
    )
    return (
        pickle.dumps(tp.LEGACY_MAGIC, protocol=0)
        + pickle.dumps(tp.LEGACY_PROTOCOL, protocol=0)
        + pickle.dumps(sys_info, protocol=0)
        + main
        + pickle.dumps(["94354987691792"], protocol=0)
        + struct.pack("<q", 1536)
        + LEGACY_VALUES.tobytes()
    )


def legacy_protocol1_file() -> bytes:
    """The same at protocol 1: binary opcodes, but no PROTO, TUPLE2 or NEWFALSE."""
    storage = glob("torch", "FloatStorage") + text("7") + text("cpu")
    pid = b"(" + text("storage") + storage + b"M\x00\x06NtQ"  # BININT2 1536
    shape = b"(K\x02M\x00\x03t(M\x00\x03K\x01t"  # (2, 768), (768, 1)
    tensor = glob("torch._utils", "_rebuild_tensor_v2") + b"(" + pid + b"K\x00" + shape
    tensor += b"I00\n" + glob("collections", "OrderedDict") + b")RtR"
    main = b"}(" + text("emb") + tensor + b"u."
    return (
        pickle.dumps(tp.LEGACY_MAGIC, protocol=1)
        + pickle.dumps(tp.LEGACY_PROTOCOL, protocol=1)
        + pickle.dumps({"protocol_version": 1001}, protocol=1)
        + main
        + pickle.dumps(["7"], protocol=1)
        + struct.pack("<q", 1536)
        + LEGACY_VALUES.tobytes()
    )


@pytest.mark.parametrize("build", [legacy_protocol0_file, legacy_protocol1_file], ids=["p0", "p1"])
def test_legacy_protocols_0_and_1_are_detected_and_read(build: Callable[[], bytes]) -> None:
    data = build()
    assert data.startswith(tp.LEGACY_TEXT_MAGIC)
    assert detect_container(data) == "pickle-legacy"
    got = tp.load("old.pt", data)
    assert isinstance(got, dict) and list(got) == ["emb"]
    np.testing.assert_array_equal(got["emb"].array, LEGACY_VALUES.reshape(2, 768))
    emb = read_bytes(data, "old.pt")
    np.testing.assert_array_equal(emb.vectors["clip_l"].array, LEGACY_VALUES.reshape(2, 768))


@pytest.mark.parametrize(
    "data",
    [
        b"Lorem ipsum dolor sit amet\n",
        b"L119547037146038801333356",  # the magic digits alone
        b"L119547037146038801333356L\nmore text",  # no STOP: not a pickle
        b"L119547037146038801333357L\n.",  # another number
        b"I119547037146038801333356\n.",
        b"(dp0\nVa\np1\nI1\ns.",  # a plain protocol-0 pickle
    ],
)
def test_text_is_not_taken_for_a_legacy_pickle(data: bytes) -> None:
    assert detect_container(data) == "unknown"
    with pytest.raises(UnknownFormatError):
        tp.load("notes.txt", data)


def test_text_persistent_ids_are_parsed_strictly() -> None:
    data = legacy_protocol0_file()
    for bad in (
        b"P('storage', <class 'os.system'>, '94354987691792', 'cpu', 6, None)\n",
        b"P('storage', <class 'torch.FloatStorage'>, '9435498769179', 'cpu', -6, None)\n",
        b"P" + b"(" * 600 + b"\n",
    ):
        start = data.index(b"P('storage'")
        hostile = data[:start] + bad + data[data.index(b"\n", start) + 1 :]
        with pytest.raises((CorruptFileError, tp.UnsafePickleError)) as info:
            tp.load("p0.pt", hostile)
        assert len(str(info.value)) < 1000


# ----- messages stay one bounded line -----------------------------------------------------------


def test_forbidden_global_with_a_huge_name_is_reported_briefly() -> None:
    name = "evil\x1b[2J" + "x" * 1_000_000
    error = refused(torch_zip(whole(glob("os", name) + b")R")), tp.UnsafePickleError, "os.evil")
    assert "\\x1b" in str(error) and "…(+" in str(error)


BIG = "k" * 100_000


@pytest.mark.parametrize(
    "pkl",
    [
        one_key("t", tensor_ops(storage_pid(BIG, 1), (1,), (1,))),
        one_key(
            "t",
            glob("torch._utils", "_rebuild_tensor_v2")
            + b"("
            + storage_pid("0", 1)
            + enc(0)
            + enc((1,))
            + enc((1,))
            + b"\x89N}"
            + text(BIG)
            + b"\x88stR",
        ),
        whole(glob("torch._tensor", "_rebuild_from_type_v2") + b"(](" + b"N" * 50_000 + b"eNNNtR"),
        whole(glob("_codecs", "encode") + text("x") + text(BIG) + b"\x86R"),
        whole(glob("numpy", "dtype") + b"(" + text(BIG) + b"tR"),
    ],
    ids=["storage-key", "tensor-metadata", "rebuild-from-type", "encoding", "numpy-dtype"],
)
def test_huge_values_in_messages_are_bounded(pkl: bytes) -> None:
    with pytest.raises(BadInputError) as info:
        tp.load("m.pt", torch_zip(pkl, {"0": b"\0" * 4}))
    assert len(str(info.value)) < 1000 and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "body",
    [
        b"X\x02\x00\x00\x00\xff\xfe",  # BINUNICODE that is not UTF-8
        b"cos\xff\nsystem\n",  # GLOBAL that is not UTF-8
        b"I" + b"9" * 5000 + b"\n",  # INT past Python's digit limit
        b"p" + b"9" * 30 + b"\n",  # PUT far past the opcodes
        b"K\x01K\x02\x93",  # STACK_GLOBAL of ints
        b"N\x85N\x85\x86\x85]\x86(\x94\x94\x94\x8f\x91",  # set of a tuple holding a list
        b"\x88\x82\x01",  # EXT1
        b"(" * 10 + b"u",  # SETITEMS without a dict
    ],
)
def test_hostile_opcodes_become_one_line_errors(body: bytes) -> None:
    with pytest.raises(BadInputError) as info:
        tp.load("o.pt", torch_zip(whole(body)))
    message = str(info.value)
    assert info.value.path == "o.pt" and "\n" not in message and len(message) < 1000


def test_state_dict_metadata_attribute_is_dropped() -> None:
    # torch pickles model.state_dict() as an OrderedDict plus BUILD({'_metadata': ...}).
    values = np.arange(4, dtype=np.float32)
    items = b"(" + text("weight") + tensor_ops(storage_pid("0", 4), (2, 2), (2, 1)) + b"u"
    meta = b"}" + text("_metadata") + glob("collections", "OrderedDict") + b")R" + text("") + b"}"
    meta += text("version") + enc(1) + b"sssb"
    body = glob("collections", "OrderedDict") + b")R" + items + meta
    got = tp.load(
        "sd.pt", torch_zip(whole(b"}" + text("state_dict") + body + b"s"), {"0": values.tobytes()})
    )
    assert isinstance(got, dict) and list(got["state_dict"]) == ["weight"]
    np.testing.assert_array_equal(got["state_dict"]["weight"].array, values.reshape(2, 2))


SNIPPETS = [
    b"N", b"K\x01", b"J\xff\xff\xff\x7f", b"\x8a\x01\x05", b"\x8b\x02\x00\x00\x00\x01\x02",
    b"X\x01\x00\x00\x00a", b"X\x02\x00\x00\x00\xff\xfe", b"\x8c\x03cpu", b"C\x02ab", b"(",
    b"t", b")", b"\x85", b"\x86", b"\x87", b"]", b"}", b"\x8f", b"e", b"a", b"s", b"u", b"\x90",
    b"\x91", b"l", b"d", b"0", b"1", b"2", b"q\x00", b"h\x00", b"r\x01\x00\x00\x00",
    b"j\x01\x00\x00\x00", b"\x94", b"R", b"b", b"\x81", b"\x92", b"Q", b"P0\n", b"I12\n",
    b"I01\n", b"L5L\n", b"F1.5\n", b"S'x'\n", b"Vx\n", b"p3\n", b"g3\n", b"\x88", b"\x89",
    glob("collections", "OrderedDict"), glob("torch._utils", "_rebuild_tensor_v2"),
    glob("torch._utils", "_rebuild_device_tensor_from_numpy"), glob("torch", "FloatStorage"),
    glob("torch", "float32"), glob("numpy", "dtype"), glob("numpy", "ndarray"),
    glob("numpy.core.multiarray", "_reconstruct"), glob("_codecs", "encode"),
    glob("torch", "Size"), glob("builtins", "set"), glob("torch.nn.modules.container", "ParameterDict"),
    glob("copyreg", "_reconstructor"), glob("builtins", "object"), glob("os", "system"),
    b"\x8c\x05torch\x8c\x04Size\x93", b"\x95\x10\x00\x00\x00\x00\x00\x00\x00",
    b"\x8e\x01\x00\x00\x00\x00\x00\x00\x00x", b"\x96\xff\x00\x00\x00\x00\x00\x00\x00",
    b"\x82\x01", b"\x97", b"\xff", b".", storage_pid("0", 2), storage_pid("0", 2, legacy=True),
]  # fmt: skip


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(SNIPPETS), max_size=40), st.booleans())
def test_any_opcode_soup_is_read_or_refused_on_one_line(parts: list[bytes], legacy: bool) -> None:
    pkl = b"\x80\x02" + b"".join(parts) + b"."
    data = legacy_file(pkl, [("0", b"\0" * 8)]) if legacy else torch_zip(pkl, {"0": b"\0" * 8})
    try:
        tp.load("soup.pt", data)
    except BadInputError as exc:
        message = str(exc)
        assert exc.path == "soup.pt" and "\n" not in message and len(message) < 1000


# ----- cross-checks with real torch ----------------------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize("dtype", ["float32", "float16", "int64", "bool"])
def test_torch_loads_our_mps_bytes_to_the_same_values(dtype: str) -> None:
    # Proves the hand-built layout is what torch <= 1.13 wrote: torch itself rebuilds it.
    torch = pytest.importorskip("torch")
    values = MPS_VALUES[dtype]
    data = torch_zip(one_key("emb", mps_tensor_ops(values, dtype)))
    theirs = torch.load(io.BytesIO(data), weights_only=False, map_location="cpu")["emb"]
    ours = tp.load("mps.pt", data)
    assert isinstance(ours, dict)
    np.testing.assert_array_equal(ours["emb"].array, theirs.numpy())


@pytest.mark.torch
def test_mps_bfloat16_rounding_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    bits = np.concatenate(
        [
            rng.integers(0, 2**32, 4000, dtype=np.uint64).astype(np.uint32),
            (rng.integers(0, 2**16, 1000, dtype=np.uint32) << 16) | 0x8000,  # exact ties
        ]
    )
    values = bits.view(np.float32)
    data = torch_zip(one_key("t", mps_tensor_ops(values, "bfloat16")))
    theirs = torch.load(io.BytesIO(data), weights_only=False, map_location="cpu")["t"]
    ours = tp.load("bf.pt", data)
    assert isinstance(ours, dict)
    want = theirs.view(torch.int16).numpy().view(np.uint16)
    finite = ~np.isnan(values)
    np.testing.assert_array_equal(ours["t"].array[finite], want[finite])
    assert np.isnan(Tensor(ours["t"].array, "bfloat16").to_float32()[~finite]).all()


@pytest.mark.torch
@pytest.mark.parametrize("protocol", [0, 1])
def test_torch_legacy_files_of_protocols_0_and_1(protocol: int) -> None:
    torch = pytest.importorskip("torch")
    state = {"emb": torch.arange(1536.0).reshape(2, 768) / 7, "step": 12, "name": "x"}
    buffer = io.BytesIO()
    torch.save(state, buffer, _use_new_zipfile_serialization=False, pickle_protocol=protocol)
    data = buffer.getvalue()
    assert detect_container(data) == "pickle-legacy"
    got = tp.load("old.pt", data)
    assert isinstance(got, dict) and got["step"] == 12 and got["name"] == "x"
    np.testing.assert_array_equal(got["emb"].array, state["emb"].numpy())


@pytest.mark.torch
def test_torch_state_dict_with_metadata_loads() -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    buffer = io.BytesIO()
    torch.save({"state_dict": layer.state_dict()}, buffer)
    got = tp.load("sd.pt", buffer.getvalue())
    assert isinstance(got, dict) and list(got["state_dict"]) == ["weight", "bias"]
    np.testing.assert_array_equal(got["state_dict"]["weight"].array, layer.weight.detach().numpy())
