"""How alike two concepts are: a similarity of vector sets, and the signature that screens for it.

Two concepts are compared encoder by encoder (``clip_l`` with ``clip_l``; SDXL's two encoders
each, then averaged). A concept is a *set* of vectors whose order and count vary between copies
of "the same" concept (a 4-vector retrain, vectors saved in another order), so the measure is
the symmetric best-match cosine:

    S(A, B) = ½ · (mean over a in A of max over b in B of cos(a, b)
                 + mean over b in B of max over a in A of cos(a, b))

1 for the same directions whatever the order, dtype (an fp16 copy scores 0.9999...) or scale
(cosines ignore length); about 0 for unrelated vectors; a retrain or another training step of
the same concept scores high without being 1.

Comparing every pair of a 10,000-concept library that way would decode every file. Each
concept therefore also gets a **signature** per encoder: the mean of its unit vectors, scaled to
length 1 (the direction the set points in, :data:`SIGNATURE_DTYPE`, 3 KB for clip_l), stored in
the index. Signatures are compared all at once (one matrix product); only the pairs whose
signatures are close (:data:`SCREEN_MARGIN` below the threshold asked for) are decoded and
scored exactly. Sets that point the same way on average have close signatures, so near-
duplicates pass the screen; a pair with a high S and far-apart means would need vectors that
match one by one yet average out differently, which the margin allows for.

numpy only; no torch, no index access (the library stores and reads signatures).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from conceptlib.embedding import Embedding

__all__ = [
    "NEAR_DUPLICATE",
    "SCREEN_MARGIN",
    "from_bytes",
    "screen",
    "set_similarity",
    "signature",
    "to_bytes",
]

#: The score from which ``add``, ``pull`` and ``dedupe`` call two concepts near-duplicates.
NEAR_DUPLICATE = 0.95
#: How far below a threshold a signature may score and still be scored exactly.
SCREEN_MARGIN = 0.15
#: Signatures are stored as little-endian float32.
SIGNATURE_DTYPE = np.dtype("<f4")


def _unit_rows(embedding: Embedding, key: str) -> np.ndarray:
    rows = embedding.vectors[key].to_float32().astype(np.float64).reshape(embedding.vectors[key].shape[0], -1)
    rows = np.where(np.isfinite(rows), rows, 0.0)
    lengths = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(lengths > 0, lengths, 1.0)


def signature(embedding: Embedding) -> dict[str, np.ndarray]:
    """Encoder key -> the unit mean of the concept's unit vectors (zeros for an all-zero concept)."""
    found = {}
    for key in embedding.vectors:
        mean = _unit_rows(embedding, key).mean(axis=0)
        length = float(np.linalg.norm(mean))
        found[key] = (mean / length if length > 0 else mean).astype(SIGNATURE_DTYPE)
    return found


def to_bytes(vector: np.ndarray) -> bytes:
    """A signature as stored in the index."""
    return np.asarray(vector, dtype=SIGNATURE_DTYPE).tobytes()


def from_bytes(data: bytes) -> np.ndarray:
    """A stored signature (a length that is no whole number of floats reads as empty)."""
    if len(data) % SIGNATURE_DTYPE.itemsize:
        return np.zeros(0, SIGNATURE_DTYPE)
    return np.frombuffer(data, dtype=SIGNATURE_DTYPE)


def set_similarity(a: Embedding, b: Embedding) -> float | None:
    """:math:`S(A, B)` averaged over the encoders both concepts have (None when they share none).

    Example:
        >>> set_similarity(concept, concept)  # doctest: +SKIP
        1.0
    """
    scores = []
    for key in a.vectors:
        if key not in b.vectors or a.vectors[key].shape[-1] != b.vectors[key].shape[-1]:
            continue
        cos = _unit_rows(a, key) @ _unit_rows(b, key).T
        scores.append(0.5 * (float(cos.max(axis=1).mean()) + float(cos.max(axis=0).mean())))
    return float(np.mean(scores)) if scores else None


def screen(query: dict[str, np.ndarray], others: dict[str, np.ndarray]) -> np.ndarray:
    """Signature cosines of one concept against many, averaged over ``query``'s encoders.

    Args:
        query: encoder -> signature of one concept.
        others: encoder -> ``[n, width]`` signatures of the n concepts to compare with (rows of
            zeros where a concept lacks the encoder).
    """
    keys = [k for k in query if k in others]
    if not keys:
        return np.zeros(0)
    return np.mean([others[k].astype(np.float32) @ query[k].astype(np.float32) for k in keys], axis=0)
