"""Read and write ``torch.save`` files without torch and without ever running code from them.

A ``.pt``/``.bin`` file is a pickle, and a pickle is a small program: its ``GLOBAL`` and
``REDUCE`` opcodes import and call whatever the author chose. This module never lets that
happen. Every name a pickle asks for is looked up in :data:`_ALLOWED`, a table of *local*
stand-ins (for ``torch._utils._rebuild_tensor_v2``, ``collections.OrderedDict``, the storage
type markers, ...) that only record their arguments; nothing outside the table is ever imported
or returned, so a payload such as ``os.system`` fails with :class:`UnsafePickleError` before a
single byte of it runs.

The pickle is run by :class:`_SafeUnpickler`, Python's reference (pure-Python) unpickler with
every opcode that can cost more than its own bytes replaced by a checked version, so a file of
N bytes is read or refused in O(N) time and memory, whatever it claims:

* at most :data:`MAX_PICKLE_OPCODES` opcodes, :data:`MAX_NESTING` open MARKs and tuple levels,
  and :data:`MAX_PICKLE_STEPS` further steps (arguments checked, keys hashed, values rebuilt);
* no allocation from a declared length (frames, byte arrays, integers) before the bytes are
  there, integers of at most :data:`MAX_INT_BYTES`, memo indices near the opcode count;
* dict and set keys whose hash an attacker can choose (ints, tuples) cannot pile up on one
  hash value, so inserting them stays O(1);
* BUILD, REDUCE and object creation only on the stand-ins, never on plain containers.

Tensors come back as :class:`conceptlib.tensor.Tensor`: the storage bytes are bounds-checked
against what the file really holds *before* anything is allocated, and every tensor view
(offset, size, stride) is materialised as a compact C-contiguous copy. All tensors together
may take the file's own size plus :data:`MAX_EXPANSION_BYTES`, so stride-0 broadcasts and one
storage viewed many times cannot turn a few KB into gigabytes.

Two containers are read:

* the zip format of torch >= 1.6: ``<dir>/data.pkl``, ``<dir>/data/<key>``, ``<dir>/version``,
  maybe ``<dir>/byteorder``; ``<dir>`` is ``archive`` for recent torch but older versions used
  the file's stem (``negative_hand/``, ``_EmbeddingMerge_temp/``), so any single folder works.
  The central directory is sized from its end record before it is parsed, and a record is
  never inflated past what it may hold (:func:`_record_bytes`);
* the legacy format (``_use_new_zipfile_serialization=False``): five pickles in a row (magic
  number, protocol 1001, sys_info, the object, the storage keys) followed by each storage as an
  8-byte little-endian element count and its raw little-endian bytes. Pickles of protocol 0
  and 1 are read too (protocol 0 writes each storage's persistent id as text).

Tensors saved from devices without storage (Apple ``mps`` with torch <= 1.13, ``xla``, ...)
are rebuilt from the numpy array or CPU tensor the pickle carries, still without numpy or torch
running anything from the file.

The writer emits the zip format byte-compatible with ``torch.save`` (protocol-2 pickle with the
same opcodes, storage records aligned to 64 bytes), so ``torch.load(weights_only=True)`` and
``torch.load(mmap=True)`` both accept it.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import pickle
import re
import struct
import zipfile
import zlib
from collections.abc import Callable
from typing import Any, ClassVar, Literal, NoReturn

import numpy as np

from conceptlib._atomic import atomic_open
from conceptlib._terminal import printable
from conceptlib.errors import (
    ConceptlibError,
    CorruptFileError,
    EmbeddingFileError,
    ResourceLimitError,
    UnknownFormatError,
    UnsafePickleError,
)
from conceptlib.tensor import DTYPES, STORAGE_TO_DTYPE, Tensor

__all__ = ["dump", "dumps", "load"]

# --------------------------------------------------------------------------------------------
# Limits. Each is far above what any real embedding (or model checkpoint, which
# conceptlib.models reads with this module too) needs, and low enough that hitting it costs
# well under a second and a few tens of MB.
# --------------------------------------------------------------------------------------------

#: The most vectors a concept may have: A1111 encodes prompts in chunks of 75 tokens and the
#: largest real files hold 75 vectors; 1,000 leaves room for a concept spanning many chunks.
MAX_CONCEPT_VECTORS = 1_000
#: The widest text encoder a concept may target: T5-XXL (SD3, Flux) is 4,096 wide, more than
#: SD 1.x (768), SD 2.x (1,024) and SDXL (768 + 1,280) together.
MAX_ENCODER_WIDTH = 4_096
#: How many bytes the tensors of a file may take beyond the file's own size: the largest
#: concept above in float64, the widest dtype read (1,000 x 4,096 x 8 = 32,768,000 bytes).
#: Only stride-0 broadcasts, one storage viewed many times and compressed records expand; a
#: plain file's tensors are its own bytes, so full checkpoints still load.
MAX_EXPANSION_BYTES = MAX_CONCEPT_VECTORS * MAX_ENCODER_WIDTH * 8
#: The largest pickle read (data.pkl, or one legacy pickle). Real ones are a few hundred bytes,
#: a checkpoint's a few MB; vectors saved from ``mps`` carry their bytes inside the pickle,
#: as latin-1 text in UTF-8 (up to 2 bytes per byte), hence twice the largest concept.
MAX_PICKLE_BYTES = 2 * MAX_EXPANSION_BYTES + 2**20
#: Opcodes a file's pickles may run in all. An embedding needs under 200 and an SDXL
#: checkpoint about 85,000 (32 per tensor); each opcode creates at most one small object (a
#: set, 216 bytes, is the largest), so this bounds the unpickler to about 0.7 s and 150 MB.
MAX_PICKLE_OPCODES = 2**18
#: Work beyond the opcodes: arguments checked, tuple keys hashed, values rebuilt by
#: :func:`_finalize`. Real files need about as many steps as opcodes.
MAX_PICKLE_STEPS = 2**20
#: Open MARKs, tuple levels and container levels: real embedding state is 3-4 levels deep.
MAX_NESTING = 200
#: Bytes of one pickled integer (LONG4, or digits of a protocol-0 INT/LONG): converting a long
#: integer to text is quadratic, and no torch file holds one longer than its 10-byte magic.
MAX_INT_BYTES = 256
#: Distinct keys one dict or set may hold with one hash value. Python's own hashes of ints and
#: tuples are predictable, so without this a file could make every insertion O(n).
MAX_SAME_HASH = 8
#: ``byteorder`` holds ``little`` or ``big``.
MAX_SMALL_RECORD_BYTES = 64
#: Entries a torch zip may have: one per storage plus a handful; an SDXL checkpoint has about
#: 2,600. zipfile builds an object per entry, so a bigger directory is refused before parsing.
MAX_ZIP_ENTRIES = 16_384
#: Bytes of central directory read: 256 per entry allows long names and the 64-byte padding
#: torch's writer adds; even 46-byte minimal entries then make at most 91,000 objects.
MAX_CENTRAL_DIRECTORY_BYTES = MAX_ZIP_ENTRIES * 256
#: Largest tensor dimension product (zero dimensions counted as one): numpy refuses beyond it.
_MAX_EXTENT = 2**62
# Python's pickler numbers memo entries consecutively, so an index far beyond the number of
# opcodes seen is not from a real pickler.
_MEMO_SLACK = 1024

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
#: How protocols 0 and 1 write the legacy magic number (Python 2 and 3 alike).
LEGACY_TEXT_MAGIC = b"L%dL\n." % LEGACY_MAGIC
STORAGE_ALIGNMENT = 64  # torch's writer (and mmap=True) want record data at multiples of 64
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)

_ITEMSIZE: dict[str, int] = {name: np.dtype(spec[0]).itemsize for name, spec in DTYPES.items()}


def _unsafe(what: str) -> NoReturn:
    raise UnsafePickleError(
        f"refuses to load: the pickle asks for {what}, which is not an embedding type; nothing was executed"
    )


def _corrupt(message: str) -> NoReturn:
    raise CorruptFileError(message)


def _show(value: object) -> str:
    """A file-controlled value for a message: quoted and cut if text, else only its kind.

    Never a full ``repr``: a pickled value can be megabytes long or a structure whose repr
    doubles at every level.
    """
    if isinstance(value, str):
        return f"'{printable(value)}'"
    if isinstance(value, (bytes, bytearray)):
        return printable(repr(bytes(value[:64])))
    if value is None or isinstance(value, (bool, float)):
        return repr(value)
    if isinstance(value, int):
        return printable(value) if value.bit_length() <= 8 * MAX_INT_BYTES else "a huge integer"
    if isinstance(value, (_Marker, _SafeCallable)):
        return repr(value)  # names from the allowlist, never from the file
    if isinstance(value, type):
        return f"the class {value.__name__.lstrip('_')}"
    return f"a {type(value).__name__.lstrip('_')}"


# --------------------------------------------------------------------------------------------
# Local stand-ins for the globals a torch pickle may name.
#
# Each is a plain slotted object whose ``__setstate__`` refuses (except those that expect a
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

    def __setstate__(self, state: object) -> None:
        # A Module's state_dict() is an OrderedDict carrying a ``_metadata`` attribute (module
        # versions), which torch pickles as a BUILD with the instance dict; it is not data.
        if not isinstance(state, dict):
            _corrupt("malformed pickle: an OrderedDict's state is not a dict")


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
            _unsafe(f"a numpy array of dtype {_show(spec)}")
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
    """A pickled numpy array, kept as shape, dtype and raw data until :func:`_finalize`.

    ``numpy.core.multiarray._reconstruct`` creates it and BUILD fills it in; ``raw`` is kept as
    the pickle gave it (bytes, or latin-1 text from Python 2 and ``_codecs.encode``) so that
    nothing is copied before the tensor budget has been charged.
    """

    __slots__ = ("shape", "dtype", "fortran", "raw")

    def __init__(self) -> None:
        self.shape: tuple[int, ...] | None = None
        self.dtype: _NumpyDtypeStub | None = None
        self.fortran = False
        self.raw: bytes | bytearray | str = b""

    def __setstate__(self, state: object) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            _corrupt("malformed pickle: bad numpy array state")
        _version, shape, dtype, fortran, raw = state if len(state) == 5 else (1, *state)
        self.fill(shape, dtype, fortran, raw)

    def fill(self, shape: object, dtype: object, fortran: object, raw: object) -> None:
        """Check and keep the array's description; the data is converted only when used."""
        if not isinstance(dtype, _NumpyDtypeStub):
            _corrupt("malformed pickle: numpy array without a dtype")
        if not isinstance(raw, (bytes, bytearray, str)):
            _unsafe("a numpy object array")
        self.shape = _int_tuple(shape, "numpy array shape")
        self.dtype = dtype
        self.fortran = bool(fortran)
        self.raw = raw


