"""misses.kb: the KB a miss was asked of, now that one deployment serves several (issue #23).

Rows logged before belong to the deployment's first KB: `bot.migrations.upgrade(..., first_kb=)`
passes its name (the server's first `--kb`), else they are `default`, the name of a plain `--kb PATH`.

Revision ID: 0003_misses_kb
Revises: 0002_chat_log_handoff
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision: str = "0003_misses_kb"
down_revision: str | None = "0002_chat_log_handoff"
branch_labels: str | None = None
depends_on: str | None = None

DEFAULT_KB = "default"  # index.datadir.DEFAULT_KB, as it was when this migration was written


def upgrade() -> None:
    first_kb = str(context.config.attributes.get("first_kb") or DEFAULT_KB)
    inspector = sa.inspect(op.get_bind())
    # A database made by `create_all` with this metadata (adopted by 0001) has the column already.
    if "kb" not in {c["name"] for c in inspector.get_columns("misses")}:
        with op.batch_alter_table("misses") as batch:
            batch.add_column(sa.Column("kb", sa.String(length=32), nullable=False, server_default=DEFAULT_KB))
        if first_kb != DEFAULT_KB:
            op.get_bind().execute(sa.text("UPDATE misses SET kb = :kb"), {"kb": first_kb})
    if "ix_misses_kb" not in {ix["name"] for ix in inspector.get_indexes("misses")}:
        op.create_index("ix_misses_kb", "misses", ["kb"])


def downgrade() -> None:
    op.drop_index("ix_misses_kb", table_name="misses")
    with op.batch_alter_table("misses") as batch:
        batch.drop_column("kb")
