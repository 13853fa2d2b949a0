"""Look inside a concept against a model's vocabulary: norms, nearest words, explanations.

What ``conceptlib inspect FILE|NAME --model MODEL`` shows. A learned vector lives in the same
space as the vocabulary's own token vectors (the rows of the text encoder's token-embedding
matrix), so it can be read against them:

* its L2 norm, and where that norm sits among the vocabulary's norms (a percentile: a vector far
  above the 99th is what makes a concept "overpower" a prompt);
* the K tokens whose vectors point the most the same way (cosine similarity), for each vector
  and for their mean;
* ``explain``: a few vocabulary vectors whose weighted sum best reproduces the vector
  (orthogonal matching pursuit: pick the token most aligned with what is left, refit all the
  weights by least squares, repeat), with the part left unexplained. "Mostly 'watercolor' +
  'pastel'" reads better than 768 numbers.

Everything is numpy; torch is never imported. The vocabulary's vectors are read straight from
the model's weight file (:func:`conceptlib.models.token_matrix`, a seek, no model load) and kept
unit-normalised in ``<home>/cache/vocabulary/`` under the matrix's fingerprint, so later
commands map the file instead of converting 49,408 rows again. SDXL concepts are read per
encoder (``clip_l`` against clip_l's vocabulary, ``clip_g`` against clip_g's).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from conceptlib._atomic import atomic_write_bytes
from conceptlib._filecache import CACHE_DIR
from conceptlib.config import home as library_home
from conceptlib.errors import ConceptDoesNotFitError, UsageError
from conceptlib.families import describe_widths
from conceptlib.models import ModelInfo, token_matrix, tokens_by_id

if TYPE_CHECKING:
    from conceptlib.embedding import Embedding

__all__ = ["Explanation", "Neighbor", "Vocabulary", "analyse", "check_model", "explain", "explain_many", "heat_rgb", "load_vocabulary", "nearest", "plot"]

#: Neighbours shown per vector unless asked otherwise.
DEFAULT_NEIGHBORS = 10
#: Most neighbours a report lists (past a few dozen they are noise, and the JSON grows with them).
MAX_NEIGHBORS = 1000
#: Vocabulary vectors an explanation uses unless asked otherwise, and at most.
DEFAULT_TERMS = 4
MAX_TERMS = 32
#: An explanation stops early once what is left is this small a part of the vector.
_DONE = 1e-4
_FOLDER = "vocabulary"


@dataclass
class Vocabulary:
    """One encoder's vocabulary as vectors.

    Attributes:
        key: the encoder (``clip_l``, ``clip_h``, ``clip_g``).
        tokens: the token of each row (``cat</w>`` ends a word; without ``</w>`` it goes on).
        unit: the rows scaled to length 1 (float32), for cosine similarities.
        norms: each row's length.
    """

    key: str
    tokens: list[str]
    unit: np.ndarray
    norms: np.ndarray

    def word(self, index: int) -> str:
        """Row ``index`` as a reader sees it: ``cat`` for ``cat</w>``, ``water…`` for a word start,
        ``é`` for the byte-level ``Ã©`` (bytes that are no whole character show as backslash escapes)."""
        token = self.tokens[index] if index < len(self.tokens) else ""
        if not token:
            return f"<id {index}>"
        ends = token.endswith("</w>")
        body = token[: -len("</w>")] if ends else token
        table = _byte_decoder()
        if all(c in table for c in body):
            body = bytes(table[c] for c in body).decode("utf-8", errors="backslashreplace")
        return body if ends else body + "…"

    def vector(self, index: int) -> np.ndarray:
        """Row ``index`` at its own length."""
        return np.asarray(self.unit[index], dtype=np.float32) * np.float32(self.norms[index])


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    from conceptlib.tiny import byte_decoder

    return byte_decoder()


@dataclass
class Neighbor:
    """A vocabulary token near a vector: its row, as a reader sees it, and the cosine similarity."""

    id: int
    word: str
    cosine: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"id": self.id, "word": self.word, "cosine": round(self.cosine, 4)}


def _cached(home: Path, fingerprint: str, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    folder = home / CACHE_DIR / _FOLDER
    try:
        unit = np.load(folder / f"{fingerprint}-{key}.unit.npy", mmap_mode="r", allow_pickle=False)
        norms = np.load(folder / f"{fingerprint}-{key}.norms.npy", allow_pickle=False)
    except (OSError, ValueError):
        return None
    if unit.ndim != 2 or unit.dtype != np.float32 or norms.shape != (unit.shape[0],):
        return None  # a damaged cache is never trusted: it is rebuilt
    return unit, norms


def _store(home: Path, fingerprint: str, key: str, unit: np.ndarray, norms: np.ndarray) -> None:
    folder = home / CACHE_DIR / _FOLDER
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for suffix, array in (("norms", norms), ("unit", unit)):  # unit last: it marks a whole entry
            buffer = io.BytesIO()
            np.save(buffer, array, allow_pickle=False)
            atomic_write_bytes(folder / f"{fingerprint}-{key}.{suffix}.npy", buffer.getvalue())
    except OSError:
        return  # an unwritable home costs the shortcut, not the command


def check_model(model: ModelInfo) -> None:
    """Refuse, before any work, a model without files to read the vocabulary's vectors from.

    Raises:
        UsageError: a family name (the message :func:`conceptlib.models.token_matrix` gives).
    """
    if model.kind not in ("diffusers", "checkpoint") or not model.path:
        token_matrix(model, model.encoder_keys[0])  # raises its one message for a model without files


def load_vocabulary(model: ModelInfo, key: str, *, home: str | os.PathLike[str] | None = None) -> Vocabulary:
    """The vocabulary of one of ``model``'s encoders, as unit vectors and norms.

    Raises:
        UsageError: a family name (no weights) or a model whose vocabulary is nowhere at hand.
    """
    check_model(model)
    enc = model.encoder(key)
    tokens = tokens_by_id(model, key, home=home)
    if enc is None or tokens is None:
        raise UsageError(
            f"{model.display_name}: no {key} vocabulary at hand to name the tokens",
            hint="a single-file checkpoint carries no tokenizer: register a diffusers folder of the same family once "
            "(`conceptlib models add`) and its vocabulary is stored for every model",
        )
    root = library_home(home)
    cached = _cached(root, enc.fingerprint, key) if enc.fingerprint else None
    if cached is None:
        matrix = token_matrix(model, key)
        rows = np.concatenate([block.astype(np.float32) for block in matrix.float32_blocks(4096)]) if matrix.shape[0] else np.zeros((0, enc.width), np.float32)
        norms = np.linalg.norm(rows, axis=1).astype(np.float32)
        safe = np.where(norms > 0, norms, np.float32(1))
        unit = (rows / safe[:, None]).astype(np.float32)
        if enc.fingerprint:
            _store(root, enc.fingerprint, key, unit, norms)
    else:
        unit, norms = cached
    return Vocabulary(key, tokens, unit, norms)


def nearest(vectors: np.ndarray, vocabulary: Vocabulary, k: int = DEFAULT_NEIGHBORS) -> list[list[Neighbor]]:
    """The ``k`` vocabulary tokens nearest each row of ``vectors`` by cosine similarity, nearest first."""
    vectors = np.asarray(vectors, dtype=np.float32).reshape(-1, vocabulary.unit.shape[1])
    lengths = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.where(lengths > 0, lengths, 1)
    sims = unit @ vocabulary.unit.T
    k = max(0, min(k, sims.shape[1]))
    found: list[list[Neighbor]] = []
    for row in sims:
        top = np.argpartition(-row, k - 1)[:k] if 0 < k < row.size else np.arange(row.size)[:k]
        top = top[np.lexsort((top, -row[top]))]  # by similarity, ties by id: the same order every run
        found.append([Neighbor(int(i), vocabulary.word(int(i)), float(row[i])) for i in top])
    return found


@dataclass
class Explanation:
    """A vector as a weighted sum of vocabulary vectors, and what is left over.

    Attributes:
        terms: ``(row, word, weight)``, in the order they were found.
        residual: the length of what is left, as a part of the vector's length (0 is exact).
    """

    terms: list[tuple[int, str, float]]
    residual: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"terms": [{"id": i, "word": w, "weight": round(c, 4)} for i, w, c in self.terms], "residual": round(self.residual, 4)}

    def text(self) -> str:
        """``0.71 × watercolor + 0.32 × pastel (residual 0.41)``."""
        parts = " + ".join(f"{c:.2f} × {w}" for _i, w, c in self.terms) or "nothing"
        return f"{parts} (residual {self.residual:.2f})"


def explain(vector: np.ndarray, vocabulary: Vocabulary, terms: int = DEFAULT_TERMS) -> Explanation:
    """Up to ``terms`` vocabulary vectors whose least-squares weighted sum best reproduces ``vector``.

    Orthogonal matching pursuit: each round takes the token most aligned with the residual,
    then refits every chosen token's weight together, so later picks correct earlier ones.
    """
    return explain_many(np.asarray(vector).reshape(1, -1), vocabulary, terms)[0]


def explain_many(vectors: np.ndarray, vocabulary: Vocabulary, terms: int = DEFAULT_TERMS) -> list[Explanation]:
    """:func:`explain` for every row of ``vectors``, each round scored for all rows in one product."""
    targets = np.asarray(vectors, dtype=np.float64).reshape(-1, vocabulary.unit.shape[1])
    lengths = np.linalg.norm(targets, axis=1)
    chosen: list[list[int]] = [[] for _ in targets]
    weights: list[np.ndarray] = [np.zeros(0) for _ in targets]
    residuals = targets.copy()
    active = [i for i, length in enumerate(lengths) if length > 0 and np.isfinite(length)]
    for _ in range(max(0, min(terms, MAX_TERMS, vocabulary.unit.shape[0]))):
        if not active:
            break
        scores = residuals[active].astype(np.float32) @ np.asarray(vocabulary.unit).T
        still = []
        for row, i in enumerate(active):
            scores[row, chosen[i]] = -np.inf
            chosen[i].append(int(np.argmax(scores[row])))
            basis = np.stack([vocabulary.vector(t).astype(np.float64) for t in chosen[i]], axis=1)
            weights[i] = np.linalg.lstsq(basis, targets[i], rcond=None)[0]
            residuals[i] = targets[i] - basis @ weights[i]
            if np.linalg.norm(residuals[i]) > _DONE * lengths[i]:
                still.append(i)
        active = still
    found = []
    for i, length in enumerate(lengths):
        if length == 0 or not np.isfinite(length):
            found.append(Explanation([], 0.0 if length == 0 else float("nan")))
            continue
        terms_found = [(t, vocabulary.word(t), float(c)) for t, c in zip(chosen[i], weights[i], strict=True)]
        found.append(Explanation(terms_found, float(np.linalg.norm(residuals[i]) / length)))
    return found


def analyse(
    embedding: Embedding,
    model: ModelInfo,
    *,
    neighbors: int = DEFAULT_NEIGHBORS,
    terms: int = 0,
    home: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Read every vector of ``embedding`` against ``model``'s vocabulary, encoder by encoder.

    Args:
        embedding: the concept.
        model: a model with weights (a diffusers folder or a single file).
        neighbors: nearest tokens listed per vector and for the mean (0 for none).
        terms: vocabulary tokens per explanation (0: no explanations).
        home: the library folder (its cache and stored vocabularies).

    Returns:
        ``{"model": ..., "encoders": {key: {"vocabulary": {...}, "vectors": [...], "mean": {...}}}}``,
        JSON-ready; each vector has ``norm``, ``norm_percentile``, ``min``, ``max``, ``std``,
        ``neighbors`` and (with ``terms``) ``explanation``.

    Raises:
        ConceptDoesNotFitError: the concept has none of the model's encoders (widths named).
        UsageError: a model without weights or vocabulary (see :func:`load_vocabulary`).
    """
    check_model(model)
    keys = [k for k in model.encoder_keys if k in embedding.vectors]
    if not keys:
        raise ConceptDoesNotFitError(
            embedding.token or "the concept",
            f"its vectors ({describe_widths(embedding.widths)}) fit no encoder of {model.display_name} ({model.width_label})",
        )
    report: dict[str, Any] = {"model": model.display_name, "family": model.family, "encoders": {}}
    for key in keys:
        vocabulary = load_vocabulary(model, key, home=home)
        vectors = embedding.vectors[key].to_float32().reshape(-1, vocabulary.unit.shape[1])
        order = np.sort(vocabulary.norms)
        rows = []
        near = nearest(vectors, vocabulary, neighbors) if neighbors else [[] for _ in vectors]
        explained = explain_many(vectors, vocabulary, terms) if terms else []
        for index, (vector, found) in enumerate(zip(vectors, near, strict=True)):
            norm = float(np.linalg.norm(vector))
            entry: dict[str, Any] = {
                "norm": round(norm, 4),
                "norm_percentile": round(100.0 * float(np.searchsorted(order, norm)) / max(1, order.size), 2),
                "min": round(float(vector.min()), 4), "max": round(float(vector.max()), 4), "std": round(float(vector.std()), 4),
                "neighbors": [n.to_dict() for n in found],
            }  # fmt: skip
            if terms:
                entry["explanation"] = explained[index].to_dict()
            rows.append(entry)
        mean = vectors.mean(axis=0)
        report["encoders"][key] = {
            "vocabulary": {
                "size": int(order.size),
                "norm_median": round(float(np.median(order)), 4) if order.size else None,
                "norm_p99": round(float(np.percentile(order, 99)), 4) if order.size else None,
            },
            "vectors": rows,
            "mean": {"norm": round(float(np.linalg.norm(mean)), 4), "neighbors": [n.to_dict() for n in nearest(mean, vocabulary, neighbors)[0]] if neighbors else []},
        }
    return report


