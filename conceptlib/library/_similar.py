"""Similar and near-duplicate concepts of a library: signatures screen, vectors decide.

The measure and the signatures are :mod:`conceptlib.similarity`'s. Signatures live in the
index (migration ``m005_signatures``) and are filled here the first time a comparison needs
them: each concept without a current one is decoded once (its vectors checked against its
content hash, as every read of the library does) and its signature stored. A library that
cannot be written still compares; it only computes the signatures again next time.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from conceptlib.errors import ConceptlibError
from conceptlib.similarity import (
    NEAR_DUPLICATE,
    SCREEN_MARGIN,
    from_bytes,
    screen,
    set_similarity,
    signature,
    to_bytes,
)

if TYPE_CHECKING:
    from conceptlib.embedding import Embedding
    from conceptlib.library import Library

#: Concepts whose signatures are compared at once when looking for near-duplicates (a block of
#: rows against the whole family: 1,024 x 10,000 float32 cosines is 40 MB).
_BLOCK = 1024
#: ``similar`` scores exactly this many of the best-screened candidates per result asked for.
_CANDIDATES_PER_RESULT = 5


@dataclass(frozen=True)
class Match:
    """A concept found alike: its name and the set similarity (1 is the same directions)."""

    name: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"name": self.name, "score": round(self.score, 4)}


@dataclass
class _Signed:
    family: str | None
    vectors: dict[str, np.ndarray]


def signatures(library: Library, *, fill: Collection[str] | None = None) -> dict[str, _Signed]:
    """Every readable concept's signature, computing and storing the missing ones first.

    Args:
        library: the library.
        fill: compute missing signatures only for these concepts (``add`` signs what it added
            and compares with what is signed; a first ``similar`` or ``dedupe`` signs the rest).

    A concept that cannot be read (damaged) has none and is left out: ``verify`` names it.
    """
    index = library.index
    fresh: dict[str, tuple[str, Embedding]] = {}
    for name, content_hash in index.unsigned():
        if fill is not None and name not in fill:
            continue
        try:
            fresh[name] = (content_hash, library.embedding(name))
        except ConceptlibError:
            continue
    found: dict[str, _Signed] = {}
    for name, family, encoder, data in index.signatures():
        found.setdefault(name, _Signed(family, {})).vectors[encoder] = from_bytes(data)
    if fresh:
        computed = {name: (content_hash, signature(emb), emb.family.key if emb.family else None) for name, (content_hash, emb) in fresh.items()}
        for name, (_hash, vectors, family) in computed.items():
            found[name] = _Signed(family, vectors)
        try:
            with library._lock(exclusive=False), library.registry.transaction() as tx:
                for name, (content_hash, vectors, _family) in computed.items():
                    tx.put_signatures(name, content_hash, {k: to_bytes(v) for k, v in vectors.items()})
        except Exception as exc:
            if not _cannot_write(exc):
                raise
            # A read-only or busy library: compared all the same, stored another time.
    return found


def _cannot_write(exc: Exception) -> bool:
    """Whether storing signatures failed because the library cannot be written just now.

    The index reports a read-only or locked database through the database driver's own
    OperationalError (wrapped by SQLAlchemy), which the library layer does not import.
    """
    from conceptlib.errors import LibraryBusyError

    if isinstance(exc, (OSError, LibraryBusyError)):
        return True
    text = str(exc).lower()
    return type(exc).__name__ == "OperationalError" and ("readonly" in text or "read-only" in text or "locked" in text)


class _Vectors:
    """Decoded concepts, each read once per comparison run."""

    def __init__(self, library: Library) -> None:
        self.library = library
        self._seen: dict[str, Embedding | None] = {}

    def get(self, name: str) -> Embedding | None:
        if name not in self._seen:
            try:
                self._seen[name] = self.library.embedding(name)
            except ConceptlibError:
                self._seen[name] = None
        return self._seen[name]

    def score(self, a: str, b: str) -> float | None:
        first, second = self.get(a), self.get(b)
        return set_similarity(first, second) if first is not None and second is not None else None


def _family_matrix(signed: dict[str, _Signed], names: list[str]) -> dict[str, np.ndarray]:
    """encoder -> ``[len(names), width]`` signatures (zeros where a concept lacks the encoder)."""
    widths: dict[str, int] = {}
    for name in names:
        for key, vector in signed[name].vectors.items():
            widths.setdefault(key, vector.size)
    matrix = {key: np.zeros((len(names), width), np.float32) for key, width in widths.items()}
    for row, name in enumerate(names):
        for key, vector in signed[name].vectors.items():
            if vector.size == widths[key]:
                matrix[key][row] = vector
    return matrix


def similar(library: Library, name: str, *, top: int = 10) -> list[Match]:
    """The ``top`` concepts of ``name``'s family most like it, best first (see :meth:`Library.similar`)."""
    concept = library.show(name)
    signed = signatures(library)
    mine = signed.get(concept.name)
    if mine is None:
        library.embedding(concept.name)  # raises what makes it unreadable
        return []
    others = [n for n, s in signed.items() if n != concept.name and s.family == mine.family]
    if not others or top <= 0:
        return []
    screened = screen(mine.vectors, _family_matrix(signed, others))
    keep = np.argsort(-screened, kind="stable")[: top * _CANDIDATES_PER_RESULT]
    vectors = _Vectors(library)
    matches = []
    for i in keep:
        score = vectors.score(concept.name, others[int(i)])
        if score is not None:
            matches.append(Match(others[int(i)], score))
    matches.sort(key=lambda m: (-m.score, m.name))
    return matches[:top]


