"""Data rights and operator tools: reports, the bot's standing per server, disabled personas, and who an
ambient reply quoted.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27

New tables guild_status and reports; personas.disabled (false for existing rows) and
generations.quoted_user_id. The same DDL on SQLite (batch mode) and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "guild_status",
        sa.Column("guild_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("left_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("blocked", sa.Boolean(), nullable=False),
        sa.Column("blocked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("guild_id", name=op.f("pk_guild_status")),
    )
    op.create_table(
        "reports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("reporter_id", sa.BigInteger(), nullable=True),
        sa.Column("guild_id", sa.BigInteger(), nullable=True),
        sa.Column("generation_id", sa.Integer(), nullable=True),
        sa.Column("persona_slug", sa.String(length=32), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["generation_id"], ["generations.id"], ondelete="SET NULL",
                                name=op.f("fk_reports_generation_id_generations")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reports")),
    )
    op.create_index(op.f("ix_reports_reporter_id"), "reports", ["reporter_id"])
    op.create_index(op.f("ix_reports_guild_id"), "reports", ["guild_id"])
    op.create_index(op.f("ix_reports_created_at"), "reports", ["created_at"])
    with op.batch_alter_table("personas") as batch:
        batch.add_column(sa.Column("disabled", sa.Boolean(), server_default=sa.false(), nullable=False))
    with op.batch_alter_table("generations") as batch:
        batch.add_column(sa.Column("quoted_user_id", sa.BigInteger(), nullable=True))
        batch.create_index(batch.f("ix_generations_quoted_user_id"), ["quoted_user_id"])


def downgrade() -> None:
    with op.batch_alter_table("generations") as batch:
        batch.drop_index(batch.f("ix_generations_quoted_user_id"))
        batch.drop_column("quoted_user_id")
    with op.batch_alter_table("personas") as batch:
        batch.drop_column("disabled")
    op.drop_index(op.f("ix_reports_created_at"), table_name="reports")
    op.drop_index(op.f("ix_reports_guild_id"), table_name="reports")
    op.drop_index(op.f("ix_reports_reporter_id"), table_name="reports")
    op.drop_table("reports")
    op.drop_table("guild_status")
