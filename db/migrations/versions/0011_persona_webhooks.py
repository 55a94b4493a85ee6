"""persona_webhooks: the channel webhooks the bot posts through as a persona.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02

A new table, the same DDL on SQLite and PostgreSQL: one row per channel and persona slug, with Discord's
webhook id and token (a secret) and the digest of its avatar.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "persona_webhooks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=False),
        sa.Column("channel_id", sa.BigInteger(), nullable=False),
        sa.Column("persona_slug", sa.String(length=32), nullable=False),
        sa.Column("webhook_id", sa.BigInteger(), nullable=False),
        sa.Column("token", sa.String(length=200), nullable=False),
        sa.Column("avatar", sa.String(length=32), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_persona_webhooks")),
        sa.UniqueConstraint("channel_id", "persona_slug", name=op.f("uq_persona_webhooks_channel_id_persona_slug")),
        sa.UniqueConstraint("webhook_id", name=op.f("uq_persona_webhooks_webhook_id")),
    )
    op.create_index(op.f("ix_persona_webhooks_guild_id"), "persona_webhooks", ["guild_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_persona_webhooks_guild_id"), table_name="persona_webhooks")
    op.drop_table("persona_webhooks")
