"""The index: read queries and write transactions over the tables of :mod:`.tables`.

Two ways in, one schema and one set of SQL strings:

* :class:`Registry` (SQLModel / SQLAlchemy) owns the database: it migrates on open and does
  every write, each in one ``BEGIN IMMEDIATE`` transaction.
* :class:`SqliteReader` (the standard library's ``sqlite3``) answers ``list``, ``search`` and
  ``show``. Why a second path: importing sqlmodel costs ~0.45 s (sqlalchemy alone ~0.45 s on
  the reference machine), more than the whole 0.3 s budget of those commands at 10,000
  concepts, while ``sqlite3`` imports in ~5 ms. It is only used once :func:`migrations.names`
  are all recorded, so it never sees an old schema; writes never go through it.

Both return plain data (names, :class:`~conceptlib.concept.ConceptSummary`, dicts), never
rows. Full records are not in the index: ``concept.json`` is the source of truth and the
library reads it.

Concurrency: SQLite in WAL mode lets readers run beside one writer; ``busy_timeout`` makes
writers queue instead of failing; ``BEGIN IMMEDIATE`` takes the write lock at the start of a
transaction, so a transaction that read something never has to upgrade its lock later, which is
what produces "database is locked" under concurrent writers even with a busy timeout.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import sqlite3
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conceptlib.concept import Concept, ConceptRow, ConceptSummary
from conceptlib.errors import IndexDamagedError, UsageError
from conceptlib.registry import migrations

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlmodel import Session

#: Seconds a connection waits for another writer before giving up.
BUSY_TIMEOUT_S = 30.0
INDEX_NAME = "index.sqlite"

# Tags never hold control characters (the library refuses them), so the ASCII unit separator
# can join them in one column without ambiguity.
_TAG_SEP = "\x1f"
_TAGS_COLUMN = f"(SELECT group_concat(t.tag, '{_TAG_SEP}') FROM tags t WHERE t.concept_id = c.id) AS tags"
_SUMMARY_COLUMNS = f"""c.name, c.token, c.type, c.family, c.encoders, c.vectors, c.dtype, {_TAGS_COLUMN},
    c.description, c.license, c.content_hash, c.source_type, c.source_repo_id,
    c.created_at, c.updated_at, c.kind"""
_SQL_LIST = f"SELECT {_SUMMARY_COLUMNS} FROM concepts c"
_SQL_ROWS = f"SELECT c.name, c.token, c.type, c.family, c.vectors, {_TAGS_COLUMN} FROM concepts c"
_SQL_FTS = f"""SELECT {_SUMMARY_COLUMNS} FROM concepts_fts JOIN concepts c ON c.id = concepts_fts.rowid
    WHERE concepts_fts MATCH :match
    ORDER BY bm25(concepts_fts, 10.0, 10.0, 1.0, 5.0), c.name"""
_SQL_LIKE = f"""SELECT {_SUMMARY_COLUMNS} FROM concepts c
    WHERE c.name LIKE :pattern ESCAPE '\\' OR c.token LIKE :pattern ESCAPE '\\'
       OR c.description LIKE :pattern ESCAPE '\\'
       OR EXISTS (SELECT 1 FROM tags t WHERE t.concept_id = c.id AND t.tag LIKE :pattern ESCAPE '\\')
    ORDER BY c.name"""
_SQL_HAS = "SELECT 1 FROM concepts WHERE name = :name"
# Signatures still valid (computed from the concept's current vectors), and the concepts without one.
_SQL_SIGNATURES = """SELECT c.name, c.family, s.encoder, s.vector FROM signatures s
JOIN concepts c ON c.id = s.concept_id AND c.content_hash = s.content_hash
WHERE s.rowid > :after AND c.kind = 'embedding' ORDER BY c.name, s.encoder"""
_SQL_SIGNATURE_MARK = "SELECT count(*), coalesce(max(rowid), 0) FROM signatures"
_SQL_UNSIGNED = """SELECT c.name, c.content_hash FROM concepts c
WHERE c.kind = 'embedding' AND NOT EXISTS (SELECT 1 FROM signatures s WHERE s.concept_id = c.id AND s.content_hash = c.content_hash)
ORDER BY c.name"""
_SQL_BY_TOKEN = "SELECT name FROM concepts WHERE token = :token ORDER BY name"
_SQL_BY_REPO = "SELECT name FROM concepts WHERE source_repo_id = :repo_id ORDER BY updated_at DESC, name"
_SQL_NAMES = "SELECT name FROM concepts ORDER BY name"
_SQL_STATE = "SELECT name, manifest_sha256 FROM concepts"
_SQL_COUNT = "SELECT count(*) FROM concepts"
_SQL_FTS_COUNT = "SELECT count(*) FROM concepts_fts"
_SQL_CONTENT_HASH = "SELECT name FROM concepts WHERE content_hash = :content_hash AND name != :exclude ORDER BY name"
# CLIP's tokenizer lowercases the prompt, so <Cat> and <cat> are one token to the model.
_SQL_TOKEN = """SELECT name FROM concepts
    WHERE family IS :family AND lower(token) = lower(:token) AND kind = :kind AND name != :exclude ORDER BY name"""


def default_url(home: Path) -> str:
    """The index URL: ``CONCEPTLIB_DATABASE_URL``, else ``sqlite:///<home>/index.sqlite``.

    Args:
        home: the library folder.
    """
    env = os.environ.get("CONCEPTLIB_DATABASE_URL")
    if env:
        return env
    return f"sqlite:///{home / INDEX_NAME}"


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` URL, or None for other URLs (and in-memory)."""
    match = re.fullmatch(r"sqlite(?:\+pysqlite)?:///(.+)", url)
    if not match or match.group(1) == ":memory:":
        return None
    return Path(match.group(1).split("?", 1)[0])


