"""The weekly board post: board_settings.post_channel_id (where `/board post` sends the finished week's board)
and board_settings.posted_week (the start of the last week whose board was handled).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("board_settings") as batch:
        batch.add_column(sa.Column("post_channel_id", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("posted_week", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("board_settings") as batch:
        batch.drop_column("posted_week")
        batch.drop_column("post_channel_id")