class _DeviceTensorRef(_Sealed):
    """A tensor torch rebuilt from a numpy array (``_rebuild_device_tensor_from_numpy``)."""

    __slots__ = ("array", "dtype")

    def __init__(self, array: _NumpyArrayStub, dtype: str) -> None:
        self.array = array
        self.dtype = dtype


def _int_tuple(value: object, what: str) -> tuple[int, ...]:
    # The length is checked first so a memoised million-element tuple costs nothing per use.
    if not isinstance(value, (tuple, list)) or len(value) > 64:
        _corrupt(f"malformed pickle: {what} is not a tuple of at most 64 integers")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        _corrupt(f"malformed pickle: {what} is not a tuple of integers")
    return tuple(value)


def _nonneg_int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        _corrupt(f"malformed pickle: {what} is not a non-negative integer")
    return value


def _check_shape(shape: tuple[int, ...], itemsize: int, what: str) -> int:
    """Return the element count of ``shape``, refusing negative or numpy-impossible sizes."""
    if any(n < 0 for n in shape):
        _corrupt(f"{what} has a negative size {printable(shape)}")
    # numpy refuses an extent past 2**62 bytes even when one dimension is 0.
    if math.prod(max(n, 1) for n in shape) * itemsize > _MAX_EXTENT:
        _corrupt(f"{what} has an impossible size {printable(shape)}")
    return math.prod(shape)


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
    size_t = _int_tuple(size, "tensor size")  # at most 64 dimensions, numpy's limit
    stride_t = _int_tuple(stride, "tensor stride")
    if len(size_t) != len(stride_t):
        _corrupt(
            f"malformed pickle: tensor size {printable(size_t)} and stride {printable(stride_t)} differ in rank"
        )
    return _TensorRef(storage, _nonneg_int(offset, "storage offset"), size_t, stride_t, dtype)


def _check_metadata(metadata: object) -> None:
    # torch passes {'neg': True}/{'conj': True} for lazily negated/conjugated views only.
    if not metadata:
        return
    if not isinstance(metadata, dict) or len(metadata) > 8:
        _corrupt("malformed pickle: tensor metadata is not a small dict")
    if any(metadata.values()):
        keys = ", ".join(_show(k) for k in metadata)
        raise EmbeddingFileError(f"tensor metadata {{{keys}}} (a neg/conj view) is not supported")


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


def _rebuild_device_tensor_from_numpy(
    data: object, dtype: object, device: object, requires_grad: object = False
) -> _DeviceTensorRef:
    # torch <= 1.13 saved tensors of storage-less devices (Apple 'mps', 'xla', ...) as
    # (tensor.cpu().numpy(), dtype, device, requires_grad); bfloat16 went through float32.
    if not isinstance(data, _NumpyArrayStub):
        _corrupt("malformed pickle: _rebuild_device_tensor_from_numpy without a numpy array")
    if not (isinstance(dtype, _Marker) and dtype.kind == "dtype"):
        _corrupt("malformed pickle: _rebuild_device_tensor_from_numpy without a torch dtype")
    return _DeviceTensorRef(data, dtype.dtype)


def _rebuild_device_tensor_from_cpu_tensor(
    data: object, dtype: object, device: object, requires_grad: object = False
) -> _TensorRef:
    # torch >= 2.2 does the same with tensor.cpu() in place of the numpy array.
    if not isinstance(data, _TensorRef):
        _corrupt("malformed pickle: _rebuild_device_tensor_from_cpu_tensor without a tensor")
    if not (isinstance(dtype, _Marker) and dtype.kind == "dtype") or dtype.dtype != data.dtype:
        _corrupt("malformed pickle: _rebuild_device_tensor_from_cpu_tensor changes the dtype")
    return data


