"""Schema migrations (Alembic): the SQLite and the PostgreSQL schema come from the same scripts.

`Store` calls `upgrade(engine)` when it opens a database, instead of `metadata.create_all`:

* a new database gets every migration up to head;
* a database created by an older faqbot with `create_all` (no `alembic_version` table) is adopted:
  the initial migration only creates the tables and indexes that are missing, then it is stamped;
* several workers or replicas starting at once do not race: the upgrade runs under a PostgreSQL
  advisory lock, or an flock next to the SQLite file.

A change to `bot.store.metadata` needs a new script in `versions/` (tests/test_migrations.py
fails until the migrated schema equals the metadata again):

    .venv/bin/alembic -c bot/migrations/alembic.ini revision --autogenerate -m "what changed"
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from index.filelock import FileLock

MIGRATIONS_DIR = Path(__file__).resolve().parent
# Any constant: the key of the PostgreSQL advisory lock that serialises concurrent upgrades.
ADVISORY_LOCK_KEY = 0x6661_7162_6F74  # "faqbot"


def alembic_config(url: str | None = None, connection: Connection | None = None,
                   first_kb: str | None = None) -> Config:
    """An Alembic config for these migrations (no alembic.ini needed at runtime); `first_kb` is the KB
    that rows logged before there were several KBs are given (0003; default `default`)."""
    config = Config()
    if first_kb is not None:
        config.attributes["first_kb"] = first_kb
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.cache
def head_revision() -> str:
    """The newest revision (read once per process)."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "bot/migrations/versions holds no migration"
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head", *, first_kb: str | None = None) -> None:
    """Bring the database to `revision` (default head); cheap when it is already there."""
    if revision == "head" and current_revision(engine) == head_revision():
        return
    with _exclusive(engine), engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
        command.upgrade(alembic_config(connection=conn, first_kb=first_kb), revision)


def downgrade(engine: Engine, revision: str) -> None:
    with _exclusive(engine), engine.begin() as conn:
        command.downgrade(alembic_config(connection=conn), revision)


@contextlib.contextmanager
def _exclusive(engine: Engine) -> Iterator[None]:
    """An flock beside a SQLite file, so two processes never both create the first tables."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:" or database.startswith("file:"):
        yield
        return
    with FileLock(Path(database).with_name(Path(database).name + ".migrate.lock")).hold():
        yield
