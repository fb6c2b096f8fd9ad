"""The miss log and chat log (SQLAlchemy Core; SQLite in the data dir by default).

SQLite runs in WAL mode with a busy timeout so several workers can write at once without
losing rows; any other SQLAlchemy URL (PostgreSQL) works with the same tables.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    case,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.engine.url import make_url
from sqlalchemy.exc import IntegrityError

from index.datadir import DEFAULT_KB

metadata = MetaData()

misses = Table(
    "misses",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Column("message", Text, nullable=False),
    Column("match_key", Text, nullable=False),
    Column("channel", String(32), nullable=False, default="web"),
    Column("session_id", String(128)),
    Column("reason", String(32), nullable=False),  # below_threshold | ambiguous | feedback
    Column("best_faq_id", String(64)),
    Column("best_similarity", Float),
    Column("best_percent", Float),
    Column("candidates", Text, nullable=False, default="[]"),  # JSON list of {faq_id, question, similarity, percent}
    Column("index_version", String(64)),
    Column("status", String(16), nullable=False, default="open", index=True),  # open | resolved | ignored
    Column("resolved_action", String(16)),
    Column("resolved_faq_id", String(64)),
    Column("resolved_at", DateTime(timezone=True)),
    # The KB the question was asked of (`--kb NAME=PATH`; a single KB is `default`): bot/migrations 0003.
    Column("kb", String(32), nullable=False, server_default=DEFAULT_KB, index=True),
    # Hash on PostgreSQL: equality only, and no btree limit on long questions (bot/migrations 0001).
    Index("ix_misses_match_key", "match_key", postgresql_using="hash"),
)

chat_log = Table(
    "chat_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Column("channel", String(32), nullable=False),
    Column("session_id", String(128)),
    Column("matched", Boolean, nullable=False),
    Column("faq_id", String(64)),
    Column("similarity", Float),
    Column("miss_id", Integer),
    Column("handoff", String(16)),  # asked | offered (bot.handoff), else null
    Column("kb", String(32), nullable=False, server_default=DEFAULT_KB, index=True),  # bot/migrations 0004
    # A session's last turn is read on every miss (bot.handoff: two misses in a row offer a person).
    Index("ix_chat_log_session_created", "session_id", "created_at"),
)

feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Column("session_id", String(128)),
    Column("message", Text, nullable=False),
    Column("faq_id", String(64)),
    Column("helpful", Boolean, nullable=False),
    Column("miss_id", Integer),
)

# Platform deliveries already handled (event ids, and signatures of signed requests): a retry or a
# replay inserts the same (platform, event_id) again and hits the unique constraint, atomically
# across worker processes. `reply` keeps what the first delivery answered, for retries of
# platforms that take the answer from the HTTP response.
webhook_events = Table(
    "webhook_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("platform", String(32), nullable=False),
    Column("event_id", String(200), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Column("reply", Text),
    UniqueConstraint("platform", "event_id", name="uq_webhook_events_platform_event"),
)

# Outbound replies the platform never accepted (after all retries), kept so nothing is lost silently.
dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Column("platform", String(32), nullable=False, index=True),
    Column("event_id", String(200)),
    Column("target", Text, nullable=False),  # the API URL the reply was for
    Column("payload", Text, nullable=False),  # JSON body that was not delivered (no credentials)
    Column("attempts", Integer, nullable=False),
    Column("error", Text, nullable=False),
)


def _of_kb(table: Table, kb: str | None) -> tuple[Any, ...]:
    """The WHERE clause that keeps one KB's rows (none: every KB's)."""
    return () if kb is None else (table.c.kb == kb,)


def utcnow() -> datetime:
    return datetime.now(UTC)


def normalize_url(url: str) -> str:
    """`postgresql://…` means the psycopg (3) driver faqbot ships with, not SQLAlchemy's default psycopg2."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str, *, busy_timeout_seconds: float = 30.0) -> Engine:
    """An engine with SQLite set up for concurrent writers (WAL, busy timeout); a server database
    with a checked pool (a connection dropped by a database restart is replaced, not handed out)
    and bounded waits, so an unreachable database fails a request instead of hanging it."""
    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"timeout": busy_timeout_seconds, "check_same_thread": False})
        busy_ms = int(busy_timeout_seconds * 1000)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
            _enable_wal(cursor, busy_timeout_seconds)
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = max(1, int(busy_timeout_seconds))
    return create_engine(parsed, pool_pre_ping=True, pool_size=10, max_overflow=20,
                         pool_timeout=busy_timeout_seconds, pool_recycle=1800, connect_args=connect_args)


