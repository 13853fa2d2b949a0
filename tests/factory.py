"""Build small embeddings and files in every format, from seeded random vectors."""

from __future__ import annotations

import numpy as np

from conceptlib.embedding import Embedding
from conceptlib.tensor import Tensor


def vectors(n: int, width: int, *, dtype: str = "float32", seed: int = 0) -> Tensor:
    """Seeded normal vectors of shape [n, width] in ``dtype``."""
    values = np.random.default_rng(seed).standard_normal((n, width)).astype(np.float32) * 0.02
    if dtype == "float32":
        return Tensor.from_numpy(values)
    if dtype == "float16":
        return Tensor.from_numpy(values.astype(np.float16))
    if dtype == "bfloat16":
        bits = (values.view(np.uint32) >> 16).astype(np.uint16)  # truncation: any bits will do
        return Tensor(bits, "bfloat16")
    raise ValueError(dtype)


def sd1(n: int = 1, *, dtype: str = "float32", seed: int = 0, **fields: object) -> Embedding:
    return Embedding({"clip_l": vectors(n, 768, dtype=dtype, seed=seed)}, **fields)  # type: ignore[arg-type]


def sd2(n: int = 1, *, dtype: str = "float32", seed: int = 0, **fields: object) -> Embedding:
    return Embedding({"clip_h": vectors(n, 1024, dtype=dtype, seed=seed)}, **fields)  # type: ignore[arg-type]


def sdxl(n: int = 2, *, dtype: str = "float32", seed: int = 0, **fields: object) -> Embedding:
    return Embedding(
        {
            "clip_l": vectors(n, 768, dtype=dtype, seed=seed),
            "clip_g": vectors(n, 1280, dtype=dtype, seed=seed + 1),
        },
        **fields,  # type: ignore[arg-type]
    )
