"""ambient_channels: the channels opted in to ambient replies (`/ambient on`).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26

A new table: the same DDL on SQLite and PostgreSQL. One row per channel (the channel id is the key), deleted by
`/ambient off`.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ambient_channels",
        sa.Column("channel_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=False),
        sa.Column("persona_slug", sa.String(length=32), nullable=False),
        sa.Column("chance", sa.Float(), nullable=False),
        sa.Column("cooldown_seconds", sa.Integer(), nullable=False),
        sa.Column("enabled_by", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("channel_id", name=op.f("pk_ambient_channels")),
    )
    op.create_index(op.f("ix_ambient_channels_guild_id"), "ambient_channels", ["guild_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_ambient_channels_guild_id"), table_name="ambient_channels")
    op.drop_table("ambient_channels")
