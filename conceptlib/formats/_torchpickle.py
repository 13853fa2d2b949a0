"""Read and write ``torch.save`` files without torch and without ever running code from them.

A ``.pt``/``.bin`` file is a pickle, and a pickle is a small program: its ``GLOBAL`` and
``REDUCE`` opcodes import and call whatever the author chose. This module never lets that
happen. Every name a pickle asks for is looked up in :data:`_ALLOWED`, a table of *local*
stand-ins (for ``torch._utils._rebuild_tensor_v2``, ``collections.OrderedDict``, the storage
type markers, ...) that only record their arguments; nothing outside the table is ever imported
or returned, so a payload such as ``os.system`` fails with :class:`UnsafePickleError` before a
single byte of it runs. Before the (C) unpickler even starts, a pure-Python pass over the opcodes
(:func:`_prescan`) rejects unknown names, declared lengths longer than the data, out-of-band
buffers and absurd memo indices, so hostile bytes cannot make the unpickler allocate gigabytes.

Tensors come back as :class:`conceptlib.tensor.Tensor`: the storage bytes are bounds-checked
against what the file really holds *before* anything is allocated, and every tensor view
(offset, size, stride) is materialised as a compact C-contiguous copy.

Two containers are read:

* the zip format of torch >= 1.6: ``<dir>/data.pkl``, ``<dir>/data/<key>``, ``<dir>/version``,
  maybe ``<dir>/byteorder``; ``<dir>`` is ``archive`` for recent torch but older versions used
  the file's stem (``negative_hand/``, ``_EmbeddingMerge_temp/``), so any single folder works;
* the legacy format (``_use_new_zipfile_serialization=False``): five pickles in a row (magic
  number, protocol 1001, sys_info, the object, the storage keys) followed by each storage as an
  8-byte little-endian element count and its raw little-endian bytes.

The writer emits the zip format byte-compatible with ``torch.save`` (protocol-2 pickle with the
same opcodes, storage records aligned to 64 bytes), so ``torch.load(weights_only=True)`` and
``torch.load(mmap=True)`` both accept it.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import pickletools
import struct
import zipfile
import zlib
from collections.abc import Callable
from typing import Any, Literal, NoReturn

import numpy as np

from conceptlib._atomic import atomic_open
from conceptlib.errors import (
    ConceptlibError,
    CorruptFileError,
    EmbeddingFileError,
    UnknownFormatError,
    UnsafePickleError,
)
from conceptlib.tensor import DTYPES, STORAGE_TO_DTYPE, Tensor

__all__ = ["dump", "dumps", "load"]

# A textual-inversion pickle is a few hundred bytes; anything near this is not an embedding.
MAX_PICKLE_BYTES = 64 * 2**20
# Real embedding state is nested 3-4 levels deep; the limit keeps the recursive walk safe.
MAX_NESTING = 200
# Tensors may expand their storage (stride-0 broadcasts, one storage viewed many times); allow
# the file's own size plus this much, so a 5 KB file cannot ask for 100 GB of copies.
EXPANSION_ALLOWANCE = 256 * 2**20
# Python's pickler numbers memo entries consecutively, so a memo index far beyond the number of
# opcodes seen is an attack on the C unpickler's memo array (it grows to the index, zero-filled).
_MEMO_SLACK = 1024

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
STORAGE_ALIGNMENT = 64  # torch's writer (and mmap=True) want record data at multiples of 64
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)

_ITEMSIZE: dict[str, int] = {name: np.dtype(spec[0]).itemsize for name, spec in DTYPES.items()}


def _unsafe(what: str) -> NoReturn:
    raise UnsafePickleError(
        f"refuses to load: the pickle asks for {what}, which is not an embedding type; nothing was executed"
    )


def _corrupt(message: str) -> NoReturn:
    raise CorruptFileError(message)


# --------------------------------------------------------------------------------------------
# Local stand-ins for the globals a torch pickle may name.
#
# Each is a plain slotted object whose ``__setstate__`` refuses (except the two that expect a
# BUILD), so a hostile BUILD opcode can neither mutate them nor plant attributes that a later
# BUILD would call. Module-level functions are never handed to the unpickler directly because
# BUILD could rewrite their ``__defaults__`` and poison later loads.
# --------------------------------------------------------------------------------------------


class _Sealed:
    """Mixin: BUILD on this object is a malformed pickle, never an attribute update."""

    __slots__ = ()

    def __setstate__(self, state: object) -> None:
        _corrupt(f"malformed pickle: BUILD on a {type(self).__name__.lstrip('_')}")


class _Marker(_Sealed):
    """A named, inert value (storage type, dtype, ``numpy.ndarray``, ``builtins.object``)."""

    __slots__ = ("kind", "name", "dtype")

    def __init__(self, kind: str, name: str, dtype: str = "") -> None:
        self.kind = kind
        self.name = name
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"<{self.kind} {self.name}>"


class _SafeCallable(_Sealed):
    """A callable stand-in: ``fn`` is one of the local rebuild functions below."""

    __slots__ = ("name", "_fn")

    def __init__(self, name: str, fn: Callable[..., Any]) -> None:
        self.name = name
        self._fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<safe {self.name}>"


class _StorageRef(_Sealed):
    """A storage named by a persistent id; its bytes are fetched only when a tensor needs them.

    ``numel`` counts elements of ``dtype`` (bytes when ``untyped``); ``view_offset`` and
    ``view_numel`` describe the old legacy-format storage views, in elements.
    """

    __slots__ = ("key", "dtype", "untyped", "numel", "location", "view_offset", "view_numel")

    def __init__(
        self,
        key: str,
        dtype: str,
        untyped: bool,
        numel: int,
        location: str,
        view_offset: int = 0,
        view_numel: int | None = None,
    ) -> None:
        self.key = key
        self.dtype = dtype
        self.untyped = untyped
        self.numel = numel
        self.location = location
        self.view_offset = view_offset
        self.view_numel = view_numel

    @property
    def nbytes(self) -> int:
        return self.numel if self.untyped else self.numel * _ITEMSIZE[self.dtype]


class _TensorRef(_Sealed):
    """A tensor view over a storage, materialised after unpickling."""

    __slots__ = ("storage", "offset", "size", "stride", "dtype")

    def __init__(
        self,
        storage: _StorageRef,
        offset: int,
        size: tuple[int, ...],
        stride: tuple[int, ...],
        dtype: str,
    ) -> None:
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride
        self.dtype = dtype


class _PickledDict(_Sealed, dict[Any, Any]):
    """``collections.OrderedDict`` stand-in (a dict keeps insertion order)."""

    __slots__ = ()


class _PickledSet(_Sealed, set[Any]):
    """``builtins.set`` stand-in (the LDM embeddings pickle a ParameterDict's buffer set)."""

    __slots__ = ()


class _ParameterDictStub:
    """``torch.nn.ParameterDict`` stand-in: keeps the BUILD state, read in :func:`_finalize`.

    torch pickles a Module as ``NEWOBJ`` (protocol 2) or ``copyreg._reconstructor`` (0/1) and
    then ``BUILD`` with its ``__dict__``; the parameters live in ``state['_parameters']`` and
    torch >= 1.12 also records the key order in ``state['_keys']``.
    """

    __slots__ = ("state",)
    state: dict[Any, Any] | None

    def __new__(cls) -> _ParameterDictStub:
        # Set up in __new__, not __init__: NEWOBJ and copyreg._reconstructor skip __init__.
        self = super().__new__(cls)
        self.state = None
        return self

    def __setstate__(self, state: object) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = state[0]
        if not isinstance(state, dict):
            _corrupt("malformed pickle: a ParameterDict's state is not a dict")
        self.state = state


class _ParameterStub(_Sealed):
    """``torch.nn.parameter.Parameter`` stand-in: a Parameter is just its data here."""

    __slots__ = ()

    def __new__(cls, data: object = None, requires_grad: object = True) -> Any:
        if not isinstance(data, _TensorRef):
            _corrupt("malformed pickle: Parameter without tensor data")
        return data


class _NumpyDtypeStub:
    """``numpy.dtype(spec)`` stand-in; the byte order arrives later through BUILD."""

    __slots__ = ("spec", "byteorder")

    _SPECS = {
        "f2": "float16", "f4": "float32", "f8": "float64", "i1": "int8", "i2": "int16",
        "i4": "int32", "i8": "int64", "u1": "uint8", "b1": "bool",
    }  # fmt: skip

    def __init__(self, spec: object, align: object = False, copy: object = False) -> None:
        if not isinstance(spec, str) or spec not in self._SPECS:
            _unsafe(f"a numpy array of dtype {spec!r}")
        self.spec = spec
        self.byteorder: Literal["<", ">"] = "<"

    def __setstate__(self, state: object) -> None:
        # numpy writes (version, byteorder, subarray, names, fields, elsize, alignment, flags).
        if not isinstance(state, tuple) or len(state) < 2 or not isinstance(state[1], str):
            _corrupt("malformed pickle: bad numpy dtype state")
        if any(part is not None for part in state[2:5]):
            _unsafe("a structured numpy dtype")
        self.byteorder = ">" if state[1] == ">" else "<"  # '=' and '|' mean little/any here

    @property
    def name(self) -> str:
        return self._SPECS[self.spec]

    def numpy(self) -> np.dtype[Any]:
        base = np.dtype(DTYPES[self.name][0]) if self.name != "bool" else np.dtype("u1")
        return base.newbyteorder(self.byteorder) if base.itemsize > 1 else base


class _NumpyArrayStub:
    """``numpy.core.multiarray._reconstruct`` result; BUILD supplies shape, dtype and bytes."""

    __slots__ = ("shape", "dtype", "fortran", "raw")

    def __init__(self) -> None:
        self.shape: tuple[int, ...] | None = None
        self.dtype: _NumpyDtypeStub | None = None
        self.fortran = False
        self.raw: bytes = b""

    def __setstate__(self, state: object) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            _corrupt("malformed pickle: bad numpy array state")
        _version, shape, dtype, fortran, raw = state if len(state) == 5 else (1, *state)
        if not isinstance(dtype, _NumpyDtypeStub):
            _corrupt("malformed pickle: numpy array without a dtype")
        if isinstance(raw, str):  # Python 2 pickles carry the bytes as a latin-1 str
            raw = raw.encode("latin-1")
        if not isinstance(raw, (bytes, bytearray)):
            _unsafe("a numpy object array")
        self.shape = _int_tuple(shape, "numpy array shape")
        self.dtype = dtype
        self.fortran = bool(fortran)
        self.raw = bytes(raw)

    def to_tensor(self) -> Tensor:
        if self.shape is None or self.dtype is None:
            _corrupt("malformed pickle: numpy array never received its data")
        return _numpy_tensor(self.raw, self.dtype, self.shape, self.fortran)


def _numpy_tensor(
    raw: bytes, dtype: _NumpyDtypeStub, shape: tuple[int, ...], fortran: bool
) -> Tensor:
    if len(shape) > 64 or any(n < 0 for n in shape):
        _corrupt(f"malformed pickle: numpy array shape {shape}")
    np_dtype = dtype.numpy()
    count = int(np.prod(shape, dtype=object)) if shape else 1
    if count * np_dtype.itemsize != len(raw):
        _corrupt(f"malformed pickle: numpy array of shape {shape} holds {len(raw)} bytes")
    arr = np.frombuffer(raw, dtype=np_dtype, count=count).reshape(
        shape, order="F" if fortran else "C"
    )
    if dtype.name == "bool":
        arr = arr != 0
    return Tensor(np.array(arr, dtype=DTYPES[dtype.name][0], order="C"), dtype.name)


def _int_tuple(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        _corrupt(f"malformed pickle: {what} is not a tuple of integers")
    return tuple(value)


def _nonneg_int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        _corrupt(f"malformed pickle: {what} is not a non-negative integer")
    return value


# ----- rebuild functions (what the allowlisted callables really do) -------------------------


def _make_tensor(
    storage: object, offset: object, size: object, stride: object, dtype: str | None = None
) -> _TensorRef:
    if not isinstance(storage, _StorageRef):
        _corrupt("malformed pickle: tensor rebuilt from something that is not a storage")
    if dtype is None:
        if storage.untyped:
            _corrupt("malformed pickle: _rebuild_tensor_v2 over an untyped storage (no dtype)")
        dtype = storage.dtype
    size_t = _int_tuple(size, "tensor size")
    stride_t = _int_tuple(stride, "tensor stride")
    if len(size_t) != len(stride_t):
        _corrupt(f"malformed pickle: tensor size {size_t} and stride {stride_t} differ in rank")
    if len(size_t) > 64:  # numpy's limit, and far beyond any real tensor
        _corrupt(f"malformed pickle: tensor of rank {len(size_t)}")
    return _TensorRef(storage, _nonneg_int(offset, "storage offset"), size_t, stride_t, dtype)


def _check_metadata(metadata: object) -> None:
    # torch passes {'neg': True}/{'conj': True} for lazily negated/conjugated views only.
    if metadata and (not isinstance(metadata, dict) or any(metadata.values())):
        raise EmbeddingFileError(f"tensor metadata {metadata!r} (a neg/conj view) is not supported")


def _rebuild_tensor(
    storage: object, storage_offset: object, size: object, stride: object
) -> _TensorRef:
    return _make_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(
    storage: object,
    storage_offset: object,
    size: object,
    stride: object,
    requires_grad: object = False,  # dropped: embeddings are plain values
    backward_hooks: object = None,
    metadata: object = None,
) -> _TensorRef:
    _check_metadata(metadata)
    return _make_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(
    storage: object,
    storage_offset: object,
    size: object,
    stride: object,
    requires_grad: object,
    backward_hooks: object,
    dtype: object,
    metadata: object = None,
) -> _TensorRef:
    # torch >= 2.1 uses v3 (UntypedStorage + explicit dtype) only for its newer dtypes.
    if not (isinstance(dtype, _Marker) and dtype.kind == "dtype"):
        _corrupt("malformed pickle: _rebuild_tensor_v3 without a torch dtype")
    _check_metadata(metadata)
    return _make_tensor(storage, storage_offset, size, stride, dtype.dtype)


def _rebuild_parameter(
    data: object, requires_grad: object = True, backward_hooks: object = None
) -> _TensorRef:
    if not isinstance(data, _TensorRef):
        _corrupt("malformed pickle: Parameter without tensor data")
    return data


def _rebuild_parameter_with_state(
    data: object, requires_grad: object, backward_hooks: object, state: object
) -> _TensorRef:
    # ``state`` holds Python attributes set on the Parameter; an embedding needs none of them.
    return _rebuild_parameter(data)


def _rebuild_from_type_v2(func: object, new_type: object, args: object, state: object) -> Any:
    # torch uses this for tensors that carry Python attributes; the attributes are dropped.
    if func not in _REBUILD_CALLABLES or not (
        isinstance(new_type, _Marker) and new_type.kind == "tensor-class"
    ):
        _unsafe(f"torch._tensor._rebuild_from_type_v2 of {func!r}")
    if not isinstance(args, tuple):
        _corrupt("malformed pickle: _rebuild_from_type_v2 arguments are not a tuple")
    assert isinstance(func, _SafeCallable)
    return func(*args)


def _codecs_encode(obj: object, encoding: object = "utf-8") -> bytes:
    # Protocol 2 has no bytes opcode, so Python 3 pickles bytes as _codecs.encode(str, 'latin1').
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        _unsafe(f"_codecs.encode with encoding {encoding!r}")
    return obj.encode("latin-1")


def _make_bytes(value: object = b"") -> bytes:
    # bytes(n) would allocate n zero bytes: only copying an existing bytes object is allowed.
    if not isinstance(value, (bytes, bytearray)):
        _corrupt("malformed pickle: bytes() of something that is not bytes")
    return bytes(value)


def _torch_size(value: object = ()) -> tuple[int, ...]:
    return _int_tuple(value, "torch.Size")


def _copyreg_reconstructor(cls: object, base: object, state: object) -> object:
    # copyreg._reconstructor(cls, object, None) is how protocols 0/1 create a Module before BUILD.
    if cls is not _ParameterDictStub or base is not _OBJECT or state is not None:
        _unsafe(f"copyreg._reconstructor of {cls!r}")
    return _ParameterDictStub()


def _numpy_reconstruct(
    subtype: object, shape: object = (0,), dtype: object = b"b"
) -> _NumpyArrayStub:
    if subtype is not _NDARRAY:
        _unsafe(f"numpy.core.multiarray._reconstruct of {subtype!r}")
    return _NumpyArrayStub()


def _numpy_scalar(dtype: object, raw: object = None) -> int | float | bool:
    if not isinstance(dtype, _NumpyDtypeStub):
        _unsafe(f"numpy.core.multiarray.scalar of {dtype!r}")
    if isinstance(raw, str):
        raw = raw.encode("latin-1")
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != dtype.numpy().itemsize:
        _corrupt("malformed pickle: bad numpy scalar")
    return _numpy_tensor(bytes(raw), dtype, (), False).item()


def _numpy_frombuffer(buf: object, dtype: object, shape: object, order: object = "C") -> Tensor:
    if not isinstance(dtype, _NumpyDtypeStub) or not isinstance(buf, (bytes, bytearray)):
        _unsafe("numpy.core.numeric._frombuffer of a non-bytes buffer")
    return _numpy_tensor(bytes(buf), dtype, _int_tuple(shape, "numpy array shape"), order == "F")


_OBJECT = _Marker("builtin", "object")
_NDARRAY = _Marker("numpy", "ndarray")


def _build_allowlist() -> dict[tuple[str, str], object]:
    table: dict[tuple[str, str], object] = {}
    rebuilds: dict[str, Callable[..., Any]] = {
        "_rebuild_tensor": _rebuild_tensor,
        "_rebuild_tensor_v2": _rebuild_tensor_v2,
        "_rebuild_tensor_v3": _rebuild_tensor_v3,
        "_rebuild_parameter": _rebuild_parameter,
        "_rebuild_parameter_with_state": _rebuild_parameter_with_state,
    }
    for name, fn in rebuilds.items():
        table[("torch._utils", name)] = _SafeCallable(f"torch._utils.{name}", fn)
    table[("torch._tensor", "_rebuild_from_type_v2")] = _SafeCallable(
        "torch._tensor._rebuild_from_type_v2", _rebuild_from_type_v2
    )
    for storage, dtype in STORAGE_TO_DTYPE.items():
        for module in ("torch", "torch.cuda"):  # torch < 1.0 named CUDA storages torch.cuda.*
            table[(module, storage)] = _Marker("storage", storage, dtype)
    for module in ("torch", "torch.storage"):
        table[(module, "UntypedStorage")] = _Marker("storage", "UntypedStorage", "uint8")
    aliases = {"float": "float32", "half": "float16", "double": "float64", "long": "int64",
               "int": "int32", "short": "int16"}  # fmt: skip
    for name in [*DTYPES, *aliases]:
        table[("torch", name)] = _Marker("dtype", f"torch.{name}", aliases.get(name, name))
    table[("torch", "Tensor")] = _Marker("tensor-class", "torch.Tensor")
    table[("torch._tensor", "Tensor")] = table[("torch", "Tensor")]
    table[("torch", "Size")] = _SafeCallable("torch.Size", _torch_size)
    table[("collections", "OrderedDict")] = _PickledDict
    table[("builtins", "set")] = _PickledSet
    table[("builtins", "bytes")] = _SafeCallable("builtins.bytes", _make_bytes)
    table[("builtins", "bytearray")] = _SafeCallable("builtins.bytearray", _make_bytes)
    table[("builtins", "object")] = _OBJECT
    table[("_codecs", "encode")] = _SafeCallable("_codecs.encode", _codecs_encode)
    table[("copyreg", "_reconstructor")] = _SafeCallable(
        "copyreg._reconstructor", _copyreg_reconstructor
    )
    table[("torch.nn.modules.container", "ParameterDict")] = _ParameterDictStub
    table[("torch.nn.parameter", "Parameter")] = _ParameterStub
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(module, "_reconstruct")] = _SafeCallable("numpy _reconstruct", _numpy_reconstruct)
        table[(module, "scalar")] = _SafeCallable("numpy scalar", _numpy_scalar)
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        table[(module, "_frombuffer")] = _SafeCallable("numpy _frombuffer", _numpy_frombuffer)
    table[("numpy", "ndarray")] = _NDARRAY
    # A callable, not the class: NEWOBJ on it would skip the spec check in __init__.
    table[("numpy", "dtype")] = _SafeCallable("numpy.dtype", _NumpyDtypeStub)
    return table


# The OrderedDict REDUCE creates a fresh dict every time, but these entries are shared stand-ins.
_ALLOWED = _build_allowlist()
_REBUILD_CALLABLES = tuple(v for (m, _), v in _ALLOWED.items() if m == "torch._utils")
# Python 2 module names that protocol <= 2 pickles still use (Python 3 writes them for compat).
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


def _resolve_global(module: object, name: object) -> object:
    if not isinstance(module, str) or not isinstance(name, str):
        _corrupt("malformed pickle: a global name is not a string")
    found = _ALLOWED.get((_PY2_MODULES.get(module, module), name))
    if found is None:
        _unsafe(f"{module}.{name}")
    return found


# --------------------------------------------------------------------------------------------
# Opcode pre-scan and the restricted unpickler
# --------------------------------------------------------------------------------------------

_MEMO_PUT = {"PUT", "BINPUT", "LONG_BINPUT"}
_MEMO_GET = {"GET", "BINGET", "LONG_BINGET"}


def _prescan(stream: io.BytesIO, where: str) -> int:
    """Walk the opcodes of the pickle starting at ``stream``'s position; return its end offset.

    Pure Python and allocation-bounded: ``pickletools.genops`` reads each argument with
    ``stream.read(n)``, which never allocates more than what is left. Checks that the C
    unpickler would make too late or not at all: every GLOBAL/INST name is allowlisted, no
    declared length or frame runs past the data, memo indices stay near the opcode count (the
    C unpickler zero-fills its memo array up to the index), no out-of-band buffers.
    """
    start = stream.tell()
    total = len(stream.getbuffer())
    count = 0
    try:
        for opcode, arg, _pos in pickletools.genops(stream):
            count += 1
            name = opcode.name
            if name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                _resolve_global(module, attr)
            elif name in _MEMO_PUT or name in _MEMO_GET:
                if not isinstance(arg, int) or arg < 0 or arg > count + _MEMO_SLACK:
                    _corrupt(f"malformed pickle in {where}: memo index {arg} out of range")
            elif name in ("NEXT_BUFFER", "READONLY_BUFFER"):
                _corrupt(f"malformed pickle in {where}: out-of-band buffers are not supported")
            elif name == "FRAME" and isinstance(arg, int) and arg > total - stream.tell():
                _corrupt(f"malformed pickle in {where}: frame of {arg} bytes runs past the end")
            elif name == "PROTO" and isinstance(arg, int) and arg > pickle.HIGHEST_PROTOCOL:
                _corrupt(f"malformed pickle in {where}: unknown pickle protocol {arg}")
            if stream.tell() - start > MAX_PICKLE_BYTES:
                raise EmbeddingFileError(
                    f"{where} is larger than {MAX_PICKLE_BYTES >> 20} MiB; an embedding's pickle is a few KiB"
                )
    except ConceptlibError:
        raise
    except (ValueError, TypeError, OverflowError, struct.error) as exc:
        _corrupt(f"malformed pickle in {where}: {exc}")
    return stream.tell()


class _SafeUnpickler(pickle.Unpickler):
    """The C unpickler with the import machinery replaced by :data:`_ALLOWED`."""

    def __init__(self, payload: bytes, on_persistent: Callable[[object], object] | None) -> None:
        super().__init__(io.BytesIO(payload), encoding="utf-8")
        self._on_persistent = on_persistent

    def find_class(self, module: str, name: str) -> Any:
        # Called for GLOBAL, STACK_GLOBAL, INST, OBJ targets and EXT codes alike.
        return _resolve_global(module, name)

    def persistent_load(self, pid: Any) -> Any:
        if self._on_persistent is None:
            _corrupt("malformed pickle: unexpected persistent id")
        return self._on_persistent(pid)


def _unpickle(
    data: bytes, start: int, where: str, on_persistent: Callable[[object], object] | None = None
) -> tuple[object, int]:
    """Pre-scan then unpickle the pickle at ``data[start:]``; return it and its end offset."""
    stream = io.BytesIO(data)
    stream.seek(start)
    end = _prescan(stream, where)
    try:
        return _SafeUnpickler(data[start:end], on_persistent).load(), end
    except ConceptlibError:
        raise
    except RecursionError:
        _corrupt(f"malformed pickle in {where}: nested too deeply")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, OverflowError, UnicodeDecodeError, MemoryError) as exc:  # fmt: skip
        _corrupt(f"malformed pickle in {where}: {type(exc).__name__}: {exc}")


