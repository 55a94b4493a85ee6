"""Members' own voices and learning from channels: personas.owner_user_id and personas.channel_ids, voice_optins,
learned_sources.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02

A member's voice (/voice me) is a persona with an owner; a persona learned from channels hidden from @everyone
keeps the channels it may answer in. Members who agreed to be learned from (/voice optin) and the members whose
text is in a learned persona are new tables, the same DDL on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("personas") as batch:
        batch.add_column(sa.Column("owner_user_id", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("channel_ids", sa.JSON(), nullable=True))
        batch.create_index(batch.f("ix_personas_owner_user_id"), ["owner_user_id"])
    op.create_table(
        "voice_optins",
        sa.Column("guild_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("user_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("guild_id", "user_id", name=op.f("pk_voice_optins")),
    )
    op.create_table(
        "learned_sources",
        sa.Column("persona_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=False),
        sa.Column("n_messages", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["persona_id"], ["personas.id"], name=op.f("fk_learned_sources_persona_id_personas"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("persona_id", "user_id", name=op.f("pk_learned_sources")),
    )
    op.create_index(op.f("ix_learned_sources_user_id"), "learned_sources", ["user_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_learned_sources_user_id"), table_name="learned_sources")
    op.drop_table("learned_sources")
    op.drop_table("voice_optins")
    with op.batch_alter_table("personas") as batch:
        batch.drop_index(batch.f("ix_personas_owner_user_id"))
        batch.drop_column("channel_ids")
        batch.drop_column("owner_user_id")
