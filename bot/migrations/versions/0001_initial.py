"""Initial schema: misses, chat_log, feedback, webhook_events, dead_letters.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-25

Databases made by faqbot before migrations existed (`metadata.create_all`) already hold some or
all of these tables: only what is missing is created, then the database is stamped, so an
upgrade adopts them without touching their rows.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def _tables() -> dict[str, list[sa.SchemaItem]]:
    return {
        "misses": [
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("message", sa.Text(), nullable=False),
            sa.Column("match_key", sa.Text(), nullable=False),
            sa.Column("channel", sa.String(length=32), nullable=False),
            sa.Column("session_id", sa.String(length=128), nullable=True),
            sa.Column("reason", sa.String(length=32), nullable=False),
            sa.Column("best_faq_id", sa.String(length=64), nullable=True),
            sa.Column("best_similarity", sa.Float(), nullable=True),
            sa.Column("best_percent", sa.Float(), nullable=True),
            sa.Column("candidates", sa.Text(), nullable=False),
            sa.Column("index_version", sa.String(length=64), nullable=True),
            sa.Column("status", sa.String(length=16), nullable=False),
            sa.Column("resolved_action", sa.String(length=16), nullable=True),
            sa.Column("resolved_faq_id", sa.String(length=64), nullable=True),
            sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
            sa.PrimaryKeyConstraint("id"),
        ],
        "chat_log": [
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("channel", sa.String(length=32), nullable=False),
            sa.Column("session_id", sa.String(length=128), nullable=True),
            sa.Column("matched", sa.Boolean(), nullable=False),
            sa.Column("faq_id", sa.String(length=64), nullable=True),
            sa.Column("similarity", sa.Float(), nullable=True),
            sa.Column("miss_id", sa.Integer(), nullable=True),
            sa.PrimaryKeyConstraint("id"),
        ],
        "feedback": [
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("session_id", sa.String(length=128), nullable=True),
            sa.Column("message", sa.Text(), nullable=False),
            sa.Column("faq_id", sa.String(length=64), nullable=True),
            sa.Column("helpful", sa.Boolean(), nullable=False),
            sa.Column("miss_id", sa.Integer(), nullable=True),
            sa.PrimaryKeyConstraint("id"),
        ],
        "webhook_events": [
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("platform", sa.String(length=32), nullable=False),
            sa.Column("event_id", sa.String(length=200), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("reply", sa.Text(), nullable=True),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("platform", "event_id", name="uq_webhook_events_platform_event"),
        ],
        "dead_letters": [
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("platform", sa.String(length=32), nullable=False),
            sa.Column("event_id", sa.String(length=200), nullable=True),
            sa.Column("target", sa.Text(), nullable=False),
            sa.Column("payload", sa.Text(), nullable=False),
            sa.Column("attempts", sa.Integer(), nullable=False),
            sa.Column("error", sa.Text(), nullable=False),
            sa.PrimaryKeyConstraint("id"),
        ],
    }


# (index name, table, columns)
INDEXES = (
    ("ix_misses_created_at", "misses", ["created_at"]),
    ("ix_misses_match_key", "misses", ["match_key"]),
    ("ix_misses_status", "misses", ["status"]),
    ("ix_chat_log_created_at", "chat_log", ["created_at"]),
    ("ix_feedback_created_at", "feedback", ["created_at"]),
    ("ix_webhook_events_created_at", "webhook_events", ["created_at"]),
    ("ix_dead_letters_created_at", "dead_letters", ["created_at"]),
    ("ix_dead_letters_platform", "dead_letters", ["platform"]),
)


# PostgreSQL: a btree entry holds at most 2704 bytes, and a 1000-character Chinese question is
# ~3000 (measured: the insert fails). match_key is only ever compared for equality, so a hash index.
HASH_ON_POSTGRESQL = frozenset({"ix_misses_match_key"})


def upgrade() -> None:
    bind = op.get_bind()
    postgresql = bind.dialect.name == "postgresql"
    inspector = sa.inspect(bind)
    existing = set(inspector.get_table_names())
    for name, items in _tables().items():
        if name not in existing:
            op.create_table(name, *items)
    for index_name, table, columns in INDEXES:
        present = {ix["name"] for ix in inspector.get_indexes(table)} if table in existing else set()
        hashed = postgresql and index_name in HASH_ON_POSTGRESQL
        if index_name in present and hashed:
            op.drop_index(index_name, table_name=table)  # a btree made by create_all before migrations
            present.discard(index_name)
        if index_name not in present:
            op.create_index(index_name, table, columns, unique=False, **({"postgresql_using": "hash"} if hashed else {}))


def downgrade() -> None:
    for index_name, table, _ in reversed(INDEXES):
        op.drop_index(index_name, table_name=table)
    for name in reversed(list(_tables())):
        op.drop_table(name)
