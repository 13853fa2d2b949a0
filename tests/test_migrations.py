"""Migrations: the migrated schema is exactly the declared one; old databases migrate cleanly."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conceptlib.registry import migrations, open_registry
from conceptlib.registry.migrations import MIGRATIONS, migrate, migration
from conceptlib.registry.store import create_engine
from conceptlib.registry.tables import TABLES

REPO = Path(__file__).resolve().parents[1]


def _affinity(type_name: str) -> str:
    # SQLite column affinity (https://www.sqlite.org/datatype3.html#determination_of_column_affinity)
    upper = type_name.upper()
    if "INT" in upper:
        return "INTEGER"
    if any(t in upper for t in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    return upper


def declared_schema() -> dict[str, dict[str, Any]]:
    """What the SQLModel classes declare: columns (affinity, not null), primary key, foreign keys."""
    from sqlalchemy.dialects import sqlite

    schema = {}
    for model in TABLES:
        table = model.__table__  # type: ignore[attr-defined]
        schema[table.name] = {
            "columns": {
                c.name: (_affinity(c.type.compile(dialect=sqlite.dialect())), not c.nullable) for c in table.columns
            },
            "pk": sorted(c.name for c in table.primary_key.columns),
            "fks": sorted(
                (fk.parent.name, fk.column.table.name, fk.column.name, (fk.ondelete or "NO ACTION").upper())
                for fk in table.foreign_keys
            ),
            "indexes": sorted(i.name for i in table.indexes),
            "unique": sorted(c.name for c in table.columns if c.unique),
        }
    return schema


def actual_schema(path: Path) -> dict[str, dict[str, Any]]:
    conn = sqlite3.connect(path)
    schema = {}
    for name in declared_schema():
        info = conn.execute(f"PRAGMA table_info({name})").fetchall()
        indexes = conn.execute(f"PRAGMA index_list({name})").fetchall()
        unique = []
        for _seq, index_name, is_unique, origin, _partial in indexes:
            if is_unique and origin == "u":
                cols = [r[2] for r in conn.execute(f"PRAGMA index_info('{index_name}')")]
                if len(cols) == 1:
                    unique += cols
        schema[name] = {
            "columns": {row[1]: (_affinity(row[2]), bool(row[3])) for row in info},
            "pk": sorted(row[1] for row in info if row[5]),
            "fks": sorted(
                (row[3], row[2], row[4], row[6].upper()) for row in conn.execute(f"PRAGMA foreign_key_list({name})")
            ),
            "indexes": sorted(r[1] for r in indexes if r[3] == "c"),
            "unique": sorted(unique),
        }
    conn.close()
    return schema


def test_blank_database_gets_exactly_the_declared_schema(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    registry = open_registry(f"sqlite:///{path}")
    registry.close()
    declared, actual = declared_schema(), actual_schema(path)
    for table in declared:
        assert actual[table]["columns"] == declared[table]["columns"], table
        assert actual[table]["pk"] == declared[table]["pk"], table
        assert actual[table]["fks"] == declared[table]["fks"], table
        assert actual[table]["unique"] == declared[table]["unique"], table
        # Indexes the models declare exist under the names SQLAlchemy would give them.
        assert set(declared[table]["indexes"]) <= set(actual[table]["indexes"]), table
    # Nothing else but the search table and its shadow tables.
    conn = sqlite3.connect(path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    extra = tables - set(declared) - {"concepts_fts"}
    assert all(t.startswith("concepts_fts_") for t in extra), extra


def test_migrations_are_recorded_once_in_order(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    first = open_registry(url)
    assert first.applied == migrations.names() == ["m001_initial", "m002_images", "m003_search", "m004_token_lookup", "m005_signatures", "m006_kinds"]
    first.close()
    again = open_registry(url)  # every open migrates: nothing left to do
    assert again.applied == []
    again.close()
    rows = sqlite3.connect(tmp_path / "index.sqlite").execute(
        "SELECT name, applied_at FROM _conceptlib_migrations ORDER BY rowid"
    ).fetchall()
    assert [r[0] for r in rows] == migrations.names()
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", r[1]) for r in rows)


def test_old_schema_with_rows_migrates_cleanly(tmp_path: Path) -> None:
    """A database created before images and search existed keeps its rows and becomes searchable."""
    path = tmp_path / "index.sqlite"
    engine = create_engine(f"sqlite:///{path}")
    assert migrate(engine, stop_before="m002_images") == ["m001_initial"]
    engine.dispose()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.executemany(
        "INSERT INTO concepts (id, name, token, type, family, encoders, vectors, dtype, description, content_hash,"
        " created_at, updated_at, manifest_sha256) VALUES (?, ?, ?, 'object', 'sd1', '{\"clip_l\": 768}',"
        " 1, 'float32', ?, ?, 't', 't', 'x')",
        [(1, "cat-toy", "<cat-toy>", "a fluffy toy", "h1"), (2, "style-x", "<style-x>", None, "h2")],
    )
    conn.execute("INSERT INTO tags (concept_id, tag) VALUES (2, 'painting')")
    conn.execute("INSERT INTO files (concept_id, role, path, sha256, size) VALUES (1, 'original', 'original/a.pt', 's', 3)")
    conn.commit()
    conn.close()

    registry = open_registry(f"sqlite:///{path}")
    assert registry.applied == ["m002_images", "m003_search", "m004_token_lookup", "m005_signatures", "m006_kinds"]
    assert registry.names() == ["cat-toy", "style-x"]
    assert [s.name for s in registry.search("fluffy")] == ["cat-toy"]
    assert [s.name for s in registry.search("painting")] == ["style-x"]
    assert registry.fts_count() == 2
    assert [s.tags for s in registry.summaries()] == [[], ["painting"]]
    registry.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT path FROM files").fetchall() == [("original/a.pt",)]
    assert conn.execute("SELECT count(*) FROM images").fetchone() == (0,)


def test_a_failing_migration_leaves_no_trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def m999_broken(conn: Any) -> None:
        conn.exec_driver_sql("CREATE TABLE half_done (x INTEGER)")
        raise RuntimeError("migration bug")

    monkeypatch.setitem(MIGRATIONS, "m999_broken", m999_broken)
    path = tmp_path / "index.sqlite"
    engine = create_engine(f"sqlite:///{path}")
    with pytest.raises(RuntimeError, match="migration bug"):
        migrate(engine)
    engine.dispose()
    conn = sqlite3.connect(path)
    names = {r[0] for r in conn.execute("SELECT name FROM _conceptlib_migrations")}
    assert names == set(migrations.names()) - {"m999_broken"}  # the earlier ones committed
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'half_done'").fetchone() == (0,)


def test_migration_names_are_unique() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        migration(MIGRATIONS["m001_initial"])


def test_concurrent_first_opens_migrate_once(tmp_path: Path) -> None:
    """Four processes opening a new library at the same moment: all succeed, each migration runs once."""
    path = tmp_path / "index.sqlite"
    code = (
        "import sys; from conceptlib.registry import open_registry; "
        "r = open_registry(sys.argv[1]); print(','.join(r.applied)); r.close()"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, f"sqlite:///{path}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outputs]
    applied = [name for out, _err in outputs for name in out.strip().split(",") if name]
    assert sorted(applied) == sorted(migrations.names())
    rows = sqlite3.connect(path).execute("SELECT count(*) FROM _conceptlib_migrations").fetchone()
    assert rows == (len(migrations.names()),)


def test_nothing_calls_create_all() -> None:
    for folder in ("registry", "conceptlib"):
        for source in (REPO / folder).rglob("*.py"):
            assert not re.search(r"create_all\(", source.read_text(encoding="utf-8")), source


def test_migrations_module_imports_without_sqlalchemy() -> None:
    code = (
        "import sys; import conceptlib.registry.migrations as m, conceptlib.registry.store; "
        "assert m.names(); print(sorted(k for k in sys.modules if k.split('.')[0] in ('sqlalchemy', 'sqlmodel')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