def _ascii(value: object, what: str) -> str:
    if isinstance(value, bytes):  # Python 2 pickles
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            pass
    if not isinstance(value, str):
        _corrupt(f"malformed pickle: {what} is not a string")
    return value


def _parse_storage_pid(pid: object, legacy: bool) -> _StorageRef | type:
    """Decode ``('storage', type, key, location, numel[, view])``; torch writes exactly this."""
    if not isinstance(pid, tuple) or not pid:
        _corrupt("malformed pickle: persistent id is not a tuple")
    typename = _ascii(pid[0], "persistent id type")
    if legacy and typename == "module" and len(pid) == 4:
        # _legacy_save emits ('module', cls, source_file, source) for nn.Module classes.
        if pid[1] is not _ParameterDictStub:
            _unsafe(f"module class {pid[1]!r}")
        return _ParameterDictStub
    if typename != "storage" or len(pid) != (6 if legacy else 5):
        _corrupt(f"malformed pickle: unknown persistent id {typename!r} of length {len(pid)}")
    storage_type, key, location, numel = pid[1:5]
    if not (isinstance(storage_type, _Marker) and storage_type.kind == "storage"):
        _corrupt(f"malformed pickle: storage type {storage_type!r} is not a torch storage")
    if isinstance(key, int) and not isinstance(key, bool):
        key = str(key)
    ref = _StorageRef(
        key=_ascii(key, "storage key"),
        dtype=storage_type.dtype,
        untyped=storage_type.name == "UntypedStorage",
        numel=_nonneg_int(numel, "storage size"),
        # 'cuda:0', 'mps', ... are accepted and ignored: everything is read to the CPU.
        location=_ascii(location, "storage location"),
    )
    view = pid[5] if legacy else None
    if view is not None:
        if not isinstance(view, tuple) or len(view) != 3:
            _corrupt("malformed pickle: bad storage view metadata")
        ref.view_offset = _nonneg_int(view[1], "storage view offset")
        ref.view_numel = _nonneg_int(view[2], "storage view size")
        if ref.view_offset + ref.view_numel > ref.numel:
            _corrupt(
                f"storage view [{ref.view_offset}, +{ref.view_numel}) exceeds its storage of {ref.numel}"
            )
    return ref


