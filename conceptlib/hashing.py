"""File hashes and the short forms other tools display.

* ``sha256``: the whole file; the hash everything else derives from.
* ``autov2``: the first 10 hex digits (Civitai "AutoV2", AUTOMATIC1111 checkpoint short hash).
* ``a1111``: the first 12 hex digits (AUTOMATIC1111 ``TI hashes:`` in infotext).
* ``addnet``: sha256 of a safetensors file's tensor payload, without its JSON header
  (kohya ``sshs_model_hash``, Civitai "AutoV3" when cut to 12).
* ``a1111_checksum``: AUTOMATIC1111's 4-hex vector checksum, shown as ``name [xxxx]``.

The legacy AUTOMATIC1111 hash (bytes 1 MiB..1 MiB+64 KiB) is deliberately absent: for every
file smaller than 1 MiB, which is every embedding, it is ``e3b0c442``.
"""

from __future__ import annotations

import hashlib
import os
import struct

import numpy as np

from conceptlib.tensor import Tensor

CHUNK = 1 << 20
#: Values :func:`a1111_checksum` converts at a time.
_CHECKSUM_CHUNK = 1 << 16


def sha256_file(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes, lowercase hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def addnet_hash(data: bytes) -> str | None:
    """sha256 of a safetensors payload (bytes after the header), or None if not safetensors."""
    if len(data) < 8:
        return None
    (header_len,) = struct.unpack("<Q", data[:8])
    if 8 + header_len > len(data) or data[8:9] != b"{":
        return None
    return hashlib.sha256(data[8 + header_len :]).hexdigest()


def a1111_checksum(tensor: Tensor) -> str:
    """AUTOMATIC1111's 4-hex checksum of a vector tensor (``Used embeddings: name [xxxx]``)."""
    # The hash runs over every value in order, in Python; slices of _CHECKSUM_CHUNK values
    # keep the float32, int64 and list copies small whatever the tensor's size (a 250 MB
    # float16 file would otherwise cost gigabytes). (r * 281 ^ v * 997) & M equals
    # ((r * 281) & M) ^ ((v * 997) & M), so the second term is computed by numpy.
    r = 0
    for part in tensor.reshape(-1).float32_blocks(_CHECKSUM_CHUNK):
        # NaN/Inf vectors get a checksum too (inspect shows them), and values near 3e38
        # overflow the x100 in float32 as they do in AUTOMATIC1111: no warning for what is
        # the file's content.
        with np.errstate(invalid="ignore", over="ignore"):
            values = np.trunc(part * np.float32(100)).astype(np.int64)
            terms = (values * 997) & 0xFFFFFFFF
        for v in terms.tolist():
            r = ((r * 281) & 0xFFFFFFFF) ^ v
    return f"{r & 0xFFFF:04x}"


def bytes_hashes(data: bytes) -> dict[str, str]:
    """sha256 and its short forms for a file's bytes (``addnet`` only for safetensors)."""
    full = hashlib.sha256(data).hexdigest()
    out = {"sha256": full, "autov2": full[:10], "a1111": full[:12]}
    payload = addnet_hash(data)
    if payload is not None:
        out["addnet"] = payload
    return out
