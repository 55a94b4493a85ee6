"""quota_marks, quota_claims, quota_usage: the limits' counters, shared by every bot process.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28

New tables, the same DDL on SQLite and PostgreSQL: cooldowns (a key and the time it may be used again), jobs in
flight with their cost (a claim per job, with an expiry), and usage counted over a rolling window.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "quota_marks",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("until", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_quota_marks")),
    )
    op.create_table(
        "quota_claims",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=True),
        sa.Column("user_id", sa.BigInteger(), nullable=True),
        sa.Column("cost", sa.Float(), nullable=False),
        sa.Column("expires", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quota_claims")),
    )
    op.create_index(op.f("ix_quota_claims_guild_id"), "quota_claims", ["guild_id"])
    op.create_index(op.f("ix_quota_claims_user_id"), "quota_claims", ["user_id"])
    op.create_table(
        "quota_usage",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("amount", sa.Float(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quota_usage")),
    )
    op.create_index("ix_quota_usage_key_at", "quota_usage", ["key", "at"])


def downgrade() -> None:
    op.drop_index("ix_quota_usage_key_at", table_name="quota_usage")
    op.drop_table("quota_usage")
    op.drop_index(op.f("ix_quota_claims_user_id"), table_name="quota_claims")
    op.drop_index(op.f("ix_quota_claims_guild_id"), table_name="quota_claims")
    op.drop_table("quota_claims")
    op.drop_table("quota_marks")