# --------------------------------------------------------------------------------------------
# Materialising tensors and turning stand-ins into plain values
# --------------------------------------------------------------------------------------------


class _Materializer:
    """Builds :class:`Tensor` objects from tensor refs, with bounds and memory checks.

    Args:
        fetch: returns the raw bytes of a storage record, already checked to hold at least
            ``ref.nbytes`` bytes.
        big_endian: the zip archive's ``byteorder`` record says ``big``.
        budget: the most bytes all materialised tensors may take together.
    """

    def __init__(
        self, fetch: Callable[[_StorageRef], memoryview], big_endian: bool, budget: int
    ) -> None:
        self._fetch = fetch
        self._big_endian = big_endian
        self._limit = budget
        self._budget = budget

    def tensor(self, ref: _TensorRef) -> Tensor:
        dtype = ref.dtype
        if dtype not in DTYPES:
            raise EmbeddingFileError(f"tensor dtype {dtype} is not supported")
        itemsize = _ITEMSIZE[dtype]
        storage = ref.storage
        if not storage.untyped and storage.dtype != dtype:
            _corrupt(f"malformed pickle: a {dtype} tensor over a {storage.dtype} storage")
        raw = self._fetch(storage)
        # Element window of this storage inside its record (legacy views start further in).
        window_bytes = (
            storage.nbytes if storage.view_numel is None else storage.view_numel * itemsize
        )
        window_start = storage.view_offset * itemsize
        elements = window_bytes // itemsize
        shape, strides, offset = ref.size, ref.stride, ref.offset
        if any(n < 0 for n in shape) or any(s < 0 for s in strides):
            _corrupt(f"tensor has negative size {shape} or stride {strides}")
        count = 1
        for n in shape:
            count *= n
        file_dtype = np.dtype(DTYPES[dtype][0] if dtype != "bool" else "u1")
        if self._big_endian and itemsize > 1:
            file_dtype = file_dtype.newbyteorder(">")
        if count == 0:
            return Tensor(np.zeros(shape, dtype=DTYPES[dtype][0]), dtype)
        last = offset + sum((n - 1) * s for n, s in zip(shape, strides, strict=True))
        if last >= elements:
            _corrupt(
                f"tensor view (offset {offset}, size {shape}, stride {strides}) reaches element "
                f"{last} of a storage of {elements}"
            )
        need = count * itemsize
        if need > self._budget:
            _corrupt(
                f"its tensors would take more than {self._limit} bytes once copied out of their storages"
            )
        self._budget -= need
        base = np.frombuffer(raw, dtype=file_dtype, count=elements, offset=window_start)
        view = np.lib.stride_tricks.as_strided(
            base[offset:],
            shape=shape,
            strides=tuple(s * itemsize for s in strides),
            writeable=False,
        )
        if dtype == "bool":
            return Tensor(np.array(view != 0, order="C"), dtype)
        # One compact copy, converted to little-endian if the file was big-endian.
        return Tensor(np.array(view, dtype=DTYPES[dtype][0], order="C", copy=True), dtype)

    def storage(self, ref: _StorageRef) -> Tensor:
        """A storage saved on its own (not through a tensor) becomes a 1-D tensor."""
        numel = ref.numel if ref.view_numel is None else ref.view_numel
        return self.tensor(_TensorRef(ref, 0, (numel,), (1,), ref.dtype))