def _enable_wal(cursor: Any, timeout_seconds: float) -> None:
    """Put the SQLite file in WAL mode (persistent: a no-op once any connection did it).

    Switching modes needs the file to itself, and SQLite can refuse that at once, without waiting on
    the busy timeout (seen with several workers opening a new database together): retry until the
    timeout instead of failing a worker's start.
    """
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


@dataclass(frozen=True)
class MissRecord:
    message: str
    match_key: str
    channel: str
    session_id: str | None
    reason: str
    best_faq_id: str | None
    best_similarity: float | None
    best_percent: float | None
    candidates: Sequence[dict[str, object]]
    index_version: str | None
    kb: str = DEFAULT_KB


def miss_row(miss: MissRecord, created_at: Any) -> dict[str, Any]:
    """The `misses` row of a record: what `Store.log_miss` and the batched miss writer insert."""
    return {
        "created_at": created_at,
        "message": miss.message,
        "match_key": miss.match_key,
        "channel": miss.channel,
        "session_id": miss.session_id,
        "reason": miss.reason,
        "best_faq_id": miss.best_faq_id,
        "best_similarity": miss.best_similarity,
        "best_percent": miss.best_percent,
        "candidates": json.dumps(list(miss.candidates), ensure_ascii=False),
        "index_version": miss.index_version,
        "kb": miss.kb,
        "status": "open",
    }


