"""What a restarted bot needs to finish what it was posting as a persona: inflight_generations.webhook_id (the
persona's channel webhook that posted the job's message) and inflight_dialogues (a /dialogue being posted).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("inflight_generations") as batch:
        batch.add_column(sa.Column("webhook_id", sa.BigInteger(), nullable=True))
    op.create_table(
        "inflight_dialogues",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=True),
        sa.Column("channel_id", sa.BigInteger(), nullable=False),
        sa.Column("speakers", sa.String(length=200), nullable=False),
        sa.Column("turns", sa.Integer(), nullable=False),
        sa.Column("started", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inflight_dialogues")),
    )


def downgrade() -> None:
    op.drop_table("inflight_dialogues")
    with op.batch_alter_table("inflight_generations") as batch:
        batch.drop_column("webhook_id")