def _finalize(obj: object, mat: _Materializer) -> object:
    """Replace every stand-in with a plain value; refuse leftovers and cycles."""
    memo: dict[int, object] = {}
    active: set[int] = set()

    def walk(value: object, depth: int) -> object:
        if value is None or isinstance(value, (bool, int, float, str, bytes)):
            return value
        ident = id(value)
        if ident in memo:
            return memo[ident]
        if ident in active:
            _corrupt("malformed pickle: a self-referencing structure")
        if depth > MAX_NESTING:
            _corrupt(f"malformed pickle: nested deeper than {MAX_NESTING} levels")
        active.add(ident)
        result: object
        if isinstance(value, _TensorRef):
            result = mat.tensor(value)
        elif isinstance(value, _StorageRef):
            result = mat.storage(value)
        elif isinstance(value, Tensor):  # numpy arrays rebuilt by _frombuffer
            result = value
        elif isinstance(value, _NumpyArrayStub):
            result = value.to_tensor()
        elif isinstance(value, _ParameterDictStub):
            result = _parameter_dict(value, lambda v: walk(v, depth + 1))
        elif isinstance(value, _Marker) and value.kind == "dtype":
            result = value.name  # e.g. "torch.float32"
        elif isinstance(value, dict):
            result = {walk(k, depth + 1): walk(v, depth + 1) for k, v in value.items()}
        elif isinstance(value, list):
            result = [walk(v, depth + 1) for v in value]
        elif isinstance(value, tuple):
            result = tuple(walk(v, depth + 1) for v in value)
        elif isinstance(value, (set, frozenset)):
            items = [walk(v, depth + 1) for v in value]
            result = frozenset(items) if isinstance(value, frozenset) else set(items)
        elif isinstance(value, bytearray):
            result = bytes(value)
        else:
            _corrupt(f"malformed pickle: leaves a bare {value!r} in the data")
        active.discard(ident)
        memo[ident] = result
        return result

    try:
        return walk(obj, 0)
    except TypeError as exc:  # e.g. a tensor used as a set member
        _corrupt(f"malformed pickle: {exc}")


