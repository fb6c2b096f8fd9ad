"""chat_log.kb: the KB a turn was asked of, so stats, handoffs and suggestions are per KB (issue #23).

Rows logged before belong to the deployment's first KB, as in 0003_misses_kb.

Revision ID: 0004_chat_log_kb
Revises: 0003_misses_kb
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision: str = "0004_chat_log_kb"
down_revision: str | None = "0003_misses_kb"
branch_labels: str | None = None
depends_on: str | None = None

DEFAULT_KB = "default"  # index.datadir.DEFAULT_KB, as it was when this migration was written


def upgrade() -> None:
    first_kb = str(context.config.attributes.get("first_kb") or DEFAULT_KB)
    inspector = sa.inspect(op.get_bind())
    # A database made by `create_all` with this metadata (adopted by 0001) has the column already.
    if "kb" not in {c["name"] for c in inspector.get_columns("chat_log")}:
        with op.batch_alter_table("chat_log") as batch:
            batch.add_column(sa.Column("kb", sa.String(length=32), nullable=False, server_default=DEFAULT_KB))
        if first_kb != DEFAULT_KB:
            op.get_bind().execute(sa.text("UPDATE chat_log SET kb = :kb"), {"kb": first_kb})
    if "ix_chat_log_kb" not in {ix["name"] for ix in inspector.get_indexes("chat_log")}:
        op.create_index("ix_chat_log_kb", "chat_log", ["kb"])


def downgrade() -> None:
    op.drop_index("ix_chat_log_kb", table_name="chat_log")
    with op.batch_alter_table("chat_log") as batch:
        batch.drop_column("kb")