def _rebuild_from_type_v2(func: object, new_type: object, args: object, state: object) -> Any:
    # torch uses this for tensors that carry Python attributes; the attributes are dropped.
    if func not in _REBUILD_CALLABLES or not (
        isinstance(new_type, _Marker) and new_type.kind == "tensor-class"
    ):
        _unsafe(f"torch._tensor._rebuild_from_type_v2 of {_show(func)}")
    if not isinstance(args, tuple) or len(args) > 8:
        _corrupt("malformed pickle: _rebuild_from_type_v2 arguments are not a short tuple")
    assert isinstance(func, _SafeCallable)
    return func(*args)


def _codecs_encode(obj: object, encoding: object = "utf-8") -> bytes:
    # Protocol 2 has no bytes opcode, so Python 3 pickles bytes as _codecs.encode(str, 'latin1').
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        _unsafe(f"_codecs.encode with encoding {_show(encoding)}")
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
        _unsafe(f"copyreg._reconstructor of {_show(cls)}")
    return _ParameterDictStub()


def _numpy_reconstruct(
    subtype: object, shape: object = (0,), dtype: object = b"b"
) -> _NumpyArrayStub:
    if subtype is not _NDARRAY:
        _unsafe(f"numpy.core.multiarray._reconstruct of {_show(subtype)}")
    return _NumpyArrayStub()


def _numpy_scalar(dtype: object, raw: object = None) -> int | float | bool:
    if not isinstance(dtype, _NumpyDtypeStub):
        _unsafe(f"numpy.core.multiarray.scalar of {_show(dtype)}")
    # The length first: encoding a huge str would copy it before the check.
    if not isinstance(raw, (bytes, bytearray, str)) or len(raw) != dtype.numpy().itemsize:
        _corrupt("malformed pickle: bad numpy scalar")
    return _numpy_array(_scalar_stub(dtype, raw)).item()


def _scalar_stub(dtype: _NumpyDtypeStub, raw: bytes | bytearray | str) -> _NumpyArrayStub:
    stub = _NumpyArrayStub()
    stub.fill((), dtype, False, raw)
    return stub


def _numpy_frombuffer(
    buf: object, dtype: object, shape: object, order: object = "C"
) -> _NumpyArrayStub:
    # numpy's protocol-5 reduce; the array is materialised (and paid for) in _finalize.
    if not isinstance(dtype, _NumpyDtypeStub) or not isinstance(buf, (bytes, bytearray)):
        _unsafe("numpy.core.numeric._frombuffer of a non-bytes buffer")
    stub = _NumpyArrayStub()
    stub.fill(shape, dtype, order == "F", buf)
    return stub


def _numpy_array(stub: _NumpyArrayStub) -> np.ndarray:
    """The array a filled stub describes, little-endian, C order (bool as ``bool``)."""
    if stub.shape is None or stub.dtype is None:
        _corrupt("malformed pickle: numpy array never received its data")
    np_dtype = stub.dtype.numpy()
    count = _check_shape(stub.shape, np_dtype.itemsize, "numpy array")
    if count * np_dtype.itemsize != len(stub.raw):
        _corrupt(
            f"malformed pickle: numpy array of shape {printable(stub.shape)} holds {len(stub.raw)} bytes"
        )
    raw = stub.raw
    if isinstance(raw, str):
        try:
            raw = raw.encode("latin-1")
        except UnicodeEncodeError:
            _corrupt("malformed pickle: numpy array data is not latin-1 text")
    arr = np.frombuffer(raw, dtype=np_dtype, count=count).reshape(
        stub.shape, order="F" if stub.fortran else "C"
    )
    if stub.dtype.name == "bool":
        return np.ascontiguousarray(arr != 0)
    return np.array(arr, dtype=DTYPES[stub.dtype.name][0], order="C")