def _parameter_dict(
    stub: _ParameterDictStub, walk: Callable[[object], object]
) -> dict[object, object]:
    state = stub.state
    if state is None:
        return {}
    params = state.get("_parameters") or {}
    if not isinstance(params, dict):
        _corrupt("malformed pickle: a ParameterDict's _parameters is not a dict")
    keys = state.get("_keys")
    order = list(keys) if isinstance(keys, dict) else list(params)
    result: dict[object, object] = {}
    for key in order:
        # torch >= 1.12 keeps non-Parameter entries as plain attributes, i.e. in the state.
        value = params[key] if key in params else state.get(key) if isinstance(key, str) else None
        if value is not None:
            result[walk(key)] = walk(value)
    return result


# --------------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------------


def _budget(data: bytes) -> int:
    return len(data) + EXPANSION_ALLOWANCE


def _load_zip(data: bytes) -> object:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        if b"PK\x05\x06" not in data[-(65536 + 22) :]:
            _corrupt("truncated torch zip archive (central directory missing)")
        _corrupt(f"damaged torch zip archive ({exc})")
    except (ValueError, OSError, EOFError, struct.error, NotImplementedError) as exc:
        _corrupt(f"damaged torch zip archive ({exc})")
    with archive:
        infos = {info.filename: info for info in archive.infolist()}
        prefix = _archive_prefix(list(infos))
        view = memoryview(data)

        def record(name: str) -> memoryview:
            info = infos.get(prefix + name)
            if info is None:
                _corrupt(f"torch zip archive lacks its {name} record")
            return _record_bytes(archive, info, view, len(data))

        pkl_info = infos[prefix + "data.pkl"]
        if pkl_info.file_size > MAX_PICKLE_BYTES:
            raise EmbeddingFileError(
                f"data.pkl is {pkl_info.file_size >> 20} MiB; an embedding's pickle is a few KiB"
            )
        big_endian = False
        if prefix + "byteorder" in infos:
            order = bytes(record("byteorder")).strip()
            if order not in (b"little", b"big"):
                _corrupt(f"torch zip archive has an unknown byteorder {order[:16]!r}")
            big_endian = order == b"big"

        def on_persistent(pid: object) -> object:
            ref = _parse_storage_pid(pid, legacy=False)
            if isinstance(ref, _StorageRef):
                # Check the declared size against the central directory now, before anything
                # (including the record itself) is read: a tiny file declaring 10**12 elements
                # fails here.
                info = infos.get(f"{prefix}data/{ref.key}")
                if info is None:
                    _corrupt(f"torch zip archive lacks the storage record data/{ref.key}")
                if ref.nbytes > info.file_size:
                    _corrupt(
                        f"storage data/{ref.key} declares {ref.nbytes} bytes but the archive holds {info.file_size}"
                    )
            return ref

        obj, _ = _unpickle(bytes(record("data.pkl")), 0, "data.pkl", on_persistent)
        cache: dict[str, memoryview] = {}

        def fetch(ref: _StorageRef) -> memoryview:
            if ref.key not in cache:
                cache[ref.key] = record(f"data/{ref.key}")
            raw = cache[ref.key]
            if ref.nbytes > len(raw):
                _corrupt(f"storage data/{ref.key} declares {ref.nbytes} bytes but holds {len(raw)}")
            return raw

        return _finalize(obj, _Materializer(fetch, big_endian, _budget(data)))


