"""The miss log and chat log (SQLAlchemy Core; SQLite in the data dir by default).

SQLite runs in WAL mode with a busy timeout so several workers can write at once without
losing rows; any other SQLAlchemy URL (PostgreSQL) works with the same tables.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.engine.url import make_url

metadata = MetaData()

misses = Table(
    "misses",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Column("message", Text, nullable=False),
    Column("match_key", Text, nullable=False, index=True),
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


def utcnow() -> datetime:
    return datetime.now(UTC)


def make_engine(url: str) -> Engine:
    """An engine with SQLite set up for concurrent writers (WAL, busy timeout)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


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


class Store:
    """Everything faqbot keeps in its database, behind plain methods."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def log_miss(self, miss: MissRecord) -> int:
        row = {
            "created_at": utcnow(),
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
            "status": "open",
        }
        with self.engine.begin() as conn:
            result = conn.execute(insert(misses).values(**row))
            return int(result.inserted_primary_key[0])

    def log_chat(self, *, channel: str, session_id: str | None, matched: bool, faq_id: str | None,
                 similarity: float | None, miss_id: int | None) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(chat_log).values(created_at=utcnow(), channel=channel, session_id=session_id,
                                                 matched=matched, faq_id=faq_id, similarity=similarity, miss_id=miss_id))

    def log_feedback(self, *, session_id: str | None, message: str, faq_id: str | None, helpful: bool,
                     miss_id: int | None) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(insert(feedback).values(created_at=utcnow(), session_id=session_id, message=message,
                                                          faq_id=faq_id, helpful=helpful, miss_id=miss_id))
            return int(result.inserted_primary_key[0])

    def get_miss(self, miss_id: int) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(misses).where(misses.c.id == miss_id)).mappings().first()
        return _miss_dict(row) if row else None

    def list_misses(self, *, status: str | None = "open", channel: str | None = None, since: datetime | None = None,
                    until: datetime | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        query = select(misses).order_by(misses.c.id.desc()).limit(limit)
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

    def set_miss_status(self, miss_ids: Sequence[int], *, status: str, action: str, faq_id: str | None) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(
                update(misses).where(misses.c.id.in_(list(miss_ids))).values(
                    status=status, resolved_action=action, resolved_faq_id=faq_id, resolved_at=utcnow()
                )
            )
            return int(result.rowcount or 0)

    def count_misses(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(misses)).scalar_one())


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