def manifest_sha256(text: str) -> str:
    """sha256 of a manifest's UTF-8 bytes (what ``verify`` compares with the file)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def fts_query(text: str, *, prefix: bool = True) -> str | None:
    """An FTS5 MATCH expression for free text: every word, all required.

    User text is never passed to MATCH as is: FTS5 syntax (quotes, ``-``, ``:``, ``NEAR``)
    would turn ordinary queries like ``cat-toy`` into syntax errors.

    Args:
        text: what the user typed.
        prefix: match each word as a prefix (``cat`` finds ``catalina``), not only whole.

    Returns:
        The expression, or None when ``text`` has no word characters.
    """
    words = re.findall(r"\w+", text)
    if not words:
        return None
    star = "*" if prefix else ""
    return " ".join(f'"{word}"{star}' for word in words)


def like_pattern(text: str) -> str:
    """A LIKE pattern matching ``text`` anywhere, with ``%``, ``_`` and ``\\`` escaped."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


@functools.lru_cache(maxsize=64)
def _encoders(text: str) -> tuple[tuple[str, int], ...]:
    # A library holds a handful of distinct encoder layouts: decode each JSON text once.
    return tuple(json.loads(text).items()) if text else ()


def _tags(joined: str | None) -> list[str]:
    # The tags column joined by the unit separator, or NULL for none: sorted, as everywhere.
    return sorted(joined.split(_TAG_SEP)) if joined else []


def _summary(row: Sequence[Any]) -> ConceptSummary:
    # Positional construction: this runs once per row of `list`, 10,000 times at a time.
    return ConceptSummary(
        row[0], row[1], row[2], row[3], dict(_encoders(row[4])), row[5], row[6],
        _tags(row[7]),
        row[8], row[9], row[10], row[11], row[12], row[13], row[14], row[15],
    )


def _filters(type: str | None, family: str | None, tag: str | None, kind: str | None = None) -> tuple[str, dict[str, Any]]:
    """The WHERE clause (with its parameters) of ``list``'s filters, all of which must hold."""
    clauses: list[str] = []
    params: dict[str, Any] = {}
    if kind is not None:
        clauses.append("c.kind = :kind")
        params["kind"] = kind
    if type is not None:
        clauses.append("c.type = :type")
        params["type"] = type
    if family is not None:
        clauses.append("c.family = :family")
        params["family"] = family
    if tag is not None:
        clauses.append("EXISTS (SELECT 1 FROM tags t WHERE t.concept_id = c.id AND t.tag = :tag)")
        params["tag"] = tag
    return (f" WHERE {' AND '.join(clauses)}" if clauses else ""), params