def _float32_to_bfloat16(values: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns of float32 values, rounded to nearest even as torch rounds."""
    bits = np.ascontiguousarray(values, dtype="<f4").view("<u4")
    rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
    # A NaN keeps its sign and stays a (quiet) NaN instead of rounding into infinity.
    quiet = (bits >> 16) | 0x0040
    return np.where(np.isnan(values), quiet, rounded).astype("<u2")


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
    devices: dict[str, Callable[..., Any]] = {
        "_rebuild_device_tensor_from_numpy": _rebuild_device_tensor_from_numpy,
        "_rebuild_xla_tensor": _rebuild_device_tensor_from_numpy,  # its older name
        "_rebuild_device_tensor_from_cpu_tensor": _rebuild_device_tensor_from_cpu_tensor,
    }
    for name, fn in devices.items():
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
# Classes a pickle may instantiate (NEWOBJ, INST, OBJ, or REDUCE on the class).
_CLASSES: tuple[type, ...] = (_PickledDict, _PickledSet, _ParameterDictStub, _ParameterStub)
# Objects BUILD may update: their own __setstate__ checks the state (or refuses it).
_BUILDABLE: tuple[type, ...] = (_Sealed, _ParameterDictStub, _NumpyDtypeStub, _NumpyArrayStub)
# Python 2 module names that protocol <= 2 pickles still use (Python 3 writes them for compat).
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


def _resolve_global(module: object, name: object) -> object:
    if not isinstance(module, str) or not isinstance(name, str):
        _corrupt("malformed pickle: a global name is not a string")
    found = _ALLOWED.get((_PY2_MODULES.get(module, module), name))
    if found is None:
        _unsafe(f"{printable(module)}.{printable(name)}")
    return found


# --------------------------------------------------------------------------------------------
# The budget of one file, and the restricted unpickler
# --------------------------------------------------------------------------------------------


class _Budget:
    """What reading one file may still cost; every counter is charged before the work is done.

    Args:
        size: the file's size in bytes; bytes copied, record bytes read and tensor bytes may
            each add up to it plus :data:`MAX_EXPANSION_BYTES`.
    """

    __slots__ = ("opcodes", "steps", "copied", "read", "tensors", "allowance")

    def __init__(self, size: int) -> None:
        self.opcodes = MAX_PICKLE_OPCODES
        self.steps = MAX_PICKLE_STEPS
        self.allowance = size + MAX_EXPANSION_BYTES
        self.copied = self.allowance
        self.read = self.allowance
        self.tensors = self.allowance

    def step(self, count: int) -> None:
        """Charge ``count`` steps of work (elements checked, key parts hashed, values built)."""
        self.steps -= count
        if self.steps < 0:
            raise ResourceLimitError(
                f"its pickle takes more than {MAX_PICKLE_STEPS:,} steps to rebuild (values shared "
                "or repeated many times); an embedding's takes a few hundred"
            )

    def copy(self, nbytes: int) -> None:
        """Charge bytes that a stand-in copies while unpickling (``_codecs.encode``, ...)."""
        self.copied -= nbytes
        if self.copied < 0:
            raise ResourceLimitError(
                f"its pickle copies more than {self.allowance:,} bytes while unpickling "
                "(the same data encoded over and over)"
            )

    def record(self, nbytes: int, name: str) -> None:
        """Charge the bytes of a zip record about to be checked or inflated."""
        self.read -= nbytes
        if self.read < 0:
            raise ResourceLimitError(
                f"its zip records add up to more than {self.allowance:,} bytes once inflated "
                f"(at {printable(name)}): a decompression bomb or overlapping records"
            )


class _Stopped(Exception):
    """Raised by the STOP opcode to end :meth:`_SafeUnpickler.load` with the pickle's value."""

    def __init__(self, value: object) -> None:
        super().__init__()
        self.value = value


_Handler = Callable[["_SafeUnpickler"], None]
# Python's reference unpickler: slower than the C one, but every opcode can be checked, and a
# pickle of at most MAX_PICKLE_OPCODES opcodes runs in well under a second.
_Reference: Any = pickle._Unpickler


class _SafeUnpickler(_Reference):
    """Python's reference unpickler with imports replaced by :data:`_ALLOWED` and costs bounded.

    Args:
        stream: the bytes, positioned at the pickle's first opcode.
        budget: the file's budget, shared by all its pickles.
        on_persistent: turns a persistent id into a storage reference (None: refuse them).
        end: the stream position past which the pickle is too large.
        size: the stream's length (asking the stream would make it copy the shared bytes).
    """

    dispatch: ClassVar[dict[int, _Handler]] = dict(_Reference.dispatch)

    def __init__(
        self,
        stream: io.BytesIO,
        budget: _Budget,
        on_persistent: Callable[[object], object] | None,
        end: int,
        size: int,
    ) -> None:
        super().__init__(stream, encoding="utf-8")
        self._size = size
        self._stream = stream
        self._budget = budget
        self._on_persistent = on_persistent
        self._end = end
        self._opcodes = 0
        # id(container) -> (container, {hash: distinct keys}) for keys of predictable hash; the
        # container is kept so that its id cannot be reused by a later one.
        self._hashes: dict[int, tuple[object, dict[int, int]]] = {}

    def load(self) -> object:
        """Run the pickle; return its value and leave the stream just past its STOP."""
        stream = self._stream
        # Frames are only a buffering hint, so the stream is read directly (FRAME is checked
        # and skipped); this also keeps the stream position exact for the legacy format.
        self.read = stream.read
        self.readline = stream.readline
        self.readinto = stream.readinto
        self.metastack: list[list[Any]] = []
        self.stack: list[Any] = []
        self.append = self.stack.append
        self.proto = 0
        dispatch = self.dispatch
        budget = self._budget
        try:
            while True:
                key = stream.read(1)
                if not key:
                    _corrupt("malformed pickle: truncated (no STOP opcode)")
                budget.opcodes -= 1
                if budget.opcodes < 0:
                    raise ResourceLimitError(
                        f"its pickle runs more than {MAX_PICKLE_OPCODES:,} opcodes; an embedding's runs a few hundred"
                    )
                self._opcodes += 1
                handler = dispatch.get(key[0])
                if handler is None:
                    _corrupt(f"malformed pickle: unknown opcode 0x{key[0]:02x}")
                handler(self)
                if stream.tell() > self._end:
                    raise ResourceLimitError(
                        f"its pickle is larger than {MAX_PICKLE_BYTES:,} bytes; an embedding's is a few KB"
                    )
        except _Stopped as stop:
            return stop.value

    def find_class(self, module: str, name: str) -> Any:
        # Called for GLOBAL, STACK_GLOBAL and INST; EXT codes are refused before they get here.
        return _resolve_global(module, name)

    def persistent_load(self, pid: Any) -> Any:
        if self._on_persistent is None:
            _corrupt("malformed pickle: unexpected persistent id")
        return self._on_persistent(pid)

    # ----- opcodes whose argument could be expensive ------------------------------------------

    def _line_number(self, what: str) -> bytes:
        """A protocol-0 number argument, bounded before Python parses it (that is quadratic)."""
        line = self.readline(MAX_INT_BYTES + 2)
        if not line.endswith(b"\n"):
            if len(line) > MAX_INT_BYTES:
                raise ResourceLimitError(
                    f"its pickle holds {what} of more than {MAX_INT_BYTES} digits"
                )
            _corrupt(f"malformed pickle: truncated {what}")
        return line[:-1]

    def _load_int(self) -> None:
        text = self._line_number("an integer")
        self.append(False if text == b"00" else True if text == b"01" else int(text, 0))

    def _load_long(self) -> None:
        text = self._line_number("an integer")
        self.append(int(text[:-1] if text.endswith(b"L") else text, 0))

    def _load_long4(self) -> None:
        (size,) = struct.unpack("<i", self.read(4))
        if size < 0:
            _corrupt("malformed pickle: LONG4 of a negative length")
        if size > MAX_INT_BYTES:
            raise ResourceLimitError(f"its pickle holds an integer of {size:,} bytes")
        self.append(int.from_bytes(self.read(size), "little", signed=True))

    def _memo_index(self, index: int) -> int:
        if not 0 <= index <= self._opcodes + _MEMO_SLACK:
            _corrupt(f"malformed pickle: memo index {index} out of range")
        return index

    def _load_get(self) -> None:
        index = self._memo_index(int(self._line_number("a memo index")))
        if index not in self.memo:
            _corrupt(f"malformed pickle: memo index {index} was never set")
        self.append(self.memo[index])

    def _load_put(self) -> None:
        index = self._memo_index(int(self._line_number("a memo index")))
        self.memo[index] = self.stack[-1]

    def _load_long_binput(self) -> None:
        (index,) = struct.unpack("<I", self.read(4))
        self.memo[self._memo_index(index)] = self.stack[-1]

    def _remaining(self) -> int:
        return self._size - self._stream.tell()

    def _load_frame(self) -> None:
        (size,) = struct.unpack("<Q", self.read(8))
        if size > self._remaining():
            _corrupt(f"malformed pickle: frame of {size:,} bytes runs past the end")

    def _load_bytearray8(self) -> None:
        # The reference unpickler allocates the declared length before reading it.
        (size,) = struct.unpack("<Q", self.read(8))
        if size > self._remaining():
            _corrupt(f"malformed pickle: byte array of {size:,} bytes runs past the end")
        self.append(bytearray(self.read(size)))

    def _refuse_buffer(self) -> None:
        _corrupt("malformed pickle: out-of-band buffers are not supported")

    def _refuse_ext(self) -> None:
        # EXT codes name globals through copyreg's registry (and its cache of real objects).
        _corrupt("malformed pickle: extension-registry codes (EXT opcodes) are not used by torch")

    def _load_mark(self) -> None:
        if len(self.metastack) >= MAX_NESTING:
            _corrupt(f"malformed pickle: nested deeper than {MAX_NESTING} levels")
        self.metastack.append(self.stack)
        self.stack = []
        self.append = self.stack.append

    def _load_stop(self) -> None:
        raise _Stopped(self.stack.pop())

    # ----- opcodes that call, create or update objects ----------------------------------------

    def _call(self, func: object, args: object) -> object:
        """``func(*args)`` for an allowlisted callable or class, with its arguments charged."""
        if type(args) is not tuple:
            _corrupt(f"malformed pickle: call arguments are {_show(args)}, not a tuple")
        self._charge(args)
        if func is _PickledDict or func is _PickledSet:
            return self._new_container(func, args)
        if isinstance(func, _SafeCallable) or func in _CLASSES:
            return func(*args)
        _corrupt(f"malformed pickle: calls {_show(func)}")

    def _charge(self, args: tuple[object, ...]) -> None:
        # Stand-ins look at each argument once (never deeper) and may copy text or bytes.
        self._budget.step(len(args))
        for arg in args:
            if isinstance(arg, (str, bytes, bytearray)):
                self._budget.copy(len(arg))

    def _new_container(self, cls: type, args: tuple[object, ...]) -> object:
        # OrderedDict(pairs) and set(items), as protocols 0-3 pickle them, go through the same
        # checked insertion as SETITEMS and ADDITEMS.
        container = cls()
        if len(args) > 1:
            _corrupt(
                f"malformed pickle: {cls.__name__.lstrip('_')} called with {len(args)} arguments"
            )
        if not args:
            return container
        items = args[0]
        if not isinstance(items, (list, tuple, set, frozenset, dict)):
            _corrupt(f"malformed pickle: {cls.__name__.lstrip('_')} of {_show(items)}")
        self._budget.step(len(items))
        if isinstance(container, dict):
            pairs = items.items() if isinstance(items, dict) else items
            for pair in pairs:
                if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                    _corrupt("malformed pickle: an OrderedDict item is not a (key, value) pair")
                self._insert(container, pair[0], pair[1])
        else:
            for item in items:
                self._insert(container, item, None)
        return container

    def _load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args)

    def _instantiate(self, klass: Any, args: list[object]) -> None:
        # INST and OBJ (protocols 0/1) land here.
        self.append(self._call(klass, tuple(args)))

    def _new_object(self, cls: object, args: object, kwargs: object) -> None:
        if not (isinstance(cls, type) and cls in _CLASSES):
            _corrupt(f"malformed pickle: creates {_show(cls)}")
        if type(args) is not tuple or (kwargs is not None and kwargs != {}):
            _corrupt("malformed pickle: bad arguments for a new object")
        self._charge(args)
        # dict.__new__ and set.__new__ ignore their arguments, so nothing is hashed here.
        self.append(cls.__new__(cls, *args))

    def _load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self._new_object(cls, args, None)

    def _load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self._new_object(cls, args, kwargs)

    def _load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if not isinstance(inst, _BUILDABLE):
            _corrupt(f"malformed pickle: BUILD on {_show(inst)}")
        self._budget.step(1)
        setstate: Callable[[object], None] = inst.__setstate__  # type: ignore[attr-defined]
        setstate(state)

    def _load_append(self) -> None:
        value = self.stack.pop()
        self._target_list().append(value)

    def _load_appends(self) -> None:
        items = self.pop_mark()
        self._target_list().extend(items)

    def _target_list(self) -> list[Any]:
        target = self.stack[-1]
        if type(target) is not list:
            _corrupt(f"malformed pickle: APPEND to {_show(target)}")
        return target

    def _load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._insert(self._target_dict(), key, value)

    def _load_setitems(self) -> None:
        items = self.pop_mark()
        target = self._target_dict()
        if len(items) % 2:
            _corrupt("malformed pickle: SETITEMS with a key but no value")
        for i in range(0, len(items), 2):
            self._insert(target, items[i], items[i + 1])

    def _load_dict(self) -> None:
        items = self.pop_mark()
        if len(items) % 2:
            _corrupt("malformed pickle: DICT with a key but no value")
        result: dict[Any, Any] = {}
        for i in range(0, len(items), 2):
            self._insert(result, items[i], items[i + 1])
        self.append(result)

    def _target_dict(self) -> dict[Any, Any]:
        target = self.stack[-1]
        if not isinstance(target, dict):
            _corrupt(f"malformed pickle: SETITEM on {_show(target)}")
        return target

    def _load_additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if not isinstance(target, set):
            _corrupt(f"malformed pickle: ADDITEMS on {_show(target)}")
        for item in items:
            self._insert(target, item, None)

    def _load_frozenset(self) -> None:
        items = self.pop_mark()
        result: set[Any] = set()
        for item in items:
            self._insert(result, item, None)
        self.append(frozenset(result))  # built from a set: its stored hashes are reused

    def _insert(self, container: dict[Any, Any] | set[Any], key: object, value: object) -> None:
        """``container[key] = value`` (or ``.add(key)``) at a bounded cost.

        str and bytes keys take a keyed 64-bit hash (SipHash), which no file can make collide
        in numbers; ints and tuples hash predictably, so the keys sharing one hash are counted
        and the hash's cost (a tuple hashes each of its parts, recursively, every time) is
        charged first.
        """
        if type(key) is not str and type(key) is not bytes:
            # Paid before hashing: hashing is the expensive part.
            cost = _hash_cost(key, self._budget.steps)
            self._budget.step(cost)
            entry = self._hashes.get(id(container))
            if entry is None:
                entry = self._hashes[id(container)] = (container, {})
            counts = entry[1]
            code = hash(key)
            same = counts.get(code, 0)
            if same >= MAX_SAME_HASH:
                raise ResourceLimitError(
                    f"its pickle puts more than {MAX_SAME_HASH} keys with one hash value in one "
                    "dict or set (a hash-collision attack)"
                )
            # Each key already there with this hash is compared with the new one.
            self._budget.step(cost * same)
            before = len(container)
            _store(container, key, value)
            if len(container) > before:
                counts[code] = same + 1
            return
        _store(container, key, value)