def _archive_prefix(names: list[str]) -> str:
    """The folder holding data.pkl: torch uses the first entry's folder, whatever its name."""
    if not names:
        _corrupt("torch zip archive is empty")
    first = names[0]
    candidates = [first[: first.index("/") + 1] if "/" in first else ""]
    candidates += [
        n[: -len("data.pkl")] for n in names if n.endswith("/data.pkl") and n.count("/") == 1
    ]
    candidates.append("")
    for prefix in candidates:
        if prefix + "data.pkl" in names:
            return prefix
    _corrupt("torch zip archive without data.pkl (not a torch.save file)")


def _record_bytes(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, view: memoryview, total: int
) -> memoryview:
    """A record's bytes: a zero-copy slice for stored records (what torch writes), CRC-checked."""
    if info.compress_size > total or (
        info.compress_type == zipfile.ZIP_STORED and info.file_size > total
    ):
        _corrupt(f"truncated torch zip archive ({info.filename} claims {info.file_size} bytes)")
    if info.flag_bits & 0x1:
        _corrupt(f"torch zip archive record {info.filename} is encrypted")
    if info.compress_type != zipfile.ZIP_STORED:
        try:
            return memoryview(archive.read(info))
        except (
            zipfile.BadZipFile,
            EOFError,
            OSError,
            ValueError,
            NotImplementedError,
            RuntimeError,
            zlib.error,
        ) as exc:
            _corrupt(f"damaged torch zip archive ({info.filename}: {exc})")
    start = info.header_offset
    header = bytes(view[start : start + 30])
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        _corrupt(f"damaged torch zip archive (bad local header for {info.filename})")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    begin = start + 30 + name_len + extra_len
    payload = view[begin : begin + info.file_size]
    if len(payload) != info.file_size:
        _corrupt(f"truncated torch zip archive ({info.filename} is cut short)")
    if zlib.crc32(payload) != info.CRC:
        _corrupt(f"damaged torch zip archive ({info.filename} fails its CRC check)")
    return payload


def _load_legacy(data: bytes) -> object:
    magic, pos = _unpickle(data, 0, "the magic number")
    if magic != LEGACY_MAGIC or isinstance(magic, bool):
        _corrupt("a pickle, but not a torch.save file (torch magic number missing)")
    protocol, pos = _unpickle(data, pos, "the protocol version")
    if protocol != LEGACY_PROTOCOL:
        _corrupt(f"unsupported legacy torch protocol version {protocol!r}")
    _sys_info, pos = _unpickle(data, pos, "sys_info")
    refs: dict[str, _StorageRef] = {}

    def on_persistent(pid: object) -> object:
        ref = _parse_storage_pid(pid, legacy=True)
        if isinstance(ref, _StorageRef):
            refs.setdefault(ref.key, ref)
        return ref

    obj, pos = _unpickle(data, pos, "the main pickle", on_persistent)
    keys, pos = _unpickle(data, pos, "the storage key list")
    if not isinstance(keys, list):
        _corrupt("legacy torch file: the storage key list is not a list")
    records: dict[str, memoryview] = {}
    view = memoryview(data)
    for key in keys:
        key = _ascii(str(key) if isinstance(key, int) else key, "storage key")
        ref = refs.get(key)
        if ref is None:
            _corrupt(f"legacy torch file lists storage {key!r} that no tensor uses")
        if pos + 8 > len(data):
            _corrupt(f"truncated legacy torch file (storage {key} missing)")
        (count,) = struct.unpack("<q", data[pos : pos + 8])
        itemsize = 1 if ref.untyped else _ITEMSIZE[ref.dtype]
        if count != ref.numel:
            _corrupt(
                f"legacy storage {key} holds {count} elements but the pickle declares {ref.numel}"
            )
        nbytes = count * itemsize
        # Compare before slicing or allocating: a 400 GB claim in a 1 KB file stops here.
        if nbytes > len(data) - pos - 8:
            _corrupt(
                f"legacy storage {key} declares {nbytes} bytes but only {len(data) - pos - 8} remain"
            )
        records[key] = view[pos + 8 : pos + 8 + nbytes]
        pos += 8 + nbytes

    def fetch(ref: _StorageRef) -> memoryview:
        raw = records.get(ref.key)
        if raw is None:
            _corrupt(f"legacy torch file lacks the data of storage {ref.key}")
        if ref.nbytes > len(raw):
            _corrupt(f"legacy storage {ref.key} declares {ref.nbytes} bytes but holds {len(raw)}")
        return raw

    # The legacy writer always stores little-endian data, whatever the machine.
    return _finalize(obj, _Materializer(fetch, False, _budget(data)))


