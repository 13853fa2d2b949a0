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


class _Family:
    """The signatures of one family as matrices, one per encoder, grown in place as concepts come.

    Rows of a concept without an encoder stay zero (it scores 0 there). Capacity doubles, so
    adding a concept costs its own rows, not a copy of the family.
    """

    def __init__(self) -> None:
        self.names: list[str] = []
        self.row: dict[str, int] = {}
        self._data: dict[str, np.ndarray] = {}

    def put(self, name: str, vectors: dict[str, np.ndarray]) -> None:
        if name not in self.row:
            self.row[name] = len(self.names)
            self.names.append(name)
        i = self.row[name]
        for key, vector in vectors.items():
            data = self._data.get(key)
            if data is None:
                data = self._data[key] = np.zeros((max(16, len(self.names)), vector.size), np.float32)
            if data.shape[1] != vector.size:
                continue  # another width under the same key: no match is possible
            if i >= data.shape[0]:
                grown = np.zeros((2 * data.shape[0], data.shape[1]), np.float32)
                grown[: data.shape[0]] = data
                data = self._data[key] = grown
            data[i] = vector
        for key, data in self._data.items():
            if key not in vectors and i < data.shape[0]:
                data[i] = 0

    def matrices(self) -> dict[str, np.ndarray]:
        """encoder -> ``[len(names), width]`` (views)."""
        n = len(self.names)
        matrices = {}
        for key, data in self._data.items():
            if data.shape[0] < n:
                grown = np.zeros((max(n, 2 * data.shape[0]), data.shape[1]), np.float32)
                grown[: data.shape[0]] = data
                data = self._data[key] = grown
            matrices[key] = data[:n]
        return matrices


@dataclass
class _Table:
    """The index's signatures as last read: the table's mark, each concept's, and each family's."""

    count: int
    top: int
    signed: dict[str, _Signed]
    families: dict[str | None, _Family]

    def put(self, name: str, entry: _Signed) -> None:
        self.signed[name] = entry
        self.families.setdefault(entry.family, _Family()).put(name, entry.vectors)


def signatures(library: Library, *, fill: Collection[str] | None = None) -> _Table:
    """Every readable concept's signature, computing and storing the missing ones first.

    Args:
        library: the library.
        fill: compute missing signatures only for these concepts (``add`` signs what it added
            and compares with what is signed; a first ``similar`` or ``dedupe`` signs the rest).

    A concept that cannot be read (damaged) has none and is left out: ``verify`` names it.
    """
    # Signed as each is decoded: only the signatures are kept, not thousands of embeddings.
    computed: dict[str, tuple[str, dict[str, Any], str | None]] = {}
    for name, content_hash in library.index.unsigned(fill):
        try:
            emb = library.embedding(name)
        except ConceptlibError:
            continue
        computed[name] = (content_hash, signature(emb), emb.family.key if emb.family else None)
    if computed:
        try:
            with library._lock(exclusive=False), library.registry.transaction() as tx:
                for name, (content_hash, vectors, _family) in computed.items():
                    tx.put_signatures(name, content_hash, {k: to_bytes(v) for k, v in vectors.items()})
        except Exception as exc:
            if not _cannot_write(exc):
                raise
            # A read-only or busy library: compared all the same, stored another time.
    table = _stored(library)  # with what was just stored, appended
    for name, (_hash, vectors, family) in computed.items():
        if name not in table.signed:  # not stored: still compared this time
            table.put(name, _Signed(family, vectors))
    return table


def _stored(library: Library) -> _Table:
    """The signatures in the index, kept by the Library object between calls.

    ``add`` compares every concept it adds with its whole family; reading 10,000 signatures
    (30 MB) and building the family's matrix per call would cost an ``add`` loop more than the
    adds. Kept rows are re-read only when the table changed other than by appending (a concept
    removed, updated or re-indexed); appended rows are read and added alone.
    """
    index = library.index
    count, top = index.signature_mark()
    kept: _Table | None = library._signatures
    if kept is not None and (kept.count, kept.top) == (count, top):
        return kept
    rows = index.signatures(after=kept.top) if kept is not None and top > kept.top and count > kept.count else None
    table = kept if kept is not None and rows is not None and len(rows) == count - kept.count else None
    if table is None:
        table, rows = _Table(count, top, {}, {}), index.signatures()
    table.count, table.top = count, top
    read: dict[str, _Signed] = {}
    for name, family, encoder, data in rows or []:
        read.setdefault(name, _Signed(family, {})).vectors[encoder] = from_bytes(data)
    for name, entry in read.items():
        table.put(name, entry)
    library._signatures = table
    return table


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


def _alike(table: _Table, name: str) -> tuple[list[str], np.ndarray]:
    """The other concepts of ``name``'s family and their signature cosines with it."""
    mine = table.signed[name]
    family = table.families[mine.family]
    scores = screen(mine.vectors, family.matrices())
    keep = [i for i, other in enumerate(family.names) if other != name]
    return [family.names[i] for i in keep], scores[keep] if scores.size else np.zeros(len(keep))


def similar(library: Library, name: str, *, top: int = 10) -> list[Match]:
    """The ``top`` concepts of ``name``'s family most like it, best first (see :meth:`Library.similar`)."""
    concept = library.show(name)
    table = signatures(library)
    if concept.name not in table.signed:
        library.embedding(concept.name)  # raises what makes it unreadable
        return []
    others, screened = _alike(table, concept.name)
    if not others or top <= 0:
        return []
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
    table = signatures(library)
    vectors = _Vectors(library)
    parent: dict[str, str] = {}

    def root(name: str) -> str:
        while parent.get(name, name) != name:
            name = parent[name]
        return name

    best: dict[str, float] = {}
    for family in table.families.values():
        names = family.names
        if len(names) < 2:
            continue
        matrix = family.matrices()
        for start in range(0, len(names), _BLOCK):
            cosines = np.mean([rows[start : start + _BLOCK] @ rows.T for rows in matrix.values()], axis=0)
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
    table = signatures(library, fill=names)
    vectors = _Vectors(library)
    found: dict[str, list[Match]] = {}
    for name in names:
        if name not in table.signed:
            continue
        others, screened = _alike(table, name)
        matches = []
        for i in np.nonzero(screened >= threshold - SCREEN_MARGIN)[0]:
            score = vectors.score(name, others[int(i)])
            if score is not None and score >= threshold:
                matches.append(Match(others[int(i)], score))
        if matches:
            found[name] = sorted(matches, key=lambda m: (-m.score, m.name))[:top]
    return found
