"""generations.request_id: the idempotency key of a generate job (its request id, the Celery task id).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26

A generate job can run twice: Redis redelivers an unacknowledged message, and the lease reaper
(worker/leases.py) re-publishes the jobs of a worker that died. The unique constraint makes the second run's
insert a no-op (insert-or-ignore, worker/recording.py), so one request is one row. Nullable: rows written
before this revision, and rows recorded outside a job, have none (NULLs never collide, on SQLite and
PostgreSQL alike). Batch mode: SQLite adds a constraint only by copying the table.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("generations") as batch:
        batch.add_column(sa.Column("request_id", sa.String(length=64), nullable=True))
        batch.create_unique_constraint(op.f("uq_generations_request_id"), ["request_id"])


def downgrade() -> None:
    with op.batch_alter_table("generations") as batch:
        batch.drop_constraint(op.f("uq_generations_request_id"), type_="unique")
        batch.drop_column("request_id")
