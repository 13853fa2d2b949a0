"""SQLModel tables of the index.

These classes *declare* the schema the migrations in :mod:`conceptlib.registry.migrations`
create with explicit DDL; they are never used to create tables (``create_all`` would only add
missing tables and drift from the migration history). ``tests/test_migrations.py`` checks that
a freshly migrated database has exactly these columns.

Importing this module imports sqlmodel (~0.5 s), so only write paths import it.
"""

from __future__ import annotations

from sqlmodel import Field, SQLModel


class ConceptRow(SQLModel, table=True):
    """One concept: the listed and searched fields of its ``concept.json``.

    The manifest text itself is not copied here: ``show`` reads ``concept.json`` (the source of
    truth), and keeping rows small makes ``list`` scan a few hundred pages at 10,000 concepts
    instead of one page per concept. ``manifest_sha256`` lets ``verify`` tell a stale row.
    """

    __tablename__ = "concepts"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True)
    token: str
    type: str
    family: str | None = None
    encoders: str  # JSON object: encoder key -> width
    vectors: int
    dtype: str
    description: str | None = None
    license: str | None = None
    content_hash: str = Field(index=True)
    file_sha256: str | None = None
    embedding_sha256: str | None = None
    format: str | None = None
    checkpoint_hash: str | None = None
    checkpoint_name: str | None = None
    steps: int | None = None
    source_type: str | None = None
    source_repo_id: str | None = None
    source_revision: str | None = None
    source_url: str | None = None
    source_path: str | None = None
    created_at: str
    updated_at: str
    manifest_sha256: str
    kind: str = "embedding"  # or "hypernetwork" (migration m006_kinds)


class FileRow(SQLModel, table=True):
    """A file of a concept folder: the canonical embedding or an original kept byte for byte."""

    __tablename__ = "files"

    id: int | None = Field(default=None, primary_key=True)
    concept_id: int = Field(foreign_key="concepts.id", ondelete="CASCADE")
    role: str  # "embedding" or "original"
    path: str  # POSIX, relative to the concept folder
    sha256: str
    size: int


class ImageRow(SQLModel, table=True):
    """A sample or training image of a concept."""

    __tablename__ = "images"

    id: int | None = Field(default=None, primary_key=True)
    concept_id: int = Field(foreign_key="concepts.id", ondelete="CASCADE")
    path: str
    sha256: str
    size: int


class TagRow(SQLModel, table=True):
    """One tag of one concept."""

    __tablename__ = "tags"

    concept_id: int = Field(foreign_key="concepts.id", ondelete="CASCADE", primary_key=True)
    tag: str = Field(primary_key=True)


class SignatureRow(SQLModel, table=True):
    """A concept's signature for one encoder (see :mod:`conceptlib.similarity`)."""

    __tablename__ = "signatures"

    concept_id: int = Field(foreign_key="concepts.id", ondelete="CASCADE", primary_key=True)
    encoder: str = Field(primary_key=True)
    content_hash: str
    vector: bytes


class MigrationRow(SQLModel, table=True):
    """A migration applied to this database, by name (the name is its identity)."""

    __tablename__ = "_conceptlib_migrations"

    name: str = Field(primary_key=True)
    applied_at: str


#: Every table, for the schema test and for readers that want to iterate.
TABLES: tuple[type[SQLModel], ...] = (ConceptRow, FileRow, ImageRow, TagRow, SignatureRow, MigrationRow)