class Store:
    """Everything faqbot keeps in its database, behind plain methods."""

    def __init__(self, url: str, *, busy_timeout_seconds: float = 30.0, first_kb: str = DEFAULT_KB) -> None:
        """`first_kb`: the KB that misses logged before there were several KBs belong to (migration 0003)."""
        from bot.migrations import upgrade

        self.url = url
        self.engine = make_engine(url, busy_timeout_seconds=busy_timeout_seconds)
        # The schema comes from the Alembic migrations (the same for SQLite and PostgreSQL).
        upgrade(self.engine, first_kb=first_kb)

    def close(self) -> None:
        self.engine.dispose()

    def log_miss(self, miss: MissRecord) -> int:
        row = miss_row(miss, utcnow())
        with self.engine.begin() as conn:
            result = conn.execute(insert(misses).values(**row))
            return int(result.inserted_primary_key[0])

    def log_chat(self, *, channel: str, session_id: str | None, matched: bool, faq_id: str | None,
                 similarity: float | None, miss_id: int | None, handoff: str | None = None,
                 kb: str = DEFAULT_KB) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(chat_log).values(created_at=utcnow(), channel=channel, session_id=session_id,
                                                 matched=matched, faq_id=faq_id, similarity=similarity, miss_id=miss_id,
                                                 handoff=handoff, kb=kb))

    def last_turn(self, session_id: str, kb: str | None = None) -> tuple[datetime, bool] | None:
        """(when, was it a miss) of the session's newest chat-log row; a miss is a logged
        below-threshold question (a clarify or a request for a person is none)."""
        query = (select(chat_log.c.created_at, misses.c.reason, chat_log.c.handoff)
                 .select_from(chat_log.outerjoin(misses, misses.c.id == chat_log.c.miss_id))
                 .where(chat_log.c.session_id == session_id, *_of_kb(chat_log, kb))
                 .order_by(chat_log.c.created_at.desc(), chat_log.c.id.desc()).limit(1))
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        created, reason, handoff = row
        when = created if created.tzinfo else created.replace(tzinfo=UTC)
        return when, reason == "below_threshold" and handoff != "asked"

    def log_feedback(self, *, session_id: str | None, message: str, faq_id: str | None, helpful: bool,
                     miss_id: int | None) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(insert(feedback).values(created_at=utcnow(), session_id=session_id, message=message,
                                                          faq_id=faq_id, helpful=helpful, miss_id=miss_id))
            return int(result.inserted_primary_key[0])

    def get_miss(self, miss_id: int) -> dict[str, Any] | None:
        if not _storable_id(miss_id):
            return None
        with self.engine.connect() as conn:
            row = conn.execute(select(misses).where(misses.c.id == miss_id)).mappings().first()
        return _miss_dict(row) if row else None

    def list_misses(self, *, status: str | None = "open", channel: str | None = None, since: datetime | None = None,
                    until: datetime | None = None, limit: int = 1000, kb: str | None = None) -> list[dict[str, Any]]:
        """The newest misses matching every filter given (`kb`: of that KB only)."""
        query = select(misses).order_by(misses.c.id.desc()).limit(limit)
        if kb is not None:
            query = query.where(misses.c.kb == kb)
        if status:
            query = query.where(misses.c.status == status)
        if channel:
            query = query.where(misses.c.channel == channel)
        if since:
            query = query.where(misses.c.created_at >= since)
        if until:
            query = query.where(misses.c.created_at < until)
        with self.engine.connect() as conn:
            return [_miss_dict(r) for r in conn.execute(query).mappings()]

    def count_misses(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(misses)).scalar_one())

    # --- the improvement loop (admin.curation: misses, stats) ------------------------------------
    def misses_by_ids(self, miss_ids: Sequence[int]) -> list[dict[str, Any]]:
        miss_ids = [i for i in miss_ids if _storable_id(i)]
        query = select(misses).where(misses.c.id.in_(list(miss_ids))).order_by(misses.c.id)
        with self.engine.connect() as conn:
            return [_miss_dict(r) for r in conn.execute(query).mappings()]

    def update_miss_status(self, miss_ids: Sequence[int], *, from_statuses: Sequence[str], status: str, action: str,
                           faq_id: str | None) -> list[int]:
        """Move only the misses still in `from_statuses` (two admins resolving at once: one wins); their ids."""
        miss_ids = [i for i in miss_ids if _storable_id(i)]
        with self.engine.begin() as conn:
            ids = [int(i) for i in conn.execute(select(misses.c.id).where(
                misses.c.id.in_(list(miss_ids)), misses.c.status.in_(list(from_statuses)))).scalars()]
            if ids:
                conn.execute(update(misses).where(misses.c.id.in_(ids), misses.c.status.in_(list(from_statuses)))
                             .values(status=status, resolved_action=action, resolved_faq_id=faq_id,
                                     resolved_at=utcnow()))
            return ids

    def miss_status_counts(self, kb: str | None = None) -> dict[str, int]:
        query = select(misses.c.status, func.count()).where(*_of_kb(misses, kb)).group_by(misses.c.status)
        with self.engine.connect() as conn:
            return {str(status): int(n) for status, n in conn.execute(query)}

    def chat_counts_by_hour(self, since: datetime, until: datetime,
                            kb: str | None = None) -> list[tuple[datetime, int, int, int]]:
        """(UTC hour, questions, answered, handoffs) for every hour with traffic; callers fold hours into local days.

        A request for a person that no FAQ answered is a handoff, not a question (nor a miss).
        """
        if self.engine.dialect.name == "sqlite":
            hour = func.strftime("%Y-%m-%d %H:00:00", chat_log.c.created_at)
        else:
            hour = func.date_trunc("hour", chat_log.c.created_at)
        only_asked = (chat_log.c.handoff == "asked") & chat_log.c.matched.is_(False)
        questions = func.sum(case((only_asked, 0), else_=1))
        answered = func.sum(case((chat_log.c.matched.is_(True), 1), else_=0))
        handoffs = func.sum(case((chat_log.c.handoff.is_not(None), 1), else_=0))
        query = (select(hour.label("hour"), questions.label("questions"), answered.label("answered"),
                        handoffs.label("handoffs"))
                 .where(chat_log.c.created_at >= since, chat_log.c.created_at < until, *_of_kb(chat_log, kb))
                 .group_by(hour).order_by(hour))
        out = []
        with self.engine.connect() as conn:
            for bucket, n_questions, n_answered, n_handoffs in conn.execute(query):
                when = datetime.fromisoformat(bucket) if isinstance(bucket, str) else bucket
                out.append((when if when.tzinfo else when.replace(tzinfo=UTC), int(n_questions or 0),
                            int(n_answered or 0), int(n_handoffs or 0)))
        return out

    def handoffs_after(self, since: datetime, until: datetime,
                       kb: str | None = None) -> list[tuple[str, str | None, int]]:
        """(handoff kind, the FAQ answered last before it in its session or None, count) in the window."""
        earlier = chat_log.alias("earlier")
        answered_before = (select(earlier.c.faq_id)
                           .where(earlier.c.session_id == chat_log.c.session_id, earlier.c.kb == chat_log.c.kb,
                                  earlier.c.matched.is_(True),
                                  (earlier.c.created_at < chat_log.c.created_at)
                                  | ((earlier.c.created_at == chat_log.c.created_at) & (earlier.c.id < chat_log.c.id)))
                           .order_by(earlier.c.created_at.desc(), earlier.c.id.desc()).limit(1)
                           .correlate(chat_log).scalar_subquery())
        before = case((chat_log.c.session_id.is_(None), None), else_=answered_before).label("before")
        inner = (select(chat_log.c.handoff.label("kind"), before)
                 .where(chat_log.c.handoff.is_not(None), chat_log.c.created_at >= since, chat_log.c.created_at < until,
                        *_of_kb(chat_log, kb))
                 .subquery())
        query = select(inner.c.kind, inner.c.before, func.count()).group_by(inner.c.kind, inner.c.before)
        with self.engine.connect() as conn:
            return [(str(kind), before_id, int(n)) for kind, before_id, n in conn.execute(query)]

    def top_matched_faqs(self, since: datetime, until: datetime, limit: int = 10,
                         kb: str | None = None) -> list[tuple[str, int]]:
        query = (select(chat_log.c.faq_id, func.count().label("n"))
                 .where(chat_log.c.matched.is_(True), chat_log.c.faq_id.is_not(None),
                        chat_log.c.created_at >= since, chat_log.c.created_at < until, *_of_kb(chat_log, kb))
                 .group_by(chat_log.c.faq_id).order_by(func.count().desc(), chat_log.c.faq_id).limit(limit))
        with self.engine.connect() as conn:
            return [(str(faq_id), int(n)) for faq_id, n in conn.execute(query)]

    def feedback_counts(self, since: datetime, until: datetime) -> list[tuple[str | None, int, int]]:
        """(faq_id, thumbs up, thumbs down) per FAQ that got feedback in the window."""
        down = func.sum(case((feedback.c.helpful.is_(False), 1), else_=0))
        up = func.sum(case((feedback.c.helpful.is_(True), 1), else_=0))
        query = (select(feedback.c.faq_id, up, down)
                 .where(feedback.c.created_at >= since, feedback.c.created_at < until)
                 .group_by(feedback.c.faq_id))
        with self.engine.connect() as conn:
            return [(faq_id, int(n_up or 0), int(n_down or 0)) for faq_id, n_up, n_down in conn.execute(query)]

    # --- webhook deliveries (bot/channels) --------------------------------------------------------
    def claim_event(self, platform: str, event_id: str, *, ttl_seconds: float) -> bool:
        """Record a delivery; False if it was already recorded within the TTL (a retry or replay)."""
        now = utcnow()
        cutoff = now - timedelta(seconds=ttl_seconds)
        try:
            with self.engine.begin() as conn:
                conn.execute(delete(webhook_events).where(
                    webhook_events.c.platform == platform, webhook_events.c.event_id == event_id,
                    webhook_events.c.created_at < cutoff))
                conn.execute(insert(webhook_events).values(platform=platform, event_id=event_id, created_at=now))
        except IntegrityError:
            return False
        return True

    def release_event(self, platform: str, event_id: str) -> None:
        """Forget a delivery that could not be handled, so the platform's retry is answered."""
        with self.engine.begin() as conn:
            conn.execute(delete(webhook_events).where(webhook_events.c.platform == platform,
                                                      webhook_events.c.event_id == event_id))

    def set_event_reply(self, platform: str, event_id: str, reply: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(webhook_events).where(webhook_events.c.platform == platform,
                                                      webhook_events.c.event_id == event_id).values(reply=reply))

    def event_reply(self, platform: str, event_id: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(select(webhook_events.c.reply).where(
                webhook_events.c.platform == platform, webhook_events.c.event_id == event_id)).scalar()

    def purge_events(self, *, ttl_seconds: float) -> int:
        """Drop delivery records older than the TTL; returns how many."""
        cutoff = utcnow() - timedelta(seconds=ttl_seconds)
        with self.engine.begin() as conn:
            result = conn.execute(delete(webhook_events).where(webhook_events.c.created_at < cutoff))
            return int(result.rowcount or 0)

    def add_dead_letter(self, *, platform: str, event_id: str | None, target: str, payload: object, attempts: int,
                        error: str) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(insert(dead_letters).values(
                created_at=utcnow(), platform=platform, event_id=event_id, target=target,
                payload=json.dumps(payload, ensure_ascii=False), attempts=attempts, error=error[:2000]))
            return int(result.inserted_primary_key[0])

    def list_dead_letters(self, *, platform: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        query = select(dead_letters).order_by(dead_letters.c.id.desc()).limit(limit)
        if platform:
            query = query.where(dead_letters.c.platform == platform)
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(query).mappings()]
        for row in rows:
            row["payload"] = json.loads(row["payload"])
            created = row["created_at"]
            row["created_at"] = (created if created.tzinfo else created.replace(tzinfo=UTC)).isoformat(timespec="seconds")
        return rows


def _storable_id(value: int) -> bool:
    """Ids outside a signed 64-bit integer name no row (and would overflow the database driver)."""
    return -(2**63) <= value < 2**63


def _miss_dict(row: Any) -> dict[str, Any]:
    data = dict(row)
    data["candidates"] = json.loads(data["candidates"] or "[]")
    for key in ("created_at", "resolved_at"):
        if data.get(key) is not None:
            value = data[key]
            if value.tzinfo is None:
                value = value.replace(tzinfo=UTC)
            data[key] = value.isoformat(timespec="seconds")
    return data
