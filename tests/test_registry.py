"""The index on its own: writes through SQLModel, reads through both paths, search, settings."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from conceptlib.concept import Concept, ConceptSummary, FileRecord
from conceptlib.errors import UsageError
from conceptlib.registry import Registry, SqliteReader, default_url, open_registry, sqlite_path
from conceptlib.registry.store import fts_query, like_pattern


def concept(name: str, token: str | None = None, *, family: str = "sd1", tags: list[str] | None = None, **fields: object) -> Concept:
    return Concept(
        name=name,
        token=token or f"<{name}>",
        family=family,
        encoders={"clip_l": 768} if family == "sd1" else {"clip_l": 768, "clip_g": 1280},
        vectors=1,
        dtype="float32",
        content_hash=f"hash-{name}",
        embedding_sha256=f"emb-{name}",
        tags=tags or [],
        files=[FileRecord(f"original/{name}.pt", f"sha-{name}", 10)],
        images=[FileRecord("images/a.png", "img", 5)],
        created="2024-01-01T00:00:00+00:00",
        updated="2024-01-01T00:00:00+00:00",
        **fields,  # type: ignore[arg-type]
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "index.sqlite"


@pytest.fixture
def registry(db_path: Path) -> Registry:
    reg = open_registry(f"sqlite:///{db_path}")
    yield reg
    reg.close()


def add(registry: Registry, *concepts: Concept) -> None:
    for c in concepts:
        with registry.transaction() as tx:
            tx.insert(c, c.to_json())


def test_settings_on_every_connection(registry: Registry, db_path: Path) -> None:
    with registry.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    # WAL is a property of the file: a plain sqlite3 connection sees it too.
    assert sqlite3.connect(db_path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_insert_get_and_children(registry: Registry, db_path: Path) -> None:
    c = concept("cat-toy", tags=["toy", "cute"], description="a toy cat")
    add(registry, c)
    assert registry.has("cat-toy") and not registry.has("cat")
    raw = sqlite3.connect(db_path)
    row = raw.execute("SELECT token, family, encoders, description, manifest_sha256 FROM concepts").fetchone()
    assert row == ("<cat-toy>", "sd1", '{"clip_l": 768}', "a toy cat", hashlib.sha256(c.to_json().encode()).hexdigest())
    assert raw.execute("SELECT role, path, sha256 FROM files ORDER BY role").fetchall() == [
        ("embedding", "embedding.safetensors", "emb-cat-toy"),
        ("original", "original/cat-toy.pt", "sha-cat-toy"),
    ]
    assert raw.execute("SELECT path, sha256 FROM images").fetchall() == [("images/a.png", "img")]
    assert sorted(r[0] for r in raw.execute("SELECT tag FROM tags")) == ["cute", "toy"]


def test_both_read_paths_agree(registry: Registry, db_path: Path) -> None:
    made = [concept("a", tags=["x"]), concept("b", family="sdxl", type="style"), concept("c", tags=["x", "y"])]
    add(registry, *made)
    reader = SqliteReader.open(db_path)
    assert reader is not None
    for r in (registry, reader):
        assert r.names() == ["a", "b", "c"]
        assert [s.name for s in r.summaries(tag="x")] == ["a", "c"]
        assert [s.name for s in r.summaries(family="sdxl")] == ["b"]
        assert [s.name for s in r.summaries(type="style")] == ["b"]
        assert [s.name for s in r.summaries(type="object", tag="y")] == ["c"]
        assert r.has("b") and not r.has("z")
        assert r.state() == {c.name: hashlib.sha256(c.to_json().encode()).hexdigest() for c in made}
        assert r.count() == r.fts_count() == 3
    summary = reader.summaries()[2]
    assert isinstance(summary, ConceptSummary)
    assert summary.tags == ["x", "y"] and summary.encoders == {"clip_l": 768} and summary.family_label == "SD 1.x"
    reader.close()


def test_delete_cascades_and_keeps_search_in_sync(registry: Registry, db_path: Path) -> None:
    add(registry, concept("a", tags=["t1", "t2"]), concept("b"))
    with registry.transaction() as tx:
        assert tx.delete("a") is True
        assert tx.delete("missing") is False
    raw = sqlite3.connect(db_path)
    assert raw.execute("SELECT count(*) FROM tags").fetchone()[0] == 0
    assert raw.execute("SELECT count(*) FROM files").fetchone()[0] == 2  # b's two
    assert raw.execute("SELECT count(*) FROM images").fetchone()[0] == 1
    assert registry.fts_count() == registry.count() == 1
    assert [s.name for s in registry.search("t1")] == []


def test_replace_renames_and_retags(registry: Registry) -> None:
    add(registry, concept("a", tags=["old"]))
    new = concept("z", tags=["new"])
    with registry.transaction() as tx:
        tx.replace("a", new, new.to_json())
    assert registry.names() == ["z"]
    assert [s.name for s in registry.search("new")] == ["z"]
    assert registry.search("old") == []


def test_transaction_rolls_back_on_error(registry: Registry) -> None:
    with pytest.raises(RuntimeError), registry.transaction() as tx:
        c = concept("a")
        tx.insert(c, c.to_json())
        raise RuntimeError("boom")
    assert registry.count() == 0 and registry.fts_count() == 0


def test_name_is_unique(registry: Registry) -> None:
    from sqlalchemy.exc import IntegrityError

    add(registry, concept("a"))
    with pytest.raises(IntegrityError):
        add(registry, concept("a"))


def test_rebuild_replaces_everything(registry: Registry) -> None:
    add(registry, concept("old"))
    items = [(concept(f"n{i}", tags=["bulk"]), concept(f"n{i}", tags=["bulk"]).to_json()) for i in range(50)]
    with registry.transaction() as tx:
        assert tx.rebuild(items) == 50
    assert registry.count() == registry.fts_count() == 50
    assert "old" not in registry.names()
    assert len(registry.summaries(tag="bulk")) == 50


def test_uniqueness_queries(registry: Registry) -> None:
    add(registry, concept("a", "<Cat>"), concept("b", "<dog>", family="sdxl"))
    assert registry.content_hash_owner("hash-a") == "a"
    assert registry.content_hash_owner("hash-a", exclude="a") is None
    # CLIP lowercases prompts: <cat> and <Cat> are the same token to the model.
    assert registry.token_owner("sd1", "<cat>") == "a"
    assert registry.token_owner("sdxl", "<cat>") is None
    assert registry.token_owner("sd1", "<dog>") is None
    assert registry.token_owner("sd1", "<cat>", exclude="a") is None
    assert registry.by_token("<dog>") == ["b"]


def test_by_repo(registry: Registry) -> None:
    add(registry, concept("a", source={"type": "huggingface", "repo_id": "org/a", "commit": "abc", "url": "u"}), concept("b"))
    assert registry.by_repo("org/a") == "a"
    assert registry.by_repo("org/none") is None


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("cat", ["cat-toy", "dog"]),  # a word of the name and token; a word of the description
        ("CAT TOY", ["cat-toy"]),  # every word required, case-insensitive
        ("<cat-toy>", ["cat-toy"]),  # FTS syntax characters are not syntax here
        ("fluffy", ["cat-toy"]),  # description
        ("plush", ["cat-toy", "plushie"]),  # tag and name prefix
        ("铃", ["铃兰"]),  # CJK prefix
        ("兰", ["铃兰"]),  # inside a CJK word: the substring pass
        ("toy cat", ["cat-toy"]),
        ('"', []),  # no word at all, no match, no error
        ("100%", []),
        ("nothing", []),
    ],
)
def test_search(registry: Registry, db_path: Path, query: str, expected: list[str]) -> None:
    add(
        registry,
        concept("cat-toy", description="A fluffy toy", tags=["plush"]),
        concept("plushie", "<plushie>"),
        concept("铃兰", "<铃兰>"),
        concept("dog", description="not a cat_"),
    )
    reader = SqliteReader.open(db_path)
    assert reader is not None
    assert sorted(s.name for s in reader.search(query)) == expected
    assert sorted(s.name for s in registry.search(query)) == expected


def test_search_ranks_name_over_description(registry: Registry) -> None:
    add(registry, concept("other", description="mentions a wolf in passing"), concept("wolf"))
    assert [s.name for s in registry.search("wolf")] == ["wolf", "other"]
    assert [s.name for s in registry.search("wolf", limit=1)] == ["wolf"]


def test_search_ranks_whole_words_over_prefixes_in_both_readers(registry: Registry, db_path: Path) -> None:
    # A name weighs more than a tag, but `cat` names the tag exactly and only begins `catalina`.
    add(registry, concept("catalina"), concept("kitty", tags=["cat"]), concept("bobcat"))
    reader = SqliteReader.open(db_path)
    assert reader is not None
    try:
        for index in (registry, reader):
            assert [s.name for s in index.search("cat")] == ["kitty", "catalina", "bobcat"]
            assert [s.name for s in index.search("cata")] == ["catalina"]
    finally:
        reader.close()


def test_fts_query_and_like_escaping() -> None:
    assert fts_query("cat-toy") == '"cat"* "toy"*'
    assert fts_query("cat-toy", prefix=False) == '"cat" "toy"'
    assert fts_query("NEAR(a b)") == '"NEAR"* "a"* "b"*'
    assert fts_query("-- ' \"") is None
    assert like_pattern("a%b_c\\") == "%a\\%b\\_c\\\\%"


def test_sqlite_reader_refuses_missing_or_old_databases(tmp_path: Path) -> None:
    assert SqliteReader.open(tmp_path / "none.sqlite") is None
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    assert SqliteReader.open(tmp_path / "junk.sqlite") is None
    old = tmp_path / "old.sqlite"
    from conceptlib.registry.migrations import migrate
    from conceptlib.registry.store import create_engine

    engine = create_engine(f"sqlite:///{old}")
    migrate(engine, stop_before="m003_search")
    engine.dispose()
    assert SqliteReader.open(old) is None  # would lack the search table


def test_reader_is_read_only(registry: Registry, db_path: Path) -> None:
    reader = SqliteReader.open(db_path)
    assert reader is not None
    with pytest.raises(sqlite3.OperationalError):
        reader._conn.execute("DELETE FROM concepts")


def test_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_url(tmp_path) == f"sqlite:///{tmp_path / 'index.sqlite'}"
    monkeypatch.setenv("CONCEPTLIB_DATABASE_URL", "sqlite:////elsewhere/x.db")
    assert default_url(tmp_path) == "sqlite:////elsewhere/x.db"
    assert sqlite_path("sqlite:////elsewhere/x.db") == Path("/elsewhere/x.db")
    assert sqlite_path("sqlite:///relative.db") == Path("relative.db")
    assert sqlite_path("sqlite:///:memory:") is None
    assert sqlite_path("postgresql://host/db") is None


def test_other_databases_are_refused_with_a_hint() -> None:
    with pytest.raises(UsageError) as info:
        Registry("postgresql://user@host/db")
    assert "only SQLite" in str(info.value) and "CONCEPTLIB_DATABASE_URL" in (info.value.hint or "")
    assert "user@host" not in str(info.value)  # credentials in URLs are not echoed


def test_writers_queue_instead_of_failing(registry: Registry, db_path: Path) -> None:
    """A second writer waits for the first (BEGIN IMMEDIATE + busy timeout), never 'database is locked'."""
    other = Registry(f"sqlite:///{db_path}")
    entered = threading.Event()
    errors: list[BaseException] = []

    def slow_writer() -> None:
        try:
            with registry.transaction() as tx:
                entered.set()  # the lock is held from here
                time.sleep(0.3)
                c = concept("first")
                tx.insert(c, c.to_json())
                time.sleep(0.2)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=slow_writer)
    thread.start()
    entered.wait()
    started = time.monotonic()
    with other.transaction() as tx:
        # Under the lock, the first writer's row is visible: checks here are authoritative.
        assert tx.has("first")
        c = concept("second")
        tx.insert(c, c.to_json())
    waited = time.monotonic() - started
    thread.join()
    other.close()
    assert not errors
    assert waited > 0.2
    assert registry.names() == ["first", "second"]


def test_token_check_is_an_index_lookup(registry: Registry, db_path: Path) -> None:
    """The uniqueness check must not scan a family: it runs twice per add."""
    from conceptlib.registry.store import _SQL_TOKEN

    plan = sqlite3.connect(db_path).execute(
        "EXPLAIN QUERY PLAN " + _SQL_TOKEN, {"family": "sd1", "token": "<x>", "exclude": "", "kind": "embedding"}
    ).fetchall()
    assert any("ix_concepts_family_token_lower" in row[3] and "<expr>=?" in row[3] for row in plan), plan
