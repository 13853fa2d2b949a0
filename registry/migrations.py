"""Schema migrations: ordered, named functions, each applied once in its own transaction.

Every open of the index calls :func:`migrate`, which applies the migrations a database has not
recorded yet, in order. A migration and the row recording it commit together, so a crash (or a
second process migrating at the same moment) leaves either both or neither; the applied set is
re-read inside each transaction, so two processes never apply one migration twice.

Rules for new migrations:

* Append a function decorated with :func:`migration`; never edit or rename a released one
  (its name is its identity in users' databases).
* Write explicit DDL. ``SQLModel.metadata.create_all`` is never used on a user's database: it
  only creates missing tables, so it would silently drift from this history.
* SQLite cannot alter a column: changing one means rebuilding the table (create the new table,
  copy the rows, drop the old one, rename), written out by hand with a comment saying why.
* Update :mod:`conceptlib.registry.tables` to match; ``tests/test_migrations.py`` fails when the
  declared and the migrated schema differ.

This module must stay importable without SQLAlchemy: the fast read path only needs
:func:`names` to check that a database is up to date.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

Migration = Callable[["Connection"], None]

#: name -> function, in the order they run.
MIGRATIONS: dict[str, Migration] = {}
RECORD_TABLE = "_conceptlib_migrations"


def migration(fn: Migration) -> Migration:
    """Register ``fn`` as the next migration; its ``__name__`` is its permanent identity."""
    if fn.__name__ in MIGRATIONS:
        raise ValueError(f"duplicate migration name {fn.__name__}")
    MIGRATIONS[fn.__name__] = fn
    return fn


def names() -> list[str]:
    """The names of all known migrations, in order."""
    return list(MIGRATIONS)


def _run(conn: Connection, script: str) -> None:
    # exec_driver_sql takes one statement at a time; the scripts below never put ';' inside
    # a statement except in trigger bodies, which are separated by a blank line instead.
    for statement in script.split("\n\n"):
        statement = statement.strip()
        if statement:
            conn.exec_driver_sql(statement)


@migration
def m001_initial(conn: Connection) -> None:
    """Concepts, their files and tags."""
    _run(
        conn,
        """
CREATE TABLE concepts (
    id INTEGER NOT NULL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    token TEXT NOT NULL,
    type TEXT NOT NULL,
    family TEXT,
    encoders TEXT NOT NULL,
    vectors INTEGER NOT NULL,
    dtype TEXT NOT NULL,
    description TEXT,
    license TEXT,
    content_hash TEXT NOT NULL,
    file_sha256 TEXT,
    embedding_sha256 TEXT,
    format TEXT,
    checkpoint_hash TEXT,
    checkpoint_name TEXT,
    steps INTEGER,
    source_type TEXT,
    source_repo_id TEXT,
    source_revision TEXT,
    source_url TEXT,
    source_path TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    manifest_sha256 TEXT NOT NULL
)

CREATE INDEX ix_concepts_content_hash ON concepts (content_hash)

CREATE INDEX ix_concepts_family_token ON concepts (family, token)

CREATE INDEX ix_concepts_source_repo_id ON concepts (source_repo_id)

