"""A torch-free tensor: a numpy array plus the dtype name it had on disk.

numpy has no bfloat16, so bfloat16 tensors keep their raw 16-bit patterns in a ``uint16``
array and the ``dtype`` field says how to read them. Nothing is ever converted implicitly:
what was read is what gets written, bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

# dtype name -> (numpy storage dtype, safetensors code, torch storage class name)
DTYPES: dict[str, tuple[str, str, str]] = {
    "float32": ("<f4", "F32", "FloatStorage"),
    "float16": ("<f2", "F16", "HalfStorage"),
    "bfloat16": ("<u2", "BF16", "BFloat16Storage"),
    "float64": ("<f8", "F64", "DoubleStorage"),
    "int64": ("<i8", "I64", "LongStorage"),
    "int32": ("<i4", "I32", "IntStorage"),
    "int16": ("<i2", "I16", "ShortStorage"),
    "int8": ("|i1", "I8", "CharStorage"),
    "uint8": ("|u1", "U8", "ByteStorage"),
    "bool": ("|b1", "BOOL", "BoolStorage"),
}
FLOAT_DTYPES = ("float32", "float16", "bfloat16")
SAFETENSORS_TO_DTYPE = {code: name for name, (_, code, _) in DTYPES.items()}
STORAGE_TO_DTYPE = {storage: name for name, (_, _, storage) in DTYPES.items()}


def _storage_dtype(dtype: str) -> np.dtype[Any]:
    try:
        return np.dtype(DTYPES[dtype][0])
    except KeyError:
        raise ValueError(f"unsupported dtype {dtype!r}") from None


@dataclass(frozen=True, eq=False)
class Tensor:
    """An n-dimensional array with an explicit dtype name.

    Attributes:
        array: the values in their storage dtype (``uint16`` bit patterns for ``bfloat16``),
            always little-endian and C-contiguous.
        dtype: one of :data:`DTYPES` (``"float32"``, ``"float16"``, ``"bfloat16"``, ...).
    """

    array: np.ndarray
    dtype: str

    def __post_init__(self) -> None:
        want = _storage_dtype(self.dtype)
        if self.array.dtype != want or not self.array.flags.c_contiguous:
            object.__setattr__(self, "array", np.ascontiguousarray(self.array, dtype=want))

    @classmethod
    def from_numpy(cls, array: np.ndarray) -> Tensor:
        """Wrap a numpy array whose dtype is a real numpy type (not bfloat16 bits)."""
        arr = np.asarray(array)
        for name, (storage, _, _) in DTYPES.items():
            if name != "bfloat16" and np.dtype(storage) == arr.dtype.newbyteorder("<"):
                return cls(arr.astype(storage, copy=False), name)
        raise ValueError(f"unsupported numpy dtype {arr.dtype}")

    @classmethod
    def from_bytes(cls, data: bytes | memoryview, dtype: str, shape: tuple[int, ...]) -> Tensor:
        """Build from little-endian raw bytes (copying them)."""
        arr = np.frombuffer(data, dtype=_storage_dtype(dtype)).reshape(shape).copy()
        return cls(arr, dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.array.shape)

    @property
    def ndim(self) -> int:
        return self.array.ndim

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES or self.dtype == "float64"

    def tobytes(self) -> bytes:
        """Little-endian raw bytes, C order: the canonical serialisation."""
        return self.array.tobytes(order="C")

    def to_float32(self) -> np.ndarray:
        """A float32 copy of the values (exact for float16 and bfloat16)."""
        if self.dtype == "bfloat16":
            return (self.array.astype(np.uint32) << 16).view(np.float32)
        return self.array.astype(np.float32)

    def float32_blocks(self, rows: int) -> Iterator[np.ndarray]:
        """:meth:`to_float32` of ``rows`` rows (first-axis entries) at a time, so a large
        tensor never needs a whole float32 (or wider) copy at once."""
        for start in range(0, self.array.shape[0], rows):
            yield Tensor(self.array[start : start + rows], self.dtype).to_float32()

    def reshape(self, *shape: int) -> Tensor:
        return Tensor(self.array.reshape(shape), self.dtype)

    def equal(self, other: Tensor) -> bool:
        """Bit-exact equality of dtype, shape and bytes."""
        return self.dtype == other.dtype and self.shape == other.shape and self.tobytes() == other.tobytes()

    def item(self) -> int | float | bool:
        """The single value of a one-element tensor as a Python number."""
        if self.array.size != 1:
            raise ValueError(f"item() needs one element, this tensor has shape {self.shape}")
        if self.dtype == "bfloat16":
            return float(self.to_float32().reshape(-1)[0])
        value = self.array.reshape(-1)[0]
        return value.item()

    def __repr__(self) -> str:
        return f"Tensor(shape={self.shape}, dtype={self.dtype})"