def is_damage(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite saying the file is not a database or is malformed.

    Those come as the base ``sqlite3.DatabaseError`` itself (SQLITE_NOTADB, SQLITE_CORRUPT),
    possibly wrapped by SQLAlchemy (``.orig``); its subclasses (locked, constraint failed, ...)
    are other problems and are left alone.
    """
    return type(getattr(exc, "orig", None) or exc) is sqlite3.DatabaseError


@contextlib.contextmanager
def damage_guard(path: Path | str | None) -> Iterator[None]:
    """Turn SQLite's damage errors into :class:`IndexDamagedError` naming the index file."""
    try:
        yield
    except Exception as exc:
        if not is_damage(exc):
            raise
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise IndexDamagedError(f"the index is damaged ({reason})", path=path) from exc


class IndexReader:
    """Read queries shared by both ways into the index; subclasses provide :meth:`_query`."""

    def _query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def count(self) -> int:
        """Number of indexed concepts."""
        return int(self._query(_SQL_COUNT)[0][0])

    def names(self) -> list[str]:
        """Every concept name, sorted."""
        return [row[0] for row in self._query(_SQL_NAMES)]

    def state(self) -> dict[str, str]:
        """name -> sha256 of the manifest the index holds (for ``verify``)."""
        return {row[0]: row[1] for row in self._query(_SQL_STATE)}

    def fts_count(self) -> int:
        """Rows of the full-text table (equals :meth:`count` when in sync)."""
        return int(self._query(_SQL_FTS_COUNT)[0][0])

    def damage(self) -> str | None:
        """SQLite's own check of every page (``PRAGMA quick_check``): its first complaint, or None.

        A damaged page is found only by a query that reads it; this reads them all, so
        ``verify`` does not call an index fine that ``search`` would then fail on.
        """
        lines = [str(row[0]) for row in self._query("PRAGMA quick_check")]
        if lines == ["ok"]:
            return None
        complaints = [line for part in lines for line in part.splitlines() if line and not line.startswith("***")]
        return complaints[0] if complaints else "quick_check failed"

    def has(self, name: str) -> bool:
        """Whether a concept named ``name`` is indexed."""
        return bool(self._query(_SQL_HAS, {"name": name}))

    def by_token(self, token: str) -> list[str]:
        """Names of the concepts whose token is exactly ``token`` (one per family at most)."""
        return [row[0] for row in self._query(_SQL_BY_TOKEN, {"token": token})]

    def by_repo(self, repo_id: str) -> str | None:
        """The name of the concept most recently imported from Hub repository ``repo_id``."""
        rows = self._query(_SQL_BY_REPO, {"repo_id": repo_id})
        return rows[0][0] if rows else None

    def content_hash_owner(self, content_hash: str, *, exclude: str = "") -> str | None:
        """The name of a concept with these vectors, other than ``exclude``."""
        rows = self._query(_SQL_CONTENT_HASH, {"content_hash": content_hash, "exclude": exclude})
        return rows[0][0] if rows else None

    def signatures(self, *, after: int = 0) -> list[tuple[str, str | None, str, bytes]]:
        """(name, family, encoder, signature bytes) of every concept whose signature is current.

        Args:
            after: only signatures stored after this mark's rowid (see :meth:`signature_mark`).
        """
        return [(row[0], row[1], row[2], bytes(row[3])) for row in self._query(_SQL_SIGNATURES, {"after": after})]

    def signature_mark(self) -> tuple[int, int]:
        """(rows, highest rowid) of the signature table: unchanged marks mean unchanged rows,
        a higher rowid with as many more rows means rows were only added."""
        count, top = self._query(_SQL_SIGNATURE_MARK)[0]
        return int(count), int(top)

    def unsigned(self, names: Collection[str] | None = None) -> list[tuple[str, str]]:
        """(name, content hash) of the concepts without a current signature (of ``names`` only, when given)."""
        if names is None:
            return [(row[0], row[1]) for row in self._query(_SQL_UNSIGNED)]
        found: list[tuple[str, str]] = []
        wanted = sorted(set(names))
        for start in range(0, len(wanted), 500):  # SQLite allows a few hundred parameters at least
            part = wanted[start : start + 500]
            params = {f"n{i}": name for i, name in enumerate(part)}
            where = ", ".join(f":{key}" for key in params)
            sql = _SQL_UNSIGNED.replace("ORDER BY c.name", f"AND c.name IN ({where}) ORDER BY c.name")
            found += [(row[0], row[1]) for row in self._query(sql, params)]
        return found

    def token_owner(self, family: str | None, token: str, *, exclude: str = "", kind: str = "embedding") -> str | None:
        """The name of an item of ``kind`` and ``family`` using ``token`` (case-insensitively), other than ``exclude``."""
        rows = self._query(_SQL_TOKEN, {"family": family, "token": token, "exclude": exclude, "kind": kind})
        return rows[0][0] if rows else None

    def summaries(self, *, type: str | None = None, family: str | None = None, tag: str | None = None, kind: str | None = None) -> list[ConceptSummary]:
        """Every item matching all the filters given, sorted by name."""
        where, params = _filters(type, family, tag, kind)
        return [_summary(row) for row in self._query(f"{_SQL_LIST}{where} ORDER BY c.name", params)]

    def rows(self, *, type: str | None = None, family: str | None = None, tag: str | None = None, kind: str | None = None) -> list[ConceptRow]:
        """What :meth:`summaries` finds, as the six fields of ``list``'s table only."""
        where, params = _filters(type, family, tag, kind)
        return [
            ConceptRow(name, token, type_, family_, vectors, _tags(tags))
            for name, token, type_, family_, vectors, tags in self._query(f"{_SQL_ROWS}{where} ORDER BY c.name", params)
        ]

    def search(self, text: str, *, limit: int | None = None) -> list[ConceptSummary]:
        """Concepts matching ``text``: whole-word matches, then word-prefix matches, then substrings.

        The full-text index finds words and word prefixes (``cat`` finds ``<cat-toy>``), each
        pass ordered by relevance. Whole words come first: a concept tagged ``cat`` is what a
        search for ``cat`` wants before one named ``catalina``. The substring pass finds what
        word boundaries hide (``兰`` inside ``铃兰``, ``toy`` inside ``cattoy``).
        """
        found: dict[str, ConceptSummary] = {}
        for prefix in (False, True):
            match = fts_query(text, prefix=prefix)
            if match is None:
                break
            for row in self._query(_SQL_FTS, {"match": match}):
                found.setdefault(row[0], _summary(row))
        if text.strip():
            for row in self._query(_SQL_LIKE, {"pattern": like_pattern(text.strip())}):
                found.setdefault(row[0], _summary(row))
        results = list(found.values())
        return results[:limit] if limit is not None else results


class SqliteReader(IndexReader):
    """Read-only access to a SQLite index through the standard library (fast to import).

    Use :meth:`open`, which returns None when the database is missing or not fully migrated
    (the caller then opens a :class:`Registry`, which migrates).
    """

    def __init__(self, connection: sqlite3.Connection, path: Path | None = None) -> None:
        self._conn = connection
        self._path = path

    @classmethod
    def open(cls, path: Path) -> SqliteReader | None:
        """Open ``path`` for reading if it exists and has every migration applied."""
        if not path.is_file():
            return None
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, check_same_thread=False)
        try:
            conn.execute("PRAGMA query_only = ON")
            done = {row[0] for row in conn.execute(f"SELECT name FROM {migrations.RECORD_TABLE}")}
        except sqlite3.DatabaseError:
            conn.close()
            return None
        if not set(migrations.names()) <= done:
            conn.close()
            return None
        return cls(conn, path)

    def _query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        # A page can be damaged while the header is fine: the error then comes from a query.
        with damage_guard(self._path):
            return list(self._conn.execute(sql, params or {}))

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()


