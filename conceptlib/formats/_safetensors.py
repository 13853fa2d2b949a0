"""A strict safetensors reader and writer on numpy, with bfloat16 kept as raw bits.

The ``safetensors`` package's numpy backend cannot represent bfloat16 and reports layout
problems as opaque errors; embedding files are tiny, so a direct implementation of the
(simple, documented) layout gives exact dtypes and precise messages for damaged files.
Files written here load with ``safetensors.torch``/``safetensors.numpy`` (tested).
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import numpy as np

from conceptlib.errors import CorruptFileError
from conceptlib.tensor import DTYPES, SAFETENSORS_TO_DTYPE, Tensor

MAX_HEADER = 100 * 1024 * 1024  # the format's own limit


def looks_like_safetensors(data: bytes) -> bool:
    """Cheap sniff: an 8-byte little-endian header length followed by ``{``."""
    if len(data) < 10:
        return False
    (n,) = struct.unpack("<Q", data[:8])
    return 2 <= n <= MAX_HEADER and data[8:9] == b"{"


def read_header(data: bytes, path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, str], int]:
    """Parse and check the JSON header.

    Returns:
        (tensor entries by name, ``__metadata__`` dict, payload offset).
    """
    if len(data) < 8:
        raise CorruptFileError("truncated safetensors file (shorter than its 8-byte header length)", path=path)
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER:
        raise CorruptFileError(f"safetensors header claims {n} bytes, more than the format allows", path=path)
    if 8 + n > len(data):
        raise CorruptFileError(
            f"truncated safetensors file: the header needs {n} bytes, only {len(data) - 8} follow", path=path
        )
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"safetensors header is not valid JSON ({exc.__class__.__name__})", path=path) from None
    if not isinstance(header, dict):
        raise CorruptFileError("safetensors header is not a JSON object", path=path)
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CorruptFileError("safetensors __metadata__ must map strings to strings", path=path)
    return header, metadata, 8 + n


def read(data: bytes, path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Decode a whole safetensors file held in memory.

    Args:
        data: the file's bytes.
        path: the file name, for messages.

    Returns:
        (tensors in file order, metadata).

    Raises:
        CorruptFileError: truncated payload, overlapping or out-of-range offsets, unknown dtype.
    """
    header, metadata, start = read_header(data, path)
    payload = len(data) - start
    tensors: dict[str, Tensor] = {}
    for name, entry in header.items():
        try:
            code, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise CorruptFileError(f"safetensors entry {name!r} lacks dtype/shape/data_offsets", path=path) from None
        dtype = SAFETENSORS_TO_DTYPE.get(code)
        if dtype is None:
            raise CorruptFileError(f"tensor {name!r} has dtype {code}, which conceptlib does not read", path=path)
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise CorruptFileError(f"tensor {name!r} has an invalid shape {shape!r}", path=path)
        count = 1
        for d in shape:
            count *= d
        itemsize = np.dtype(DTYPES[dtype][0]).itemsize
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end):
            raise CorruptFileError(f"tensor {name!r} has invalid data offsets", path=path)
        if end > payload:
            raise CorruptFileError(
                f"truncated safetensors file: tensor {name!r} ends at byte {end} of a {payload}-byte payload",
                path=path,
            )
        if end - begin != count * itemsize:
            raise CorruptFileError(
                f"tensor {name!r} declares shape {shape} ({count * itemsize} bytes) but spans {end - begin}",
                path=path,
            )
        tensors[name] = Tensor.from_bytes(data[start + begin : start + end], dtype, tuple(shape))
    return tensors, metadata


def dumps(tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """Encode tensors (in the given order) and string metadata as safetensors bytes."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    blobs = []
    for name, tensor in tensors.items():
        blob = tensor.tobytes()
        header[name] = {
            "dtype": DTYPES[tensor.dtype][1],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        offset += len(blob)
        blobs.append(blob)
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    # Pad the header to 8 bytes, as the reference writer does, so payloads stay aligned.
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(blobs)