def _store(container: dict[Any, Any] | set[Any], key: object, value: object) -> None:
    if isinstance(container, dict):
        container[key] = value
    else:
        container.add(key)


def _hash_cost(key: object, limit: int) -> int:
    """How many objects hashing ``key`` visits (tuples hash their parts every time).

    Stops past ``limit`` (the caller's remaining steps) or :data:`MAX_NESTING` levels, so a
    tuple whose parts are shared at every level, which would take 2**depth steps to hash,
    is refused after ``limit`` steps. Other hashable values cost one: numbers, str and bytes
    are hashed once, frozensets cache their hash.
    """
    if type(key) is not tuple:
        return 1
    count = 0
    pending: list[tuple[object, int]] = [(key, 1)]
    while pending:
        value, depth = pending.pop()
        count += 1
        if count > limit:
            break
        if type(value) is tuple:
            if depth > MAX_NESTING:
                _corrupt(f"malformed pickle: a key nested deeper than {MAX_NESTING} levels")
            pending.extend((part, depth + 1) for part in value)
    return count


for _opcode, _handler in {
    pickle.INT: _SafeUnpickler._load_int,
    pickle.LONG: _SafeUnpickler._load_long,
    pickle.LONG4: _SafeUnpickler._load_long4,
    pickle.GET: _SafeUnpickler._load_get,
    pickle.PUT: _SafeUnpickler._load_put,
    pickle.LONG_BINPUT: _SafeUnpickler._load_long_binput,
    pickle.FRAME: _SafeUnpickler._load_frame,
    pickle.BYTEARRAY8: _SafeUnpickler._load_bytearray8,
    pickle.NEXT_BUFFER: _SafeUnpickler._refuse_buffer,
    pickle.READONLY_BUFFER: _SafeUnpickler._refuse_buffer,
    pickle.EXT1: _SafeUnpickler._refuse_ext,
    pickle.EXT2: _SafeUnpickler._refuse_ext,
    pickle.EXT4: _SafeUnpickler._refuse_ext,
    pickle.MARK: _SafeUnpickler._load_mark,
    pickle.STOP: _SafeUnpickler._load_stop,
    pickle.REDUCE: _SafeUnpickler._load_reduce,
    pickle.NEWOBJ: _SafeUnpickler._load_newobj,
    pickle.NEWOBJ_EX: _SafeUnpickler._load_newobj_ex,
    pickle.BUILD: _SafeUnpickler._load_build,
    pickle.APPEND: _SafeUnpickler._load_append,
    pickle.APPENDS: _SafeUnpickler._load_appends,
    pickle.SETITEM: _SafeUnpickler._load_setitem,
    pickle.SETITEMS: _SafeUnpickler._load_setitems,
    pickle.DICT: _SafeUnpickler._load_dict,
    pickle.ADDITEMS: _SafeUnpickler._load_additems,
    pickle.FROZENSET: _SafeUnpickler._load_frozenset,
}.items():
    _SafeUnpickler.dispatch[_opcode[0]] = _handler
