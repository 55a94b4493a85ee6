"""generations.deleted_at: when the result's Delete button removed the message (NULL: still shown).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26

The row is kept (not deleted) so the statistics and the parent links of follow-ups stay whole; a deleted
generation is refused by the other buttons. A plain nullable column: SQLite's ALTER TABLE ADD COLUMN and
PostgreSQL's alike, but written in batch mode like 0002 so SQLite never needs a special case later.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("generations") as batch:
        batch.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("generations") as batch:
        batch.drop_column("deleted_at")
