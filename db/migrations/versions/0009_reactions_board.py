"""reactions, board_settings: members' votes on generated texts, and a server's board emoji.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01

New tables, the same DDL on SQLite and PostgreSQL. A reaction row goes with its generation (ON DELETE CASCADE).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reactions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("generation_id", sa.Integer(), nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["generation_id"], ["generations.id"], ondelete="CASCADE",
                                name=op.f("fk_reactions_generation_id_generations")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reactions")),
        sa.UniqueConstraint("generation_id", "user_id", "kind", name=op.f("uq_reactions_generation_id_user_id_kind")),
    )
    op.create_index(op.f("ix_reactions_generation_id"), "reactions", ["generation_id"])
    op.create_index(op.f("ix_reactions_user_id"), "reactions", ["user_id"])
    op.create_index("ix_reactions_guild_id_created_at", "reactions", ["guild_id", "created_at"])
    op.create_table(
        "board_settings",
        sa.Column("guild_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("up_emoji", sa.String(length=100), nullable=True),
        sa.Column("down_emoji", sa.String(length=100), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("guild_id", name=op.f("pk_board_settings")),
    )


def downgrade() -> None:
    op.drop_table("board_settings")
    op.drop_index("ix_reactions_guild_id_created_at", table_name="reactions")
    op.drop_index(op.f("ix_reactions_user_id"), table_name="reactions")
    op.drop_index(op.f("ix_reactions_generation_id"), table_name="reactions")
    op.drop_table("reactions")
