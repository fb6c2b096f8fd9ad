"""chat_log.handoff: the turns that offered a person (asked | offered), for the handoff stats.

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
    # A database made by `create_all` with this metadata (adopted by 0001) has the column already.
    if "handoff" in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("chat_log")}:
        return
    with op.batch_alter_table("chat_log") as batch:
        batch.add_column(sa.Column("handoff", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("chat_log") as batch:
        batch.drop_column("handoff")