del _opcode, _handler


def _unpickle(
    data: bytes,
    start: int,
    where: str,
    budget: _Budget,
    on_persistent: Callable[[object], object] | None = None,
) -> tuple[object, int]:
    """Unpickle the pickle at ``data[start:]``; return it and its end offset."""
    stream = io.BytesIO(data)  # shares the bytes, no copy
    stream.seek(start)
    unpickler = _SafeUnpickler(stream, budget, on_persistent, start + MAX_PICKLE_BYTES, len(data))
    try:
        return unpickler.load(), stream.tell()
    except ConceptlibError as exc:
        if isinstance(exc, CorruptFileError) and exc.message.startswith("malformed pickle: "):
            raise CorruptFileError(
                f"malformed pickle in {where}: {exc.message[len('malformed pickle: ') :]}"
            ) from None
        raise
    except RecursionError:
        _corrupt(f"malformed pickle in {where}: nested too deeply")
    except MemoryError:
        raise ResourceLimitError(f"ran out of memory unpickling {where}") from None
    except Exception as exc:  # whatever else hostile bytes make the reference unpickler raise
        _corrupt(f"malformed pickle in {where}: {_exception_text(exc)}")
    finally:
        # Break the unpickler's reference cycles (bound methods) at once.
        unpickler.__dict__.clear()


def _exception_text(exc: BaseException) -> str:
    """``Type: message`` of an exception, on one line and bounded."""
    try:
        text = str(exc)
    except Exception:  # e.g. a message holding an integer too long to print
        text = ""
    return f"{type(exc).__name__}: {printable(text)}" if text else type(exc).__name__


def _ascii(value: object, what: str) -> str:
    if isinstance(value, bytes):  # Python 2 pickles
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            pass
    if not isinstance(value, str):
        _corrupt(f"malformed pickle: {what} is not a string")
    return value


# Protocol 0 writes a persistent id as its str(): torch's legacy writer then gives
# "('storage', <class 'torch.FloatStorage'>, '94105', 'cpu', 6, None)" (torch itself cannot
# read these back, but the text is unambiguous).
_TEXT_PID = re.compile(
    r"\('storage', <class '([A-Za-z_.]{1,64})'>, u?'(\w{1,64})', u?'([\w:.-]{1,64})', (\d{1,20})L?, None\)"
)


def _text_pid(pid: str) -> tuple[object, ...]:
    match = _TEXT_PID.fullmatch(pid) if len(pid) <= 512 else None
    if match is None:
        _corrupt(f"malformed pickle: unknown text persistent id '{printable(pid)}'")
    module, _, name = match.group(1).rpartition(".")
    storage_type = _resolve_global(module, name)
    return ("storage", storage_type, match.group(2), match.group(3), int(match.group(4)), None)