CREATE TABLE files (
    id INTEGER NOT NULL PRIMARY KEY,
    concept_id INTEGER NOT NULL REFERENCES concepts (id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL
)

CREATE INDEX ix_files_concept_id ON files (concept_id)

CREATE TABLE tags (
    concept_id INTEGER NOT NULL REFERENCES concepts (id) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    PRIMARY KEY (concept_id, tag)
)

CREATE INDEX ix_tags_tag ON tags (tag)
""",
    )


@migration
def m002_images(conn: Connection) -> None:
    """Sample and training images, with their hashes."""
    _run(
        conn,
        """
CREATE TABLE images (
    id INTEGER NOT NULL PRIMARY KEY,
    concept_id INTEGER NOT NULL REFERENCES concepts (id) ON DELETE CASCADE,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL
)

CREATE INDEX ix_images_concept_id ON images (concept_id)
""",
    )


# The search text of one concept: its name, token, description and tags in one FTS row whose
# rowid is the concept's id. Triggers keep it in sync whatever writes the tables, so no code
# path can forget it; the tag triggers rewrite the whole row because FTS5 rows have no
# per-column update.
_FTS_ROW = """
SELECT c.id, c.name, c.token, coalesce(c.description, ''),
       coalesce((SELECT group_concat(t.tag, ' ') FROM tags t WHERE t.concept_id = c.id), '')
FROM concepts c WHERE c.id = {id}"""


@migration
def m003_search(conn: Connection) -> None:
    """Full-text search (SQLite FTS5) over name, token, description and tags."""
    insert = "INSERT INTO concepts_fts (rowid, name, token, description, tags)"
    _run(
        conn,
        f"""
CREATE VIRTUAL TABLE concepts_fts USING fts5(
    name, token, description, tags, tokenize = 'unicode61 remove_diacritics 2'
)

CREATE TRIGGER concepts_fts_insert AFTER INSERT ON concepts BEGIN
    {insert} {_FTS_ROW.format(id="new.id")};
END

CREATE TRIGGER concepts_fts_delete AFTER DELETE ON concepts BEGIN
    DELETE FROM concepts_fts WHERE rowid = old.id;
END

CREATE TRIGGER concepts_fts_update AFTER UPDATE OF name, token, description ON concepts BEGIN
    DELETE FROM concepts_fts WHERE rowid = old.id;
    {insert} {_FTS_ROW.format(id="new.id")};
END

CREATE TRIGGER tags_fts_insert AFTER INSERT ON tags BEGIN
    DELETE FROM concepts_fts WHERE rowid = new.concept_id;
    {insert} {_FTS_ROW.format(id="new.concept_id")};
END

CREATE TRIGGER tags_fts_delete AFTER DELETE ON tags BEGIN
    DELETE FROM concepts_fts WHERE rowid = old.concept_id;
    {insert} {_FTS_ROW.format(id="old.concept_id")};
END

{insert} SELECT c.id, c.name, c.token, coalesce(c.description, ''),
       coalesce((SELECT group_concat(t.tag, ' ') FROM tags t WHERE t.concept_id = c.id), '')
FROM concepts c
""",
    )


@migration
def m004_token_lookup(conn: Connection) -> None:
    """Index tokens case-insensitively, as the uniqueness check compares them.

    The check (``lower(token) = lower(?)`` within a family, because CLIP lowercases prompts)
    could only use the family half of ``ix_concepts_family_token``, so every add scanned the
    whole family: 4 ms at 10,000 concepts, run twice per add. An index on the expression
    makes it a lookup.
    """
    _run(
        conn,
        """
DROP INDEX ix_concepts_family_token

CREATE INDEX ix_concepts_family_token_lower ON concepts (family, lower(token))
""",
    )


@migration
def m005_signatures(conn: Connection) -> None:
    """A signature per concept and encoder, for ``similar``, ``dedupe`` and near-duplicate reports.

    The unit mean of the concept's unit vectors (:mod:`conceptlib.similarity`), as float32
    bytes, with the content hash it was computed from: a signature whose hash is not the
    concept's is stale and ignored. Rows are filled when first needed, so an existing library
    migrates in an instant; they go with their concept (and with a re-index, which rebuilds).
    """
    _run(
        conn,
        """
CREATE TABLE signatures (
    concept_id INTEGER NOT NULL REFERENCES concepts (id) ON DELETE CASCADE,
    encoder TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (concept_id, encoder)
)
""",
    )


@migration
def m006_kinds(conn: Connection) -> None:
    """What kind of library item each row is: ``embedding`` (every row so far) or ``hypernetwork``.

    Hypernetworks live in the same table as embeddings so that list, search, show, tag, rename,
    remove, verify and reindex serve both; readers of vectors (render's concept lookup,
    signatures, merge) ask for embeddings only. A token is unique among items of one kind and
    family: a hypernetwork called ``anime`` does not clash with an embedding ``anime``, since
    prompts call them differently (``<hypernet:anime>``).
    """
    _run(
        conn,
        """
ALTER TABLE concepts ADD COLUMN kind TEXT NOT NULL DEFAULT 'embedding'
""",
    )


def applied(conn: Connection) -> set[str]:
    """Names of the migrations recorded in the database."""
    return {row[0] for row in conn.exec_driver_sql(f"SELECT name FROM {RECORD_TABLE}")}


def migrate(engine: Engine, *, stop_before: str | None = None) -> list[str]:
    """Apply every migration the database lacks, each in one transaction with its record.

    Args:
        engine: a SQLAlchemy engine whose transactions take the write lock at BEGIN
            (``BEGIN IMMEDIATE`` on SQLite; :mod:`conceptlib.registry.store` sets that up).
        stop_before: apply migrations only up to (not including) this one; for tests that
            build an older schema.

    Returns:
        The names applied by this call (empty when the database was up to date).
    """
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f"CREATE TABLE IF NOT EXISTS {RECORD_TABLE} ("
            "name TEXT NOT NULL PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        done = applied(conn)
    ran: list[str] = []
    for name, fn in MIGRATIONS.items():
        if name == stop_before:
            break
        if name in done:
            continue
        with engine.begin() as conn:
            # Another process may have applied it since we looked: re-check under the lock.
            if name in applied(conn):
                continue
            fn(conn)
            conn.exec_driver_sql(
                f"INSERT INTO {RECORD_TABLE} (name, applied_at) VALUES (?, ?)",
                (name, datetime.now(timezone.utc).isoformat(timespec="seconds")),
            )
        ran.append(name)
    return ran