def _load_bytes(data: bytes) -> object:
    if not data:
        _corrupt("empty file (0 bytes)")
    if data[:2] == b"PK":
        return _load_zip(data)
    if data[:1] == b"\x80" or data[:1] in (b"L", b"I", b"\x8a"):  # PROTO, or protocol 0/1 LONG/INT
        return _load_legacy(data)
    if data[257:262] == b"ustar":
        raise EmbeddingFileError(
            "is a torch < 0.4 tar checkpoint, a format conceptlib does not read"
        )
    raise UnknownFormatError(f"not a torch.save file (first bytes {data[:8]!r})")


def load(path: str | os.PathLike[str], data: bytes | None = None) -> object:
    """Read a ``torch.save`` file (zip or legacy) without torch and without running its code.

    Args:
        path: the file to read; only used in messages when ``data`` is given.
        data: the file's bytes, if the caller has already read them.

    Returns:
        Plain Python values: dict (an ``OrderedDict`` or ``ParameterDict`` becomes a dict in the
        same order), list, tuple, set, str, int, float, bool, None, bytes, and a
        :class:`~conceptlib.tensor.Tensor` for every tensor, Parameter, storage or numpy array.
        A torch dtype object becomes its name (``"torch.float32"``).

    Raises:
        UnsafePickleError: the pickle names something outside the allowlist (nothing ran).
        CorruptFileError: truncated or inconsistent bytes (bad zip, missing record, storage
            smaller than declared, malformed pickle, empty file).
        EmbeddingFileError: a valid file this reader does not support (exotic dtype, huge pickle).
        OSError: ``path`` cannot be read.
    """
    if data is None:
        with open(path, "rb") as handle:
            data = handle.read()
    try:
        return _load_bytes(bytes(data))
    except ConceptlibError as exc:
        if exc.path is not None:
            raise
        raise type(exc)(exc.message, path=path, hint=exc.hint) from exc.__cause__
    except RecursionError:
        raise CorruptFileError("malformed pickle: nested too deeply", path=path) from None
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, KeyError, IndexError, TypeError,
            ValueError, AttributeError, OverflowError, struct.error, zlib.error) as exc:  # fmt: skip
        # Belt and braces: every path above maps its own errors; this keeps raw ones inside.
        raise CorruptFileError(
            f"damaged torch file ({type(exc).__name__}: {exc})", path=path
        ) from exc


# --------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------


def _encode_long(value: int) -> bytes:
    """Two's-complement little-endian bytes as pickle's LONG1 wants (same as ``pickle.encode_long``)."""
    if value == 0:
        return b""
    nbytes = (value.bit_length() >> 3) + 1
    result = value.to_bytes(nbytes, "little", signed=True)
    if value < 0 and nbytes > 1 and result[-1] == 0xFF and (result[-2] & 0x80) != 0:
        result = result[:-1]
    return result


class _PickleWriter:
    """Emits the protocol-2 opcodes ``torch.save`` would, without importing torch.

    Python's pickler cannot be used: writing ``torch._utils._rebuild_tensor_v2`` as a GLOBAL makes
    it import torch to check the name. The memo is numbered exactly as Python's pickler numbers
    it (every dict, list, non-empty tuple, str, global and REDUCE result gets a ``BINPUT``), so
    for ordinary embedding dicts the pickle is byte-identical to torch's. Strings and globals are
    memoised by value rather than identity, so equal inputs always give equal bytes.
    """

    def __init__(self) -> None:
        self.out = bytearray()
        self.memo: dict[tuple[str, object], int] = {}
        self.storages: list[tuple[str, bytes]] = []
        self._next = 0
        self._keep: list[object] = []  # keeps ids unique while writing (see save_tensor)
        self._active: set[int] = set()

    def dump(self, obj: object) -> bytes:
        self.out += pickle.PROTO + b"\x02"
        self.save(obj)
        self.out += pickle.STOP
        return bytes(self.out)

    def _memo_put(self, key: tuple[str, object] | None = None) -> None:
        index = self._next
        self._next += 1
        if key is not None:
            self.memo[key] = index
        self.out += (
            pickle.BINPUT + bytes([index])
            if index < 256
            else pickle.LONG_BINPUT + struct.pack("<I", index)
        )

    def _memo_get(self, key: tuple[str, object]) -> bool:
        index = self.memo.get(key)
        if index is None:
            return False
        self.out += (
            pickle.BINGET + bytes([index])
            if index < 256
            else pickle.LONG_BINGET + struct.pack("<I", index)
        )
        return True

    def save_global(self, module: str, name: str) -> None:
        key = ("g", f"{module}\n{name}")
        if not self._memo_get(key):
            self.out += pickle.GLOBAL + f"{module}\n{name}\n".encode("ascii")
            self._memo_put(key)

    def save_str(self, value: str) -> None:
        key = ("s", value)
        if not self._memo_get(key):
            encoded = value.encode("utf-8", "surrogatepass")
            self.out += pickle.BINUNICODE + struct.pack("<I", len(encoded)) + encoded
            self._memo_put(key)

    def save_int(self, value: int) -> None:
        if 0 <= value <= 0xFF:
            self.out += pickle.BININT1 + bytes([value])
        elif 0 <= value <= 0xFFFF:
            self.out += pickle.BININT2 + struct.pack("<H", value)
        elif -0x80000000 <= value <= 0x7FFFFFFF:
            self.out += pickle.BININT + struct.pack("<i", value)
        else:
            encoded = _encode_long(value)
            if len(encoded) < 256:
                self.out += pickle.LONG1 + bytes([len(encoded)]) + encoded
            else:
                self.out += pickle.LONG4 + struct.pack("<i", len(encoded)) + encoded

    def save_tuple(self, items: tuple[object, ...]) -> None:
        if not items:
            self.out += pickle.EMPTY_TUPLE  # Python never memoises the empty tuple
            return
        if len(items) > 3:
            self.out += pickle.MARK
        for item in items:
            self.save(item)
        self.out += (
            pickle.TUPLE
            if len(items) > 3
            else (pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3)[len(items) - 1]
        )
        self._memo_put()

    def save(self, obj: object) -> None:
        if obj is None:
            self.out += pickle.NONE
        elif obj is True or obj is False:
            self.out += pickle.NEWTRUE if obj else pickle.NEWFALSE
        elif isinstance(obj, int):
            self.save_int(int(obj))
        elif isinstance(obj, float):
            self.out += pickle.BINFLOAT + struct.pack(">d", obj)
        elif isinstance(obj, str):
            self.save_str(str(obj))
        elif isinstance(obj, (bytes, bytearray)):
            # What Python writes for bytes at protocol 2, and what torch's weights_only accepts.
            self.save_global("_codecs", "encode")
            self.save_tuple((bytes(obj).decode("latin-1"), "latin1"))
            self.out += pickle.REDUCE
            self._memo_put()
        elif isinstance(obj, Tensor):
            self.save_tensor(obj)
        elif isinstance(obj, np.ndarray):
            tensor = Tensor.from_numpy(obj)
            self._keep.append(tensor)
            self.save_tensor(tensor)
        elif isinstance(obj, np.generic):
            self.save(obj.item())
        elif isinstance(obj, (dict, list, tuple)):
            self.save_container(obj)
        else:
            raise TypeError(f"cannot write a {type(obj).__name__} to a torch pickle")

    def save_container(self, obj: dict[object, object] | list[object] | tuple[object, ...]) -> None:
        ident = id(obj)
        if ident in self._active:
            raise ValueError("cannot write a self-referencing structure to a torch pickle")
        self._active.add(ident)
        if isinstance(obj, tuple):
            self.save_tuple(obj)
        elif isinstance(obj, dict):
            self.out += pickle.EMPTY_DICT
            self._memo_put()
            self._batched(list(obj.items()), pickle.SETITEM, pickle.SETITEMS)
        else:
            self.out += pickle.EMPTY_LIST
            self._memo_put()
            self._batched(list(obj), pickle.APPEND, pickle.APPENDS)
        self._active.discard(ident)

    def _batched(self, items: list[Any], one: bytes, many: bytes) -> None:
        # Same batching as Python's pickler: SETITEM/APPEND for one, MARK...SETITEMS per 1000.
        pair = one == pickle.SETITEM
        for start in range(0, len(items), 1000):
            batch = items[start : start + 1000]
            if len(batch) > 1:
                self.out += pickle.MARK
            for item in batch:
                if pair:
                    self.save(item[0])
                    self.save(item[1])
                else:
                    self.save(item)
            self.out += many if len(batch) > 1 else one

    def save_tensor(self, tensor: Tensor) -> None:
        if tensor.dtype not in DTYPES:
            raise ValueError(f"unsupported dtype {tensor.dtype!r}")
        # The same Tensor object twice is written once and referenced, as torch does.
        if self._memo_get(("t", id(tensor))):
            return
        key = str(len(self.storages))
        self.storages.append((key, tensor.tobytes()))
        shape = tensor.shape
        stride = tuple(int(np.prod(shape[i + 1 :], dtype=np.int64)) for i in range(len(shape)))
        numel = int(np.prod(shape, dtype=np.int64)) if shape else 1
        # torch._utils._rebuild_tensor_v2(
        #     persistent_load(('storage', torch.<T>Storage, key, 'cpu', numel)),
        #     0, size, stride, False, collections.OrderedDict())
        self.save_global("torch._utils", "_rebuild_tensor_v2")
        self.out += pickle.MARK + pickle.MARK
        self.save_str("storage")
        self.save_global("torch", DTYPES[tensor.dtype][2])
        self.save_str(key)
        self.save_str("cpu")
        self.save_int(numel)
        self.out += pickle.TUPLE
        self._memo_put()
        self.out += pickle.BINPERSID
        self.save_int(0)
        self.save_tuple(shape)
        self.save_tuple(stride)
        self.out += pickle.NEWFALSE
        self.save_global("collections", "OrderedDict")
        self.out += pickle.EMPTY_TUPLE + pickle.REDUCE
        self._memo_put()
        self.out += pickle.TUPLE
        self._memo_put()
        self.out += pickle.REDUCE
        self._memo_put(("t", id(tensor)))


