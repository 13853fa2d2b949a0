"""A strict safetensors reader and writer on numpy, with bfloat16 kept as raw bits.

The ``safetensors`` package's numpy backend cannot represent bfloat16 and reports layout
problems as opaque errors; embedding files are tiny, so a direct implementation of the
(simple, documented) layout gives exact dtypes and precise messages for damaged files.
Files written here load with ``safetensors.torch``/``safetensors.numpy`` (tested).

The header is checked before any array is built, so a file of N bytes costs O(N) time and
memory whatever it claims:

* its length is at most :data:`MAX_HEADER` (the safetensors crate's own limit) and fits the file;
* it is UTF-8 JSON within :func:`._interpret.check_json_budget` (arrays, objects and values
  counted on the raw bytes), with no key twice in any object (readers would disagree on which
  one wins), and integers past 20 digits left unparsed, so refused;
* ``__metadata__`` is absent, null, or an object of strings;
* every tensor has a dtype the format defines, a shape of at most :data:`MAX_RANK` plain
  non-negative ints (bools are not ints here), and ``data_offsets`` of two plain ints with
  ``begin <= end`` whose span is exactly shape x itemsize; sorted by ``begin`` no two spans
  overlap, so the tensors copied out never add up to more than the payload.

:func:`read` also needs each span inside the file's payload and, for an empty tensor, its
other axes to multiply to at most 2**32 (``[0, 2**62]`` is no shape numpy can build). Gaps
between spans and bytes after the last one are tolerated, as extra bytes cost nothing to
ignore.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

from conceptlib.errors import CorruptFileError, ResourceLimitError
from conceptlib.formats._interpret import (
    JSONBudgetError,
    check_json_budget,
    is_text,
    json_int,
    show,
)
from conceptlib.tensor import DTYPES, SAFETENSORS_TO_DTYPE, Tensor

MAX_HEADER = 100 * 1024 * 1024  # the format's own limit
#: The largest header :func:`read` (embedding files) parses. An embedding's header is a few
#: hundred bytes plus metadata; kohya's training metadata (tag frequencies, dataset and bucket
#: descriptions) reaches tens of KB for large datasets. Model checkpoints read through
#: :func:`read_header` keep the format's own limit.
MAX_EMBEDDING_HEADER = 16 * 1024 * 1024
#: Most dimensions a tensor may have: embeddings are 1-D or 2-D, model weights at most 5-D.
MAX_RANK = 8
#: Bits per element of every dtype the safetensors format defines (conceptlib reads fewer:
#: :data:`conceptlib.tensor.SAFETENSORS_TO_DTYPE`; the others are checked, then refused by read).
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}  # fmt: skip
_INT64_MAX = 2**63 - 1
# The most elements the non-zero axes of an empty tensor may describe.
_MAX_EMPTY_EXTENT = 2**32


def looks_like_safetensors(data: bytes) -> bool:
    """Cheap sniff: an 8-byte little-endian header length followed by ``{``."""
    if len(data) < 10:
        return False
    (n,) = struct.unpack("<Q", data[:8])
    return 2 <= n <= MAX_HEADER and data[8:9] == b"{"


class _DuplicateKeyError(ValueError):
    """A JSON object names one key twice."""


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKeyError(f"the key {show(key)} appears twice in one object")
            seen.add(key)
    return obj


def _is_int(value: Any) -> bool:
    # bool is an int subclass, but true/false is not a size in any safetensors writer.
    return isinstance(value, int) and not isinstance(value, bool)


def _check_entry(name: str, entry: Any, path: str | os.PathLike[str]) -> tuple[int, int]:
    """Validate one tensor entry and return its (begin, end) span."""
    label = f"tensor {show(name)}"
    if not isinstance(entry, dict):
        raise CorruptFileError(f"safetensors {label} is a {type(entry).__name__}, not an object", path=path)
    try:
        code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    except KeyError:
        raise CorruptFileError(f"safetensors {label} lacks dtype/shape/data_offsets", path=path) from None
    if not isinstance(code, str) or code not in DTYPE_BITS:
        raise CorruptFileError(f"{label} has dtype {show(code)}, which the safetensors format does not define", path=path)
    if not (
        isinstance(shape, list)
        and len(shape) <= MAX_RANK
        and all(_is_int(d) and 0 <= d <= _INT64_MAX for d in shape)
    ):
        raise CorruptFileError(
            f"{label} has an invalid shape {show(shape)} (at most {MAX_RANK} non-negative integers)", path=path
        )
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
        raise CorruptFileError(f"{label} has invalid data offsets {show(offsets)}", path=path)
    begin, end = offsets
    if not 0 <= begin <= end <= _INT64_MAX:
        raise CorruptFileError(f"{label} has invalid data offsets {show(offsets)}", path=path)
    count = 1
    for d in shape:
        count *= d
    bits = count * DTYPE_BITS[code]
    if bits % 8 or end - begin != bits // 8:
        raise CorruptFileError(
            f"{label} declares shape {show(shape)} ({bits / 8:g} bytes) but spans {end - begin}", path=path
        )
    return begin, end


def read_header(
    data: bytes, path: str | os.PathLike[str], *, max_header: int = MAX_HEADER
) -> tuple[dict[str, Any], dict[str, str], int]:
    """Parse and check the JSON header (the module docstring lists the checks).

    Args:
        data: the file's bytes, or at least its first ``8 + header length`` bytes.
        path: the file name, for messages.
        max_header: refuse longer headers (:class:`ResourceLimitError` when below the format's
            own limit, which stays a :class:`CorruptFileError`).

    Returns:
        (tensor entries by name, ``__metadata__`` dict, payload offset).

    Raises:
        CorruptFileError: truncated, not UTF-8 JSON, a repeated key, a malformed entry, or
            overlapping spans.
        ResourceLimitError: the header would build more objects than any embedding file needs.
    """
    if len(data) < 8:
        raise CorruptFileError("truncated safetensors file (shorter than its 8-byte header length)", path=path)
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER:
        raise CorruptFileError(f"safetensors header claims {n} bytes, more than the format allows", path=path)
    if n > max_header:
        raise ResourceLimitError(
            f"safetensors header is {n:,} bytes, more than any embedding's ({max_header:,})", path=path
        )
    if 8 + n > len(data):
        raise CorruptFileError(
            f"truncated safetensors file: the header needs {n} bytes, only {len(data) - 8} follow", path=path
        )
    try:
        # Counted and decoded in place: a copy of a 100 MB header would cost 100 MB more.
        check_json_budget(data, "the safetensors header", 8, 8 + n)
        text = str(memoryview(data)[8 : 8 + n], "utf-8")
        header = json.loads(text, parse_int=json_int, object_pairs_hook=_unique_pairs)
    except JSONBudgetError as exc:
        raise ResourceLimitError(str(exc), path=path) from None
    except _DuplicateKeyError as exc:
        raise CorruptFileError(f"safetensors header is ambiguous: {exc}", path=path) from None
    except RecursionError:
        raise CorruptFileError("safetensors header nests deeper than any real header", path=path) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"safetensors header is not valid JSON ({exc.__class__.__name__})", path=path) from None
    if not isinstance(header, dict):
        raise CorruptFileError("safetensors header is not a JSON object", path=path)
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CorruptFileError("safetensors __metadata__ must map strings to strings", path=path)
    # JSON can spell a lone surrogate ("\\ud800"), which is no character: the safetensors
    # library itself refuses such a header, and Python could never write it back as UTF-8.
    if any(not is_text(s) for s in (*header, *metadata, *metadata.values())):
        raise CorruptFileError(
            "safetensors header holds a lone surrogate (\\ud800-\\udfff), which is not text", path=path
        )
    spans = sorted((*_check_entry(name, entry, path), name) for name, entry in header.items())
    # Sorted by begin, each span must start at or after the previous end; empty spans overlap
    # nothing.
    last_end, last_name = 0, ""
    for begin, end, name in spans:
        if begin == end:
            continue
        if begin < last_end:
            raise CorruptFileError(
                f"tensors {show(last_name)} and {show(name)} overlap in the payload", path=path
            )
        last_end, last_name = end, name
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
        ResourceLimitError: a header that would build more objects than any embedding needs.
    """
    header, metadata, start = read_header(data, path, max_header=MAX_EMBEDDING_HEADER)
    payload = len(data) - start
    # Slices of a memoryview: Tensor.from_bytes makes the one copy each tensor needs.
    view = memoryview(data)
    tensors: dict[str, Tensor] = {}
    for name, entry in header.items():
        code, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        dtype = SAFETENSORS_TO_DTYPE.get(code)
        if dtype is None:
            raise CorruptFileError(f"tensor {show(name)} has dtype {show(code)}, which conceptlib does not read", path=path)
        if end > payload:
            raise CorruptFileError(
                f"truncated safetensors file: tensor {show(name)} ends at byte {end} of a {payload}-byte payload",
                path=path,
            )
        nonzero = 1
        for d in shape:
            nonzero *= d or 1
        if nonzero > _MAX_EMPTY_EXTENT:
            # Only an empty tensor gets here (a non-empty one fits the payload): numpy cannot
            # even shape an array whose other axes multiply past its address space.
            raise CorruptFileError(f"tensor {show(name)} has an absurd shape {show(shape)}", path=path)
        tensors[name] = Tensor.from_bytes(view[start + begin : start + end], dtype, tuple(shape))
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