def _parse_storage_pid(pid: object, legacy: bool) -> _StorageRef | type:
    """Decode ``('storage', type, key, location, numel[, view])``; torch writes exactly this."""
    if legacy and isinstance(pid, str):
        pid = _text_pid(pid)
    if not isinstance(pid, tuple) or not pid:
        _corrupt("malformed pickle: persistent id is not a tuple")
    typename = _ascii(pid[0], "persistent id type")
    if legacy and typename == "module" and len(pid) == 4:
        # _legacy_save emits ('module', cls, source_file, source) for nn.Module classes.
        if pid[1] is not _ParameterDictStub:
            _unsafe(f"module class {_show(pid[1])}")
        return _ParameterDictStub
    if typename != "storage" or len(pid) != (6 if legacy else 5):
        _corrupt(f"malformed pickle: unknown persistent id {_show(typename)} of length {len(pid)}")
    storage_type, key, location, numel = pid[1:5]
    if not (isinstance(storage_type, _Marker) and storage_type.kind == "storage"):
        _corrupt(f"malformed pickle: storage type {_show(storage_type)} is not a torch storage")
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
        fetch: returns the raw bytes of a storage record, already checked to hold exactly
            ``ref.nbytes`` bytes (or more, for legacy views).
        big_endian: the zip archive's ``byteorder`` record says ``big``.
        budget: the file's budget; its ``tensors`` counter pays for every tensor built.
    """

    def __init__(
        self, fetch: Callable[[_StorageRef], memoryview], big_endian: bool, budget: _Budget
    ) -> None:
        self._fetch = fetch
        self._big_endian = big_endian
        self._budget = budget

    def _charge(self, nbytes: int, shape: tuple[int, ...], dtype: str) -> None:
        if nbytes > self._budget.tensors:
            raise ResourceLimitError(
                f"a {dtype} tensor of shape {printable(shape)} would take {nbytes:,} bytes: its "
                f"tensors may take at most the file's size plus {MAX_EXPANSION_BYTES:,} bytes "
                f"(a concept of {MAX_CONCEPT_VECTORS:,} vectors {MAX_ENCODER_WIDTH:,} wide in "
                "float64), and stride-0 or repeated views of its storages ask for more"
            )
        self._budget.tensors -= nbytes

    def tensor(self, ref: _TensorRef) -> Tensor:
        """The compact copy of a tensor view, after checking it lies inside its storage."""
        dtype = ref.dtype
        if dtype not in DTYPES:
            raise EmbeddingFileError(f"tensor dtype {dtype} is not supported")
        itemsize = _ITEMSIZE[dtype]
        storage = ref.storage
        if not storage.untyped and storage.dtype != dtype:
            _corrupt(f"malformed pickle: a {dtype} tensor over a {storage.dtype} storage")
        shape, strides, offset = ref.size, ref.stride, ref.offset
        if any(s < 0 for s in strides):
            _corrupt(f"tensor has a negative stride {printable(strides)}")
        count = _check_shape(shape, itemsize, "tensor")
        if count == 0:
            return Tensor(np.zeros(shape, dtype=DTYPES[dtype][0]), dtype)
        # Element window of this storage inside its record (legacy views start further in).
        window_bytes = (
            storage.nbytes if storage.view_numel is None else storage.view_numel * itemsize
        )
        window_start = storage.view_offset * itemsize
        elements = window_bytes // itemsize
        last = offset + sum((n - 1) * s for n, s in zip(shape, strides, strict=True))
        if last >= elements:
            _corrupt(
                f"tensor view (offset {printable(offset)}, size {printable(shape)}, stride "
                f"{printable(strides)}) reaches element {printable(last)} of a storage of {elements}"
            )
        # Paid before the storage is even read: a broadcast of one float to 100 GB stops here.
        self._charge(count * itemsize, shape, dtype)
        raw = self._fetch(storage)
        file_dtype = np.dtype(DTYPES[dtype][0] if dtype != "bool" else "u1")
        if self._big_endian and itemsize > 1:
            file_dtype = file_dtype.newbyteorder(">")
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

    def numpy(self, stub: _NumpyArrayStub, dtype: str | None = None) -> Tensor:
        """A pickled numpy array as a tensor of ``dtype`` (default: the array's own)."""
        if stub.shape is None or stub.dtype is None:
            _corrupt("malformed pickle: numpy array never received its data")
        own = stub.dtype.name
        want = own if dtype is None else dtype
        if want != own and (own, want) != ("float32", "bfloat16"):
            _corrupt(f"malformed pickle: numpy {own} data rebuilt as a torch {want} tensor")
        self._charge(len(stub.raw), stub.shape, want)
        values = _numpy_array(stub)
        if want == "bfloat16":
            return Tensor(_float32_to_bfloat16(values), want)
        return Tensor(values, want)


def _finalize(obj: object, mat: _Materializer, budget: _Budget) -> object:
    """Replace every stand-in with a plain value; refuse leftovers and cycles.

    Each value is built once however often it is referenced (shared references stay shared),
    and every value visited costs a step, so the result is never larger than the pickle's
    own work.
    """
    memo: dict[int, object] = {}
    active: set[int] = set()

    def walk(value: object, depth: int) -> object:
        budget.step(1)
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
        elif isinstance(value, _NumpyArrayStub):
            result = mat.numpy(value)
        elif isinstance(value, _DeviceTensorRef):
            result = mat.numpy(value.array, value.dtype)
        elif isinstance(value, _ParameterDictStub):
            result = _parameter_dict(value, lambda v: walk(v, depth + 1), budget)
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
            budget.copy(len(value))
            result = bytes(value)
        else:
            _corrupt(f"malformed pickle: leaves {_show(value)} in the data")
        active.discard(ident)
        memo[ident] = result
        return result

    try:
        return walk(obj, 0)
    except TypeError as exc:  # e.g. a tensor used as a set member
        _corrupt(f"malformed pickle: {_exception_text(exc)}")


def _parameter_dict(
    stub: _ParameterDictStub, walk: Callable[[object], object], budget: _Budget
) -> dict[object, object]:
    state = stub.state
    if state is None:
        return {}
    params = state.get("_parameters") or {}
    if not isinstance(params, dict):
        _corrupt("malformed pickle: a ParameterDict's _parameters is not a dict")
    keys = state.get("_keys")
    order = list(keys) if isinstance(keys, dict) else list(params)
    budget.step(len(order))
    result: dict[object, object] = {}
    for key in order:
        if not isinstance(key, str):  # torch names parameters; anything else is not torch's
            _corrupt(f"malformed pickle: a ParameterDict key is {_show(key)}")
        # torch >= 1.12 keeps non-Parameter entries as plain attributes, i.e. in the state.
        value = params[key] if key in params else state.get(key)
        if value is not None:
            result[key] = walk(value)
    return result


# --------------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------------


def _check_zip_directory(data: bytes) -> None:
    """Refuse a central directory too large to parse, before zipfile builds its entries.

    Finds the end records as ``zipfile`` does (the last 22 bytes, else the last signature in
    the final 64 KiB, then the ZIP64 locator just before it) and checks every size and count
    they claim; zipfile reports everything else (missing or damaged records).
    """
    size = len(data)
    if size >= 22 and data[-22:-18] == b"PK\x05\x06" and data[-2:] == b"\0\0":
        end = size - 22
    else:
        end = data.rfind(b"PK\x05\x06", max(size - 65536 - 22, 0))
        if end < 0 or end + 22 > size:
            return
    entries, directory = struct.unpack("<HL", data[end + 10 : end + 16])
    claims: list[tuple[int, int]] = []
    if end >= 20 and data[end - 20 : end - 16] == b"PK\x06\x07":
        (located,) = struct.unpack("<Q", data[end - 12 : end - 4])
        # zipfile reads the ZIP64 record right before the locator; other versions may follow
        # the locator's offset instead, so whichever holds one is checked.
        for start in {end - 76, located}:
            if start >= 0 and start + 56 <= size and data[start : start + 4] == b"PK\x06\x06":
                claims.append(struct.unpack("<QQ", data[start + 32 : start + 48]))
    # All-ones fields only say "see the ZIP64 record"; without one, zipfile takes them as sizes.
    if not (claims and (entries == 0xFFFF or directory == 0xFFFFFFFF)):
        claims.append((entries, directory))
    for entries, directory in claims:
        if entries > MAX_ZIP_ENTRIES:
            raise ResourceLimitError(
                f"its zip directory lists {entries:,} entries; a torch file has one per tensor "
                f"storage (at most {MAX_ZIP_ENTRIES:,} are read)"
            )
        if directory > MAX_CENTRAL_DIRECTORY_BYTES:
            raise ResourceLimitError(
                f"its zip directory claims {directory:,} bytes (at most "
                f"{MAX_CENTRAL_DIRECTORY_BYTES:,} are read)"
            )


def _load_zip(data: bytes) -> object:
    _check_zip_directory(data)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        if b"PK\x05\x06" not in data[-(65536 + 22) :]:
            _corrupt("truncated torch zip archive (central directory missing)")
        _corrupt(f"damaged torch zip archive ({_exception_text(exc)})")
    except Exception as exc:  # zipfile lets struct, Unicode and other errors through
        _corrupt(f"damaged torch zip archive ({_exception_text(exc)})")
    budget = _Budget(len(data))
    with archive:
        if len(archive.infolist()) > MAX_ZIP_ENTRIES:  # a directory whose count field lies
            raise ResourceLimitError(
                f"its zip directory holds more than {MAX_ZIP_ENTRIES:,} entries"
            )
        infos = {info.filename: info for info in archive.infolist()}
        prefix = _archive_prefix(list(infos))
        view = memoryview(data)

        def record(name: str, cap: int) -> memoryview:
            info = infos.get(prefix + name)
            if info is None:
                _corrupt(f"torch zip archive lacks its {printable(name)} record")
            return _record_bytes(info, view, cap, budget)

        big_endian = False
        if prefix + "byteorder" in infos:
            order = bytes(record("byteorder", MAX_SMALL_RECORD_BYTES)).strip()
            if order not in (b"little", b"big"):
                _corrupt(f"torch zip archive has an unknown byteorder {order[:16]!r}")
            big_endian = order == b"big"

        def on_persistent(pid: object) -> object:
            ref = _parse_storage_pid(pid, legacy=False)
            if isinstance(ref, _StorageRef):
                # Checked against the central directory now, before anything (including the
                # record itself) is read: a tiny file declaring 10**12 elements fails here. torch
                # writes each storage as exactly its bytes, so any other size is damage.
                info = infos.get(f"{prefix}data/{ref.key}")
                if info is None:
                    _corrupt(
                        f"torch zip archive lacks the storage record data/{printable(ref.key)}"
                    )
                if ref.nbytes != info.file_size:
                    _corrupt(
                        f"storage data/{printable(ref.key)} declares {ref.nbytes} bytes but the archive holds {info.file_size}"
                    )
            return ref

        pickled = record("data.pkl", MAX_PICKLE_BYTES)
        # An inflated record already is a bytes object; a stored one is copied out once.
        source = (
            pickled.obj
            if isinstance(pickled.obj, bytes) and len(pickled.obj) == len(pickled)
            else bytes(pickled)
        )
        obj, _ = _unpickle(source, 0, "data.pkl", budget, on_persistent)
        cache: dict[str, memoryview] = {}

        def fetch(ref: _StorageRef) -> memoryview:
            if ref.key not in cache:
                cache[ref.key] = record(f"data/{ref.key}", ref.nbytes)
            return cache[ref.key]

        return _finalize(obj, _Materializer(fetch, big_endian, budget), budget)


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


def _record_bytes(info: zipfile.ZipInfo, view: memoryview, cap: int, budget: _Budget) -> memoryview:
    """A record's bytes, at most ``cap`` of them, CRC-checked.

    Stored records (what torch writes) are a zero-copy slice of the file. A deflated record is
    inflated with its output limited to the size the directory gives, itself at most ``cap``
    and paid from the budget first, so a deflate bomb stops after ``cap`` + 1 bytes however
    far it would go; the directory's sizes are never trusted beyond that.
    """
    name = printable(info.filename)
    if info.file_size > cap:
        raise ResourceLimitError(
            f"its zip record {name} is {info.file_size:,} bytes, more than the {cap:,} such a record may hold"
        )
    if info.flag_bits & 0x1:
        _corrupt(f"torch zip archive record {name} is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise EmbeddingFileError(
            f"torch zip record {name} uses compression method {info.compress_type}; torch "
            "writes stored (uncompressed) records"
        )
    start = info.header_offset
    header = bytes(view[start : start + 30])
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        _corrupt(f"damaged torch zip archive (bad local header for {name})")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    begin = start + 30 + name_len + extra_len
    compressed = view[begin : begin + info.compress_size]
    if len(compressed) != info.compress_size:
        _corrupt(f"truncated torch zip archive ({name} is cut short)")
    budget.record(info.file_size, info.filename)
    if info.compress_type == zipfile.ZIP_STORED:
        if info.compress_size != info.file_size:
            _corrupt(f"damaged torch zip archive ({name} has two different sizes)")
        payload = compressed
    else:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            # One byte more than the record may hold tells "too long" from "exactly right".
            inflated = inflater.decompress(compressed, info.file_size + 1)
        except zlib.error as exc:
            _corrupt(f"damaged torch zip archive ({name}: {_exception_text(exc)})")
        if len(inflated) != info.file_size or not inflater.eof:
            _corrupt(
                f"damaged torch zip archive ({name} does not inflate to the {info.file_size:,} bytes its directory entry gives)"
            )
        payload = memoryview(inflated)
    if zlib.crc32(payload) != info.CRC:
        _corrupt(f"damaged torch zip archive ({name} fails its CRC check)")
    return payload


def _load_legacy(data: bytes) -> object:
    budget = _Budget(len(data))
    magic, pos = _unpickle(data, 0, "the magic number", budget)
    if magic != LEGACY_MAGIC or isinstance(magic, bool):
        _corrupt("a pickle, but not a torch.save file (torch magic number missing)")
    protocol, pos = _unpickle(data, pos, "the protocol version", budget)
    if protocol != LEGACY_PROTOCOL or isinstance(protocol, bool):
        _corrupt(f"unsupported legacy torch protocol version {_show(protocol)}")
    _sys_info, pos = _unpickle(data, pos, "sys_info", budget)
    refs: dict[str, _StorageRef] = {}

    def on_persistent(pid: object) -> object:
        ref = _parse_storage_pid(pid, legacy=True)
        if isinstance(ref, _StorageRef):
            refs.setdefault(ref.key, ref)
        return ref

    obj, pos = _unpickle(data, pos, "the main pickle", budget, on_persistent)
    keys, pos = _unpickle(data, pos, "the storage key list", budget)
    if not isinstance(keys, list):
        _corrupt("legacy torch file: the storage key list is not a list")
    records: dict[str, memoryview] = {}
    view = memoryview(data)
    for key in keys:
        key = _ascii(str(key) if isinstance(key, int) else key, "storage key")
        ref = refs.get(key)
        if ref is None:
            _corrupt(f"legacy torch file lists storage '{printable(key)}' that no tensor uses")
        if pos + 8 > len(data):
            _corrupt(f"truncated legacy torch file (storage {printable(key)} missing)")
        (count,) = struct.unpack("<q", data[pos : pos + 8])
        itemsize = 1 if ref.untyped else _ITEMSIZE[ref.dtype]
        if count != ref.numel:
            _corrupt(
                f"legacy storage {printable(key)} holds {count} elements but the pickle declares {ref.numel}"
            )
        nbytes = count * itemsize
        # Compare before slicing or allocating: a 400 GB claim in a 1 KB file stops here.
        if nbytes > len(data) - pos - 8:
            _corrupt(
                f"legacy storage {printable(key)} declares {nbytes} bytes but only {len(data) - pos - 8} remain"
            )
        records[key] = view[pos + 8 : pos + 8 + nbytes]
        pos += 8 + nbytes

    def fetch(ref: _StorageRef) -> memoryview:
        raw = records.get(ref.key)
        if raw is None:
            _corrupt(f"legacy torch file lacks the data of storage {printable(ref.key)}")
        if ref.nbytes > len(raw):
            _corrupt(
                f"legacy storage {printable(ref.key)} declares {ref.nbytes} bytes but holds {len(raw)}"
            )
        return raw

    # The legacy writer always stores little-endian data, whatever the machine.
    return _finalize(obj, _Materializer(fetch, False, budget), budget)


def _load_bytes(data: bytes) -> object:
    if not data:
        _corrupt("empty file (0 bytes)")
    if data[:2] == b"PK":
        return _load_zip(data)
    # PROTO (protocol >= 2), or the exact text protocols 0 and 1 write for torch's magic number.
    if data[:1] == b"\x80" or data.startswith(LEGACY_TEXT_MAGIC):
        return _load_legacy(data)
    if data[257:262] == b"ustar":
        raise EmbeddingFileError(
            "is a torch < 0.4 tar checkpoint, a format conceptlib does not read"
        )
    raise UnknownFormatError(f"not a torch.save file (first bytes {data[:8]!r})")


def load(path: str | os.PathLike[str], data: bytes | None = None) -> object:
    """Read a ``torch.save`` file (zip or legacy) without torch and without running its code.

    Reading costs O(len(data)) time and memory whatever the file claims; see the module
    docstring for the limits.

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
            of another size than declared, malformed pickle, empty file).
        ResourceLimitError: the file asks for more than any embedding needs (a pickle too
            large or complex, tensors expanding past :data:`MAX_EXPANSION_BYTES`, a
            decompression bomb, a huge zip directory).
        EmbeddingFileError: a valid file this reader does not support (exotic dtype).
        OSError: ``path`` cannot be read.

    Example:
        >>> state = load("learned_embeds.bin")  # doctest: +SKIP
        >>> state["<cat-toy>"].shape  # doctest: +SKIP
        (768,)
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
    except MemoryError:
        raise ResourceLimitError("ran out of memory reading it", path=path) from None
    except Exception as exc:
        # Belt and braces: every path above maps its own errors; this keeps raw ones inside.
        raise CorruptFileError(f"damaged torch file ({_exception_text(exc)})", path=path) from exc


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