def _write_aligned(archive: zipfile.ZipFile, buffer: io.BytesIO, name: str, payload: bytes) -> None:
    """Add a stored record whose data starts at a multiple of 64, as torch's writer does.

    The padding goes into the local header's extra field under torch's own id ``FB`` (0x4246),
    filled with ``Z``; ``torch.load(mmap=True)`` maps records in place and wants this alignment.
    """
    offset = buffer.seek(0, io.SEEK_END)
    info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
    info.compress_type = zipfile.ZIP_STORED
    info.create_system = 0  # fixed, so the bytes do not depend on the OS that wrote them
    info.file_size = len(payload)
    # zipfile appends a 20-byte zip64 extra to the local header for (nearly) 4 GiB records.
    zip64 = len(payload) * 1.05 > zipfile.ZIP64_LIMIT
    fixed = 30 + len(name.encode("utf-8")) + 4 + (20 if zip64 else 0)
    pad = -(offset + fixed) % STORAGE_ALIGNMENT
    info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
    with archive.open(info, mode="w", force_zip64=zip64) as handle:
        handle.write(payload)
    # Internal check: the arithmetic above matches what zipfile wrote.
    name_len, extra_len = struct.unpack("<HH", buffer.getbuffer()[offset + 26 : offset + 30])
    if (offset + 30 + name_len + extra_len) % STORAGE_ALIGNMENT:
        raise AssertionError(f"record {name} is not {STORAGE_ALIGNMENT}-byte aligned")


def dumps(obj: object, *, archive_name: str = "archive") -> bytes:
    """Serialise ``obj`` to the bytes ``torch.save`` would write (zip format).

    Args:
        obj: dicts, lists, tuples, str, int, float, bool, None, bytes and
            :class:`~conceptlib.tensor.Tensor` (numpy arrays are accepted as tensors).
        archive_name: the folder inside the zip (torch uses ``archive``).

    Returns:
        The file's bytes; the same input always gives the same bytes.

    Raises:
        TypeError: ``obj`` contains a value of another type.
        ValueError: a self-referencing structure or a bad ``archive_name``.
    """
    if not archive_name or any(c in archive_name for c in "/\\\n\r\0"):
        raise ValueError(f"bad archive name {archive_name!r}")
    writer = _PickleWriter()
    pickled = writer.dump(obj)
    digest = hashlib.sha256(pickled)
    for _key, payload in writer.storages:
        digest.update(payload)
    # torch stores a random 40-digit id; derive it from the content to stay deterministic.
    serialization_id = str(int.from_bytes(digest.digest()[:16], "big")).zfill(40).encode("ascii")
    records = [("data.pkl", pickled), ("byteorder", b"little")]
    records += [(f"data/{key}", payload) for key, payload in writer.storages]
    records += [("version", b"3\n"), (".data/serialization_id", serialization_id)]
    # No .format_version record: with it, torch may compute record offsets assuming miniz's
    # data descriptors, which Python's zipfile (writing to a seekable buffer) does not emit.
    buffer = io.BytesIO()
    with zipfile.ZipFile(
        buffer, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True
    ) as archive:
        for name, payload in records:
            _write_aligned(archive, buffer, f"{archive_name}/{name}", payload)
    return buffer.getvalue()


def dump(obj: object, path: str | os.PathLike[str], *, archive_name: str = "archive") -> None:
    """Write ``obj`` to ``path`` as a torch zip file, atomically (see :func:`dumps`).

    Args:
        obj: the value to write (see :func:`dumps`).
        path: the destination; replaced only once the whole file is written.
        archive_name: the folder inside the zip.
    """
    data = dumps(obj, archive_name=archive_name)
    with atomic_open(path) as handle:
        handle.write(data)
