"""chat_log.handoff: the turns that offered a person (asked | offered), for the handoff stats; and an
index on (session_id, created_at), since a session's last turn is read on every miss.

Revision ID: 0002_chat_log_handoff
Revises: 0001_initial
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002_chat_log_handoff"
down_revision: str | None = "0001_initial"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # A database made by `create_all` with this metadata (adopted by 0001) has both already.
    inspector = sa.inspect(op.get_bind())
    if "handoff" not in {c["name"] for c in inspector.get_columns("chat_log")}:
        with op.batch_alter_table("chat_log") as batch:
            batch.add_column(sa.Column("handoff", sa.String(length=16), nullable=True))
    if "ix_chat_log_session_created" not in {ix["name"] for ix in inspector.get_indexes("chat_log")}:
        op.create_index("ix_chat_log_session_created", "chat_log", ["session_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_chat_log_session_created", table_name="chat_log")
    with op.batch_alter_table("chat_log") as batch:
        batch.drop_column("handoff")
