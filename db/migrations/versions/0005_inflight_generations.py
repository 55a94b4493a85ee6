"""inflight_generations: the generate jobs the bot is showing right now, so a restarted bot finishes them.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26

A new table: the same DDL on SQLite and PostgreSQL. One row per job (its Celery task id is the key), written
when the job is enqueued and deleted when its Discord message shows the outcome.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "inflight_generations",
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("channel_id", sa.BigInteger(), nullable=True),
        sa.Column("interaction_token", sa.String(length=500), nullable=True),
        sa.Column("reply_to", sa.BigInteger(), nullable=True),
        sa.Column("message_id", sa.BigInteger(), nullable=True),
        sa.Column("user_id", sa.BigInteger(), nullable=True),
        sa.Column("guild_id", sa.BigInteger(), nullable=True),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("task_id", name=op.f("pk_inflight_generations")),
    )


def downgrade() -> None:
    op.drop_table("inflight_generations")
