"""Alembic migrations on SQLite: the schema at head is exactly `bot.store.metadata`, old databases
made by `create_all` are adopted with their rows, and concurrent starts do not race.
(The same migrations on PostgreSQL: tests/test_postgres.py.)"""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from bot import migrations
from bot.store import MissRecord, Store, metadata


def _url(path: Path) -> str:
    return f"sqlite:///{path}"


def schema_diff(engine) -> list:
    """What autogenerate would still write: empty when the migrated schema equals the metadata."""
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), metadata)


def _miss(text: str) -> MissRecord:
    return MissRecord(text, text, "web", "s", "below_threshold", None, None, None, [], "v1")


def test_a_new_database_is_migrated_to_head_and_matches_the_metadata(tmp_path: Path) -> None:
    store = Store(_url(tmp_path / "new.db"))
    assert migrations.current_revision(store.engine) == migrations.head_revision()
    assert set(inspect(store.engine).get_table_names()) == set(metadata.tables) | {"alembic_version"}
    assert schema_diff(store.engine) == [], "bot/store.py changed without a migration in bot/migrations/versions"
    assert store.get_miss(store.log_miss(_miss("第一条")))["message"] == "第一条"
    store.close()


def test_every_migration_downgrades_and_upgrades_again(tmp_path: Path) -> None:
    store = Store(_url(tmp_path / "roundtrip.db"))
    migrations.downgrade(store.engine, "base")
    assert set(inspect(store.engine).get_table_names()) <= {"alembic_version"}
    migrations.upgrade(store.engine)
    assert schema_diff(store.engine) == []
    store.close()


def test_a_database_made_by_create_all_is_adopted_with_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "legacy.db"
    legacy = create_engine(_url(path))
    metadata.create_all(legacy)  # how faqbot made its database before migrations
    with legacy.begin() as conn:
        conn.exec_driver_sql("INSERT INTO misses (created_at, message, match_key, channel, reason, candidates, status) "
                             "VALUES ('2024-01-01 00:00:00', '旧的问题', '旧的问题', 'web', 'below_threshold', '[]', 'open')")
    legacy.dispose()
    store = Store(_url(path))
    assert migrations.current_revision(store.engine) == migrations.head_revision()
    assert [m["message"] for m in store.list_misses()] == ["旧的问题"]
    assert schema_diff(store.engine) == []
    store.close()


def test_a_partial_old_database_gets_the_missing_tables(tmp_path: Path) -> None:
    path = tmp_path / "partial.db"
    with sqlite3.connect(path) as db:  # an early faqbot: misses only, before chat_log, webhooks, dead letters
        db.execute("CREATE TABLE misses (id INTEGER NOT NULL PRIMARY KEY, created_at DATETIME NOT NULL, "
                   "message TEXT NOT NULL, match_key TEXT NOT NULL, channel VARCHAR(32) NOT NULL, session_id "
                   "VARCHAR(128), reason VARCHAR(32) NOT NULL, best_faq_id VARCHAR(64), best_similarity FLOAT, "
                   "best_percent FLOAT, candidates TEXT NOT NULL, index_version VARCHAR(64), status VARCHAR(16) "
                   "NOT NULL, resolved_action VARCHAR(16), resolved_faq_id VARCHAR(64), resolved_at DATETIME)")
        db.execute("INSERT INTO misses (created_at, message, match_key, channel, reason, candidates, status) VALUES "
                   "('2024-01-01 00:00:00', 'a', 'a', 'web', 'below_threshold', '[]', 'open')")
    store = Store(_url(path))
    assert set(inspect(store.engine).get_table_names()) >= set(metadata.tables)
    assert store.count_misses() == 1
    assert store.claim_event("generic", "e1", ttl_seconds=60) is True
    assert schema_diff(store.engine) == []
    store.close()


def _open_and_log(url: str, text: str, results) -> None:
    try:
        store = Store(url)
        store.log_miss(_miss(text))
        store.close()
        results.put("ok")
    except Exception as exc:  # reported to the parent, which fails the test
        results.put(f"{type(exc).__name__}: {exc}")


def test_workers_starting_together_do_not_race_on_the_first_migration(tmp_path: Path) -> None:
    url = _url(tmp_path / "race.db")
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_open_and_log, args=(url, f"q{i}", results)) for i in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    outcomes = [results.get(timeout=5) for _ in procs]
    assert outcomes == ["ok"] * 6
    store = Store(url)
    assert store.count_misses() == 6
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM alembic_version").scalar_one() == 1
    store.close()


def test_migrations_ship_with_the_package() -> None:
    here = Path(migrations.__file__).parent
    assert (here / "env.py").is_file() and (here / "script.py.mako").is_file()
    versions = sorted(p.name for p in (here / "versions").glob("[0-9]*.py"))
    assert versions and versions[0].startswith("0001_")