def near_duplicates(library: Library, *, threshold: float = NEAR_DUPLICATE) -> list[list[Match]]:
    """Groups of concepts that are near-duplicates of each other (see :meth:`Library.near_duplicates`)."""
    signed = signatures(library)
    families: dict[str | None, list[str]] = {}
    for name, entry in sorted(signed.items()):
        families.setdefault(entry.family, []).append(name)
    vectors = _Vectors(library)
    parent: dict[str, str] = {}

    def root(name: str) -> str:
        while parent.get(name, name) != name:
            name = parent[name]
        return name

    best: dict[str, float] = {}
    for names in families.values():
        if len(names) < 2:
            continue
        matrix = _family_matrix(signed, names)
        for start in range(0, len(names), _BLOCK):
            block = {key: rows[start : start + _BLOCK] for key, rows in matrix.items()}
            cosines = np.mean([block[key] @ matrix[key].T for key in matrix], axis=0)
            for i, j in zip(*np.nonzero(cosines >= threshold - SCREEN_MARGIN), strict=True):
                a, b = names[start + int(i)], names[int(j)]
                if a >= b:
                    continue  # each pair once, and never a concept with itself
                score = vectors.score(a, b)
                if score is None or score < threshold:
                    continue
                parent[root(b)] = root(a)
                for n in (a, b):
                    best[n] = max(best.get(n, 0.0), score)
    groups: dict[str, list[Match]] = {}
    for name in sorted(best):
        groups.setdefault(root(name), []).append(Match(name, best[name]))
    return sorted(groups.values(), key=lambda g: (-max(m.score for m in g), g[0].name))


def near_duplicates_of(library: Library, names: Collection[str], *, threshold: float = NEAR_DUPLICATE, top: int = 3) -> dict[str, list[Match]]:
    """For each of ``names`` (just added), the signed concepts of its family at ``threshold`` or above."""
    signed = signatures(library, fill=names)
    vectors = _Vectors(library)
    found: dict[str, list[Match]] = {}
    for name in names:
        mine = signed.get(name)
        if mine is None:
            continue
        others = [n for n, s in signed.items() if n != name and s.family == mine.family]
        if not others:
            continue
        screened = screen(mine.vectors, _family_matrix(signed, others))
        matches = []
        for i in np.nonzero(screened >= threshold - SCREEN_MARGIN)[0]:
            score = vectors.score(name, others[int(i)])
            if score is not None and score >= threshold:
                matches.append(Match(others[int(i)], score))
        if matches:
            found[name] = sorted(matches, key=lambda m: (-m.score, m.name))[:top]
    return found