# --- the SQLModel side -------------------------------------------------------------------------


def _set_wal(cursor: Any) -> None:
    # Switching to WAL needs an exclusive lock for a moment, and SQLite does not call the busy
    # handler for it: retry, so several processes opening a new library at once all succeed.
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            mode = cursor.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() != "wal":
                cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def create_engine(url: str) -> Engine:
    """A SQLAlchemy engine for the index with conceptlib's connection settings.

    SQLite connections get WAL, a busy timeout, enforced foreign keys and ``BEGIN IMMEDIATE``
    for every transaction (the driver's own implicit transactions are turned off so the
    explicit ``BEGIN`` is the only one).

    Raises:
        UsageError: the URL names a database other than SQLite.
    """
    from sqlalchemy import event
    from sqlmodel import create_engine as sqlmodel_engine

    if not url.startswith("sqlite"):
        # The schema and FTS5 search are written for SQLite; the URL is configurable so that
        # another backend can be added without touching callers, but none is yet.
        raise UsageError(
            f"CONCEPTLIB_DATABASE_URL={url.split(':', 1)[0]}:...: only SQLite indexes are supported so far",
            hint="unset CONCEPTLIB_DATABASE_URL or point it at a sqlite:///PATH URL",
        )
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = sqlmodel_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            cursor.execute("PRAGMA foreign_keys = ON")
            if path is not None:
                _set_wal(cursor)
            # NORMAL is crash-safe in WAL mode (a power cut may lose the last transactions,
            # never corrupt the file), and the index can always be rebuilt from the manifests.
            cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _row_values(concept: Concept, manifest: str) -> dict[str, Any]:
    source = concept.source or {}
    return {
        "name": concept.name,
        "token": concept.token,
        "type": concept.type,
        "family": concept.family,
        "encoders": json.dumps(concept.encoders),
        "vectors": concept.vectors,
        "dtype": concept.dtype,
        "description": concept.description,
        "license": concept.license,
        "content_hash": concept.content_hash,
        "file_sha256": concept.file_sha256,
        "embedding_sha256": concept.embedding_sha256,
        "format": concept.format,
        "checkpoint_hash": concept.checkpoint_hash,
        "checkpoint_name": concept.checkpoint_name,
        "steps": concept.steps,
        "source_type": source.get("type"),
        "source_repo_id": source.get("repo_id"),
        "source_revision": source.get("commit") or source.get("revision"),
        "source_url": source.get("url"),
        "source_path": source.get("path"),
        "created_at": concept.created,
        "updated_at": concept.updated,
        "manifest_sha256": manifest_sha256(manifest),
        "kind": concept.kind,
    }


