"""Malicious pickles must be refused without running anything, in both torch containers.

Every payload below would create a marker file if a normal unpickler ran it (a control test
proves that for the live ones, in a subprocess). ``_torchpickle.load`` must raise and the
marker must not exist afterwards.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import pytest

from conceptlib.errors import CorruptFileError, ResourceLimitError, UnsafePickleError
from conceptlib.formats import _torchpickle as tp

# ----- payload construction ----------------------------------------------------------------------


def enc(value: object) -> bytes:
    """Opcodes that push ``value`` (a primitive or tuple), protocol 2, without PROTO/STOP."""
    return pickle.dumps(value, protocol=2)[2:-1]


def enc0(text: str) -> bytes:
    """Protocol-0 UNICODE opcode pushing ``text``."""
    return b"V" + text.encode("raw_unicode_escape") + b"\n"


def call(module: str, name: str, *args: str, protocol: int = 2) -> bytes:
    """Opcodes (no PROTO/STOP) that call ``module.name(*args)``."""
    if protocol == 0:
        return (
            b"c" + f"{module}\n{name}\n".encode() + b"(" + b"".join(enc0(a) for a in args) + b"tR"
        )
    if protocol >= 4:  # STACK_GLOBAL: the name only exists at run time, so find_class must stop it
        head = (
            b"\x8c"
            + bytes([len(module)])
            + module.encode()
            + b"\x8c"
            + bytes([len(name)])
            + name.encode()
        )
        return head + b"\x93" + enc(tuple(args)) + b"R"
    return b"c" + f"{module}\n{name}\n".encode() + enc(tuple(args)) + b"R"


def whole(body: bytes, protocol: int) -> bytes:
    return (b"\x80" + bytes([protocol]) if protocol >= 2 else b"") + body + b"."


class Reduce:
    """Pickled by the standard pickler as ``fn(*args)``."""

    def __init__(self, fn: Callable[..., object], *args: object) -> None:
        self.fn = fn
        self.args = args

    def __reduce__(self) -> tuple[Callable[..., object], tuple[object, ...]]:
        return self.fn, self.args


def payloads(marker: Path) -> dict[str, bytes]:
    m = str(marker)
    touch = f"touch '{m}'"
    write = f"open({m!r}, 'w').close()"
    out: dict[str, bytes] = {}
    for protocol in (0, 2, 4):
        out[f"os.system-p{protocol}"] = pickle.dumps(Reduce(os.system, touch), protocol=protocol)
        out[f"subprocess.call-p{protocol}"] = pickle.dumps(
            Reduce(subprocess.call, ["touch", m]), protocol=protocol
        )
        out[f"eval-p{protocol}"] = whole(
            call("builtins", "eval", write, protocol=protocol), protocol
        )
        out[f"exec-p{protocol}"] = whole(
            call("builtins", "exec", write, protocol=protocol), protocol
        )
        out[f"posix.system-p{protocol}"] = whole(
            call("posix", "system", touch, protocol=protocol), protocol
        )
        out[f"nt.system-p{protocol}"] = whole(
            call("nt", "system", touch, protocol=protocol), protocol
        )
        # A valid-looking embedding dict with the call nested inside an allowed OrderedDict.
        nested = {"string_to_param": OrderedDict([("*", Reduce(os.system, touch))]), "name": "x"}
        out[f"nested-in-ordereddict-p{protocol}"] = pickle.dumps(nested, protocol=protocol)
    out["eval-py2-builtin"] = whole(call("__builtin__", "eval", write), 2)
    # getattr(__import__('os'), 'system')(cmd), and getattr(builtins module, 'eval')(code)
    out["getattr-import-chain"] = (
        b"c__builtin__\ngetattr\n(c__builtin__\n__import__\n(" + enc0("os") + b"tR" + enc0("system")
        + b"tR(" + enc0(touch) + b"tR."
    )  # fmt: skip
    out["getattr-builtins-eval"] = (
        b"\x80\x02cbuiltins\ngetattr\n" + call("builtins", "__import__", "builtins") + enc("eval")
        + b"\x86R" + enc((write,)) + b"R."
    )  # fmt: skip
    out["stack-global-getattr"] = whole(
        b"\x8c\x08builtins\x8c\x07getattr\x93" + call("builtins", "__import__", "os", protocol=4)
        + enc("system") + b"\x86R" + enc((touch,)) + b"R",
        4,
    )  # fmt: skip
    # INST (protocol 0) and OBJ (protocol 1) call a class/function found by name.
    out["INST-os.system"] = b"(" + enc0(touch) + b"ios\nsystem\n."
    out["INST-posix.system"] = b"(" + enc0(touch) + b"iposix\nsystem\n."
    out["OBJ-os.system"] = b"(cos\nsystem\n" + enc0(touch) + b"o."
    out["OBJ-stack-global"] = whole(b"(\x8c\x02os\x8c\x06system\x93" + enc(touch) + b"o", 4)
    # Globals from modules that must never be touched even though they sound harmless.
    out["torch.load"] = whole(call("torch", "load", m), 2)
    out["torch.load-p4"] = whole(call("torch", "load", m, protocol=4), 4)
    out["numpy.load"] = whole(call("numpy", "load", m), 2)
    out["shutil.rmtree"] = whole(call("shutil", "rmtree", str(marker.parent / "victim")), 2)
    out["builtins.__import__"] = whole(call("builtins", "__import__", "os"), 2)
    out["builtins.open"] = whole(call("builtins", "open", m, "w"), 2)
    out["runpy"] = whole(call("runpy", "_run_code", write, "{}"), 2)
    out["pickle.loads"] = whole(call("pickle", "loads", "x"), 2)
    out["torch.storage._load_from_bytes"] = whole(call("torch.storage", "_load_from_bytes", "x"), 2)
    # copyreg._reconstructor is allowed only for ParameterDict on object.
    out["reconstructor-os-class"] = (
        b"ccopy_reg\n_reconstructor\n(cos\n_wrap_close\nc__builtin__\nobject\nNtR."
    )
    out["reconstructor-allowed-but-wrong-class"] = (
        b"ccopy_reg\n_reconstructor\n(ccollections\nOrderedDict\nc__builtin__\nobject\nNtR."
    )
    out["reconstructor-other-base"] = (
        b"ccopy_reg\n_reconstructor\n(ctorch.nn.modules.container\nParameterDict\nc__builtin__\ndict\nNtR."
    )
    out["codecs-other-encoding"] = whole(call("_codecs", "encode", "x", "rot13"), 2)
    # A real tensor rebuild whose backward_hooks argument is the malicious call.
    tensor = (
        b"ctorch._utils\n_rebuild_tensor_v2\n((" + enc("storage") + b"ctorch\nFloatStorage\n"
        + enc("0") + enc("cpu") + enc(2) + b"tQ" + enc(0) + enc((2,)) + enc((1,)) + b"\x89"
    )  # fmt: skip
    out["evil-in-tensor-rebuild-p2"] = whole(
        b"}" + enc("t") + tensor + call("posix", "system", touch) + b"tRs", 2
    )
    out["evil-in-tensor-rebuild-p4"] = whole(
        b"}" + enc("t") + tensor + call("posix", "system", touch, protocol=4) + b"tRs", 4
    )
    # The storage type slot of a persistent id filled with a call.
    out["evil-storage-type"] = whole(
        b"("
        + enc("storage")
        + call("posix", "system", touch, protocol=4)
        + enc("0")
        + enc("cpu")
        + enc(2)
        + b"tQ",
        4,
    )
    return out


# Payloads that a plain ``pickle.loads`` really would run to create the marker.
LIVE = [
    "os.system-p0", "os.system-p2", "os.system-p4", "subprocess.call-p2", "eval-p2", "exec-p4",
    "posix.system-p0", "posix.system-p4", "nested-in-ordereddict-p2", "nested-in-ordereddict-p4",
    "eval-py2-builtin", "getattr-import-chain", "getattr-builtins-eval", "stack-global-getattr",
    "INST-os.system", "OBJ-os.system", "OBJ-stack-global",
]  # fmt: skip

PAYLOAD_NAMES = sorted(payloads(Path("/x")))


def zip_container(pkl: bytes, folder: str = "archive") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{folder}/data.pkl", pkl)
        archive.writestr(f"{folder}/data/0", b"\0" * 8)
        archive.writestr(f"{folder}/version", b"3\n")
    return buffer.getvalue()


def legacy_container(pkl: bytes, *, where: str = "main") -> bytes:
    """The legacy layout with ``pkl`` as the main pickle (or as sys_info / the key list)."""
    parts = [
        pickle.dumps(tp.LEGACY_MAGIC, protocol=2),
        pickle.dumps(tp.LEGACY_PROTOCOL, protocol=2),
        pkl if where == "sys_info" else pickle.dumps({"protocol_version": 1001}, protocol=2),
        pkl if where == "main" else pickle.dumps({}, protocol=2),
        pkl if where == "keys" else pickle.dumps([], protocol=2),
    ]
    return b"".join(parts)


# ----- the tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LIVE)
def test_control_payloads_are_live(tmp_path: Path, name: str) -> None:
    """Sanity check: the standard unpickler does run these (in a child process)."""
    marker = tmp_path / "pwned"
    source = tmp_path / "payload.pkl"
    source.write_bytes(payloads(marker)[name])
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import pickle, sys; pickle.loads(open(sys.argv[1], 'rb').read())",
            str(source),
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert marker.exists(), f"{name} is not a live payload, the test would prove nothing"


@pytest.mark.parametrize(
    "container", ["zip", "zip-odd-folder", "legacy", "legacy-sys_info", "legacy-keys"]
)
@pytest.mark.parametrize("name", PAYLOAD_NAMES)
def test_hostile_payload_is_refused(tmp_path: Path, name: str, container: str) -> None:
    marker = tmp_path / "pwned"
    (tmp_path / "victim").mkdir()
    pkl = payloads(marker)[name]
    if container == "zip":
        data = zip_container(pkl)
    elif container == "zip-odd-folder":
        data = zip_container(pkl, folder="_EmbeddingMerge_temp")
    else:
        data = legacy_container(pkl, where=container.partition("-")[2] or "main")
    path = tmp_path / "evil.pt"
    path.write_bytes(data)
    with pytest.raises((UnsafePickleError, CorruptFileError)) as info:
        tp.load(path)
    assert info.value.path == str(path)
    assert not marker.exists()
    assert (tmp_path / "victim").is_dir()
    # Everything that names a forbidden callable is reported as unsafe, not as damage; the one
    # exception is a zip-style persistent id inside a legacy container, which is refused as
    # malformed before the unpickler reaches the call (opcodes run in order, in one pass).
    if not (name.startswith("evil-in-tensor-rebuild") and container.startswith("legacy")):
        assert isinstance(info.value, UnsafePickleError), info.value
        assert "nothing was executed" in str(info.value)


def test_message_names_the_global(tmp_path: Path) -> None:
    with pytest.raises(UnsafePickleError) as info:
        tp.load("evil.pt", zip_container(payloads(tmp_path / "m")["posix.system-p2"]))
    assert info.value.message == (
        "refuses to load: the pickle asks for posix.system, which is not an embedding type; nothing was executed"
    )
    assert info.value.hint


def test_build_cannot_mutate_stand_ins() -> None:
    # BUILD on an allowlisted callable, on a class, on a tensor: all malformed, no state change.
    before = tp._ALLOWED[("torch._utils", "_rebuild_tensor_v2")]
    for body in (
        b"ctorch._utils\n_rebuild_tensor_v2\n}" + enc("__setstate__") + b"ctorch\nSize\nsb",
        b"ccollections\nOrderedDict\n}" + enc("x") + enc(1) + b"sb",
        b"ctorch.nn.modules.container\nParameterDict\n}b",
        b"ctorch\nFloatStorage\n(}" + enc("dtype") + enc("x") + b"sNtb",
    ):
        with pytest.raises(CorruptFileError):
            tp.load("b.pt", zip_container(whole(body, 2)))
    assert tp._ALLOWED[("torch._utils", "_rebuild_tensor_v2")] is before
    assert isinstance(before, tp._SafeCallable)
    assert before.name == "torch._utils._rebuild_tensor_v2"


def test_extension_opcode_is_refused() -> None:
    with pytest.raises(CorruptFileError):
        tp.load("e.pt", zip_container(whole(b"\x82\x01", 2)))


def _declares_huge_storage(legacy: bool) -> bytes:
    numel = 100 * 10**9  # 100 G float32 elements = 400 GB
    pid = b"(" + enc("storage") + b"ctorch\nFloatStorage\n" + enc("0") + enc("cpu") + enc(numel)
    pid += (b"N" if legacy else b"") + b"tQ"
    args = pid + enc(0) + enc((numel,)) + enc((1,)) + b"\x89ccollections\nOrderedDict\n)R"
    pkl = whole(b"}" + enc("t") + b"ctorch._utils\n_rebuild_tensor_v2\n(" + args + b"tRs", 2)
    if not legacy:
        return zip_container(pkl)
    head = legacy_container(pkl)[: -len(pickle.dumps([], protocol=2))]
    return head + pickle.dumps(["0"], protocol=2) + struct.pack("<q", numel) + b"\0" * 16


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_huge_declared_storage_fails_fast_and_small(legacy: bool) -> None:
    data = _declares_huge_storage(legacy)
    assert len(data) < 2000
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(CorruptFileError, match="declares 400000000000 bytes"):
            tp.load("huge.pt", data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 2
    assert peak < 50 * 2**20


@pytest.mark.parametrize(
    "body",
    [
        b"\x8e" + struct.pack("<Q", 2**40) + b"abc",  # BINBYTES8 claiming 1 TB
        b"\x8d" + struct.pack("<Q", 2**40) + b"abc",  # BINUNICODE8
        b"\x96" + struct.pack("<Q", 2**40) + b"abc",  # BYTEARRAY8
        b"\x95" + struct.pack("<Q", 2**40) + b"N.",  # FRAME claiming 1 TB
        b"\x97\x98",  # protocol 5 out-of-band buffers
        b"]r\xf0\xff\xff\x7f",  # LONG_BINPUT at index 2**31 (the C memo would be zero-filled)
        b"]j\xf0\xff\xff\x7f",  # LONG_BINGET far away
        b"\x8a\xff" + b"\xff" * 10,  # LONG1 claiming 255 bytes
    ],
    ids=[
        "binbytes8",
        "binunicode8",
        "bytearray8",
        "frame",
        "buffer",
        "memo-put",
        "memo-get",
        "long1",
    ],
)
def test_oversized_opcodes_fail_fast(body: bytes) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(CorruptFileError):
            tp.load("o.pt", zip_container(b"\x80\x05" + body))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20


def test_expanding_views_are_bounded() -> None:
    # One of data/0's two floats viewed as a 10**6 x 10**6 broadcast: 4 TB if materialised.
    pid = b"(" + enc("storage") + b"ctorch\nFloatStorage\n" + enc("0") + enc("cpu") + enc(2) + b"tQ"
    args = pid + enc(0) + enc((10**6, 10**6)) + enc((0, 0)) + b"\x89ccollections\nOrderedDict\n)R"
    pkl = whole(b"}" + enc("t") + b"ctorch._utils\n_rebuild_tensor_v2\n(" + args + b"tRs", 2)
    with pytest.raises(ResourceLimitError, match=r"would take 4,000,000,000,000 bytes"):
        tp.load("x.pt", zip_container(pkl))


def test_deep_nesting_and_cycles() -> None:
    deep = whole(b"]" * 100_000 + b"a" * 99_999, 2)
    with pytest.raises(CorruptFileError, match="nested"):
        tp.load("d.pt", zip_container(deep))
    cycle = whole(b"]q\x00h\x00a", 2)
    with pytest.raises(CorruptFileError, match="self-referencing"):
        tp.load("c.pt", zip_container(cycle))


def test_shared_references_are_not_exponential() -> None:
    # l0 = [], l1 = [l0, l0], l2 = [l1, l1], ... 2**60 leaves if copied naively.
    body = b"]q\x000"
    for i in range(1, 61):
        body += b"(h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"lq" + bytes([i]) + b"0"
    body += b"h" + bytes([60])
    started = time.perf_counter()
    got = tp.load("s.pt", zip_container(whole(body, 2)))
    assert time.perf_counter() - started < 2
    assert isinstance(got, list) and len(got) == 2


def test_huge_data_pkl_is_refused_before_reading() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02N" + b"0" * (65 * 2**20) + b".")
    with pytest.raises(ResourceLimitError, match="data.pkl is 68,157,444 bytes"):
        tp.load("big.pt", buffer.getvalue())