def heat_rgb(values: np.ndarray) -> np.ndarray:
    """Colours of ``values`` in [-1, 1] (any shape, plus a last axis of R, G, B as uint8):
    white at 0, deeper red towards 1, deeper blue towards -1."""
    values = np.clip(values, -1, 1)
    red = (255 * (1 - np.maximum(-values, 0))).astype(np.uint8)  # full where the value is >= 0
    blue = (255 * (1 - np.maximum(values, 0))).astype(np.uint8)  # full where the value is <= 0
    return np.stack([red, np.minimum(red, blue), blue], axis=-1)


def plot(report: dict[str, Any], embedding: Embedding, path: str | os.PathLike[str]) -> Path:
    """Draw ``report`` as a PNG: per encoder, the vectors' norms beside the vocabulary's, a heat
    map of the values (blue negative, red positive), and each vector's nearest words."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    panels = []
    for key, data in report["encoders"].items():
        vectors = embedding.vectors[key].to_float32().reshape(len(data["vectors"]), -1)
        n, width = vectors.shape
        row_h, bar_w, heat_w, text_w = 18, 160, 384, 420
        panel = Image.new("RGB", (bar_w + heat_w + text_w + 40, 40 + n * row_h + 30), "white")
        draw = ImageDraw.Draw(panel)
        vocab = data["vocabulary"]
        draw.text((10, 8), f"{key}: {n} vector{'s' if n != 1 else ''} x {width}; vocabulary norm median {vocab['norm_median']}, 99th {vocab['norm_p99']}", fill="black", font=font)
        top = max([r["norm"] for r in data["vectors"]] + [vocab["norm_p99"] or 0]) or 1.0
        scale = float(np.abs(vectors).max()) or 1.0
        columns = np.linspace(0, width, heat_w, endpoint=False).astype(int)
        for i, row in enumerate(data["vectors"]):
            y = 36 + i * row_h
            length = int((bar_w - 20) * row["norm"] / top)
            draw.rectangle((10, y + 3, 10 + max(1, length), y + row_h - 3), fill=(70, 110, 200))
            strip = heat_rgb(vectors[i][columns] / scale)[None].repeat(row_h - 4, axis=0)
            panel.paste(Image.fromarray(strip, "RGB"), (bar_w + 10, y + 2))
            words = ", ".join(nb["word"] for nb in row["neighbors"][:5])
            draw.text((bar_w + heat_w + 24, y + 3), f"{i}: |v| {row['norm']:.3f}  {words}"[:70], fill="black", font=font)
        if vocab["norm_p99"]:
            x = 10 + int((bar_w - 20) * vocab["norm_p99"] / top)
            draw.line((x, 34, x, 38 + n * row_h), fill=(200, 60, 60))
        draw.text((10, 40 + n * row_h + 8), "bars: norms (red line: vocabulary 99th percentile)   map: values, blue < 0 < red", fill="gray", font=font)
        panels.append(panel)
    image = Image.new("RGB", (max(p.width for p in panels), sum(p.height for p in panels)), "white")
    y = 0
    for panel in panels:
        image.paste(panel, (0, y))
        y += panel.height
    target = Path(path)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(target, buffer.getvalue())
    return target