def _child_rows(concept_id: int, concept: Concept, embedding_sha256: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    files = []
    if embedding_sha256:
        files.append({"concept_id": concept_id, "role": "embedding", "path": concept.canonical_name, "sha256": embedding_sha256, "size": 0})
    files += [{"concept_id": concept_id, "role": "original", "path": f.path, "sha256": f.sha256, "size": f.size} for f in concept.files]
    images = [{"concept_id": concept_id, "path": i.path, "sha256": i.sha256, "size": i.size} for i in concept.images]
    tags = [{"concept_id": concept_id, "tag": t} for t in sorted(set(concept.tags))]
    return files, images, tags


class Writer(IndexReader):
    """The operations allowed inside one write transaction (see :meth:`Registry.transaction`)."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def _query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        from sqlalchemy import text

        return [tuple(row) for row in self._session.connection().execute(text(sql), params or {})]

    def insert(self, concept: Concept, manifest: str) -> None:
        """Index a new concept (its name must be free)."""
        from conceptlib.registry.tables import ConceptRow, FileRow, ImageRow, TagRow

        row = ConceptRow(**_row_values(concept, manifest))
        self._session.add(row)
        self._session.flush()
        assert row.id is not None
        files, images, tags = _child_rows(row.id, concept, concept.embedding_sha256)
        self._session.add_all([FileRow(**f) for f in files])
        self._session.add_all([ImageRow(**i) for i in images])
        self._session.add_all([TagRow(**t) for t in tags])
        self._session.flush()

    def delete(self, name: str) -> bool:
        """Remove a concept from the index (files, images and tags go with it)."""
        from sqlmodel import select

        from conceptlib.registry.tables import ConceptRow

        row = self._session.exec(select(ConceptRow).where(ConceptRow.name == name)).first()
        if row is None:
            return False
        self._session.delete(row)
        self._session.flush()
        return True

    def put_signatures(self, name: str, content_hash: str, vectors: dict[str, bytes]) -> bool:
        """Store concept ``name``'s signatures, computed from the vectors with ``content_hash``.

        Returns:
            False when the concept is gone or its vectors changed since (nothing is stored).
        """
        rows = self._query("SELECT id FROM concepts WHERE name = :name AND content_hash = :hash", {"name": name, "hash": content_hash})
        if not rows:
            return False
        from sqlalchemy import text

        statement = text("INSERT OR REPLACE INTO signatures (concept_id, encoder, content_hash, vector) VALUES (:id, :encoder, :hash, :vector)")
        connection = self._session.connection()
        for encoder, vector in vectors.items():
            connection.execute(statement, {"id": rows[0][0], "encoder": encoder, "hash": content_hash, "vector": vector})
        return True

    def replace(self, name: str, concept: Concept, manifest: str) -> None:
        """Re-index concept ``name`` from a new record (which may carry a new name)."""
        # Delete and insert rather than update in place: tags, files and images are replaced
        # wholesale, and the FTS triggers rebuild the search row either way.
        self.delete(name)
        self.insert(concept, manifest)

    def rebuild(self, items: Iterable[tuple[Concept, str]]) -> int:
        """Replace the whole index with ``items`` (concept, manifest text); returns the count.

        Rows are inserted in bulk with ids assigned here, which keeps a rebuild of 10,000
        concepts to seconds instead of the minutes one ORM flush per concept would take.
        """
        from sqlmodel import delete, insert

        from conceptlib.registry.tables import ConceptRow, FileRow, ImageRow, SignatureRow, TagRow

        session = self._session
        for table in (SignatureRow, TagRow, ImageRow, FileRow, ConceptRow):
            session.exec(delete(table))
        concepts: list[dict[str, Any]] = []
        files: list[dict[str, Any]] = []
        images: list[dict[str, Any]] = []
        tags: list[dict[str, Any]] = []
        for concept_id, (concept, manifest) in enumerate(items, start=1):
            concepts.append({"id": concept_id, **_row_values(concept, manifest)})
            f, i, t = _child_rows(concept_id, concept, concept.embedding_sha256)
            files += f
            images += i
            tags += t
        for table, rows in ((ConceptRow, concepts), (FileRow, files), (ImageRow, images), (TagRow, tags)):
            if rows:
                session.exec(insert(table), params=rows)
        session.flush()
        return len(concepts)


class Registry(IndexReader):
    """The index behind SQLModel: migrates on open, writes in ``BEGIN IMMEDIATE`` transactions.

    Args:
        url: a SQLAlchemy URL (``sqlite:///PATH``).

    Example:
        >>> registry = Registry("sqlite:///index.sqlite")
        >>> with registry.transaction() as tx:
        ...     tx.insert(concept, concept.to_json())
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = sqlite_path(url)
        self.engine = create_engine(url)
        try:
            with damage_guard(self.path or url):
                self.applied = migrations.migrate(self.engine)
        except IndexDamagedError:
            self.engine.dispose()
            raise

    def _query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        from sqlalchemy import text

        with damage_guard(self.path or self.url), self.engine.connect() as conn:
            rows = [tuple(row) for row in conn.execute(text(sql), params or {})]
            conn.rollback()
        return rows

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Writer]:
        """One write transaction: committed when the block ends, rolled back on an exception.

        The write lock is taken on entry (not at the first statement, as SQLAlchemy would by
        default), so whatever the block reads, from the index or from files, no other writer
        can change until it ends.
        """
        from sqlmodel import Session

        with damage_guard(self.path or self.url), Session(self.engine) as session, session.begin():
            session.connection()  # emits BEGIN IMMEDIATE now
            yield Writer(session)

    def close(self) -> None:
        """Release the connections."""
        self.engine.dispose()
