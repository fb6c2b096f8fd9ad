"""faqbot on a real PostgreSQL (Debian's `postgresql` package, a throwaway cluster on loopback):
the same migrations as SQLite, concurrent writers, and several `faqbot serve` replicas sharing one
database and one data dir — consistent answers, misses without duplicates, one reload for all."""

from __future__ import annotations

import concurrent.futures
import contextlib
import glob
import multiprocessing
import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, inspect, text

from tests.conftest import faqbot_serve, free_port


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


PG_BIN = _pg_bin()
pytestmark = pytest.mark.skipif(PG_BIN is None, reason="Debian's postgresql is not installed "
                                "(`make test` installs it as root; or apt-get install postgresql)")


class PostgresCluster:
    """initdb + pg_ctl in a temp dir (as the `postgres` user when we are root), loopback only, no fsync."""

    def __init__(self) -> None:
        assert PG_BIN is not None
        self.root = Path(tempfile.mkdtemp(prefix="faqbot-pg-"))
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            import pwd

            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self._databases = 0

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        command = ["runuser", "-u", "postgres", "--", *args] if self._as_postgres else list(args)
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        data = self.root / "data"
        init = self._run(str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync",
                         "-E", "UTF8", "--locale=C")
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stderr[-2000:]}")
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        started = self._run(str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(self.root / "server.log"), "-w",
                            "-t", "60", "-o", options, "start")
        if started.returncode != 0:
            log = (self.root / "server.log").read_text(errors="replace")[-2000:] if (self.root / "server.log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {started.stderr[-1000:]} {log}")

    def stop(self) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def new_database(self) -> str:
        """A fresh empty database; its SQLAlchemy URL (plain `postgresql://`, as a user would write it)."""
        import psycopg

        self._databases += 1
        name = f"faqbot_{self._databases}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    try:
        cluster.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        cluster.stop()
        pytest.skip(f"PostgreSQL could not start here: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()


def _shape(engine) -> dict[str, object]:
    """A dialect-neutral picture of a schema: columns (name, nullable, generic type), indexes, unique keys."""
    inspector = inspect(engine)
    shape: dict[str, object] = {}
    for table in sorted(t for t in inspector.get_table_names() if t != "alembic_version"):
        columns = [(c["name"], c["nullable"], type(c["type"].as_generic()).__name__) for c in inspector.get_columns(table)]
        indexes = sorted((i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in inspector.get_indexes(table)
                         if not i.get("duplicates_constraint"))  # PostgreSQL lists unique keys as indexes too
        uniques = sorted((u["name"], tuple(u["column_names"])) for u in inspector.get_unique_constraints(table))
        shape[table] = (columns, indexes, uniques, inspector.get_pk_constraint(table)["constrained_columns"])
    return shape


def test_sqlite_and_postgresql_get_the_same_schema_from_the_same_migrations(postgres, tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from bot import migrations
    from bot.store import Store, metadata

    pg = Store(postgres.new_database())
    lite = Store(f"sqlite:///{tmp_path / 'same.db'}")
    assert pg.engine.dialect.name == "postgresql" and pg.engine.driver == "psycopg"
    assert migrations.current_revision(pg.engine) == migrations.current_revision(lite.engine) == migrations.head_revision()
    with pg.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    pg_shape, lite_shape = _shape(pg.engine), _shape(lite.engine)
    assert set(pg_shape) == set(metadata.tables)
    # Column names, nullability, generic types, index and unique-key names agree (types differ by dialect only
    # in spelling: DATETIME vs TIMESTAMP WITH TIME ZONE, FLOAT vs DOUBLE PRECISION).
    normalise = {"DateTime": "DateTime", "Float": "Float", "Double": "Float"}
    for table in pg_shape:
        pg_cols, pg_ix, pg_uq, pg_pk = pg_shape[table]
        lite_cols, lite_ix, lite_uq, lite_pk = lite_shape[table]
        assert [(n, nul, normalise.get(t, t)) for n, nul, t in pg_cols] == \
               [(n, nul, normalise.get(t, t)) for n, nul, t in lite_cols], table
        assert pg_ix == lite_ix and pg_uq == lite_uq and pg_pk == lite_pk, table
    with pg.engine.connect() as conn:  # long questions: a hash index, no btree row-size limit
        method = conn.execute(text("SELECT am.amname FROM pg_class c JOIN pg_am am ON am.oid = c.relam "
                                   "WHERE c.relname = 'ix_misses_match_key'")).scalar_one()
    assert method == "hash"
    pg.close()
    lite.close()


def test_the_store_on_postgresql_under_concurrent_writers(postgres) -> None:
    from bot.misswriter import ChatRow, MissWriter
    from bot.store import MissRecord, Store

    store = Store(postgres.new_database())
    rng = random.Random(7)
    long_question = "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(1000))  # ~3000 bytes, incompressible
    long_id = store.log_miss(MissRecord(long_question, long_question, "web", None, "below_threshold", None, None,
                                        None, [], "v"))
    assert store.get_miss(long_id)["message"] == long_question
    writer = MissWriter(store, flush_ms=5)
    writer.start()

    def one(i: int) -> int | None:
        miss = MissRecord(f"问题{i}", f"问题{i}", "web", f"s{i}", "below_threshold", None, None, None, [], "v")
        return writer.log_turn(ChatRow("web", f"s{i}", False, None, None), miss).result(30)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(one, range(300)))
    writer.close()
    assert len(set(ids)) == 300 and None not in ids
    assert store.count_misses() == 301
    assert store.claim_event("slack", "Ev1", ttl_seconds=60) is True
    assert store.claim_event("slack", "Ev1", ttl_seconds=60) is False
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    hours = store.chat_counts_by_hour(now - timedelta(hours=2), now + timedelta(hours=1))
    assert sum(q for _, q, _, _ in hours) == 300
    # The handoff stats' correlated query: the FAQ answered last before each handoff of a session.
    store.log_chat(channel="web", session_id="pg-h", matched=True, faq_id="invoice", similarity=0.9, miss_id=None)
    store.log_chat(channel="web", session_id="pg-h", matched=False, faq_id=None, similarity=None, miss_id=None,
                   handoff="asked")
    assert store.handoffs_after(now - timedelta(hours=2), now + timedelta(hours=1)) == [("asked", "invoice", 1)]
    assert store.last_turn("pg-h")[1] is False
    store.close()


def _open_store(url: str, results) -> None:
    try:
        from bot.store import Store

        Store(url).close()
        results.put("ok")
    except Exception as exc:  # reported to the parent
        results.put(f"{type(exc).__name__}: {exc}")


def test_replicas_starting_together_migrate_once(postgres) -> None:
    url = postgres.new_database()
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_open_store, args=(url, results)) for _ in range(5)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [results.get(timeout=5) for _ in procs] == ["ok"] * 5
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
    engine.dispose()


NEW_FAQ = """
  - id: opening_hours
    question: 客服几点上班？
    paraphrases:
      - 人工客服的工作时间是什么
      - 你们周末有人值班吗
    answer: 人工客服每天 9:00-21:00 在线。
    tags: [service]
"""


@pytest.mark.slow
def test_three_replicas_share_postgresql_and_one_data_dir(postgres, tiny_kb: Path, tmp_path: Path,
                                                           bundled_encoder) -> None:
    from bot.service import build_and_publish
    from bot.settings import Settings

    url = postgres.new_database()
    data_dir = tmp_path / "shared-var"
    token = "replica-admin-token-123"
    # Production topology: the index is built once and published; every replica follows CURRENT.
    build_and_publish(Settings(kb=tiny_kb, data_dir=data_dir), bundled_encoder)
    env = {"FAQBOT_DATABASE_URL": url, "FAQBOT_ADMIN_TOKEN": token, "FAQBOT_RATE_LIMIT_ENABLED": "false",
           "FAQBOT_LOG_LEVEL": "warning"}
    with contextlib.ExitStack() as stack:
        bases = [stack.enter_context(faqbot_serve(tiny_kb, data_dir, env=env))[0] for _ in range(3)]
        versions = {httpx.get(b + "/readyz", timeout=10).json()["index_version"] for b in bases}
        assert len(versions) == 1

        # Consistent answers: every replica gives the same decision for the same question.
        questions = ["你们能开发票吗", "我想退货怎么操作", "付款后几天能发出", "密码忘了怎么办", "今天股票涨了吗"]
        answers = [[httpx.post(b + "/chat", json={"message": q}, timeout=30).json() for b in bases] for q in questions]
        for per_replica in answers:
            assert len({(a["matched"], a["faq_id"], a["similarity"]) for a in per_replica}) == 1, per_replica

        # Misses from all replicas at once: each acknowledged id is stored exactly once.
        def ask(i: int) -> tuple[str, int | None]:
            message = f"第{i}号订单的发票抬头能改成公司名称吗还要补什么材料"
            body = httpx.post(bases[i % 3] + "/chat", json={"message": message, "session_id": f"u{i}"},
                              timeout=30).json()
            return message, body["miss_id"]

        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            asked = list(pool.map(ask, range(60)))
        miss_ids = [m for _, m in asked if m is not None]
        engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT id, message FROM misses WHERE message LIKE '第%号订单%'")).all()
        assert len(miss_ids) == len(set(miss_ids)) == len(rows) > 0
        assert {r.id for r in rows} == set(miss_ids)
        assert len({r.message for r in rows}) == len(rows)  # no duplicates

        # One admin reload on one replica: all of them serve the new version within a poll or two.
        kb_file = tiny_kb / "faq.yaml"
        kb_file.write_text(kb_file.read_text(encoding="utf-8") + NEW_FAQ, encoding="utf-8")
        reload = httpx.post(bases[0] + "/admin/reload", json={}, headers={"Authorization": f"Bearer {token}"},
                            timeout=120)
        assert reload.status_code == 200, reload.text
        new_version = reload.json()["version"]
        assert new_version not in versions
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            seen = {httpx.get(b + "/readyz", timeout=10).json()["index_version"] for b in bases}
            if seen == {new_version}:
                break
            time.sleep(0.2)
        assert seen == {new_version}
        for b in bases:
            body = httpx.post(b + "/chat", json={"message": "人工客服的工作时间是什么"}, timeout=30).json()
            assert body["faq_id"] == "opening_hours" and body["index_version"] == new_version
        engine.dispose()
