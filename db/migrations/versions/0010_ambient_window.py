"""The conversation window of ambient replies: how long, how likely and how often the persona keeps answering
in a channel once a member replies to it.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01

Three columns on ambient_channels with server defaults (existing channels: no window). Whether a window is
open right now lives in quota_marks (shared by every bot process). The same DDL on SQLite (batch mode) and
PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("ambient_channels") as batch:
        batch.add_column(sa.Column("window_seconds", sa.Integer(), server_default=sa.text("0"), nullable=False))
        batch.add_column(sa.Column("window_chance", sa.Float(), server_default=sa.text("0.5"), nullable=False))
        batch.add_column(sa.Column("window_cooldown_seconds", sa.Integer(), server_default=sa.text("30"),
                                   nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("ambient_channels") as batch:
        batch.drop_column("window_cooldown_seconds")
        batch.drop_column("window_chance")
        batch.drop_column("window_seconds")
