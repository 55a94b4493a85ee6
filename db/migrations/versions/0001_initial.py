"""Initial schema: personas, corpora, training runs, checkpoints, generations, schedules, guild settings.

Revision ID: 0001
Revises:
Create Date: 2026-11-22

Hand-edited from autogenerate. Types are spelled out (not imported from db.models) so this revision stays
frozen while the models move on. personas.active_checkpoint_id and checkpoints.persona_id reference each
other: SQLite accepts the forward reference inline, PostgreSQL gets the constraint added afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FAMILY = ("char-rnn", "word-gru", "word-mlp")
RUN_STATUS = ("queued", "running", "succeeded", "failed", "cancelled")
POST_STATUS = ("claimed", "posted", "failed")
ACTIVE_FK = "fk_personas_active_checkpoint_id_checkpoints"


def _enum(values: tuple[str, ...], name: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=16)


def _ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _snowflake(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.BigInteger(), nullable=nullable)


def _json(name: str) -> sa.Column:
    return sa.Column(name, sa.JSON(), nullable=False)


def _fk(col: str, table: str, ondelete: str, src: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint([col], [f"{table}.id"], name=op.f(f"fk_{src}_{col}_{table}"), ondelete=ondelete)


def _index(table: str, column: str) -> None:
    op.create_index(op.f(f"ix_{table}_{column}"), table, [column], unique=False)


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"

    op.create_table(
        "corpora",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("raw_sha256", sa.String(length=64), nullable=False),
        sa.Column("storage_key", sa.String(length=255), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("encoding", sa.String(length=32), nullable=False),
        sa.Column("n_bytes", sa.BigInteger(), nullable=False),
        sa.Column("n_chars", sa.BigInteger(), nullable=False),
        sa.Column("n_lines", sa.BigInteger(), nullable=False),
        sa.Column("n_words", sa.BigInteger(), nullable=False),
        sa.Column("n_unique_chars", sa.Integer(), nullable=False),
        sa.Column("n_unique_words", sa.Integer(), nullable=False),
        _json("stats"),
        _snowflake("uploaded_by"),
        _snowflake("guild_id"),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_corpora")),
        sa.UniqueConstraint("sha256", name=op.f("uq_corpora_sha256")),
    )
    _index("corpora", "raw_sha256")

    op.create_table(
        "guild_settings",
        sa.Column("guild_id", sa.BigInteger(), autoincrement=False, nullable=False),
        _snowflake("trainer_role_id"),
        sa.Column("max_queued_jobs_per_user", sa.Integer(), nullable=False),
        sa.Column("cooldown_seconds", sa.Integer(), nullable=False),
        sa.Column("train_cooldown_seconds", sa.Integer(), nullable=False),
        sa.Column("max_upload_bytes", sa.BigInteger(), nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("guild_id", name=op.f("pk_guild_settings")),
    )

    op.create_table(
        "personas",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("slug", sa.String(length=32), nullable=False),
        _snowflake("guild_id"),
        sa.Column("display_name", sa.String(length=100), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("family", _enum(FAMILY, "family"), nullable=False),
        sa.Column("recipe", sa.String(length=64), nullable=False),
        _json("sampling"),
        sa.Column("active_checkpoint_id", sa.Integer(), nullable=True),
        _snowflake("created_by"),
        _ts("created_at"),
        _ts("updated_at"),
        *([_fk("active_checkpoint_id", "checkpoints", "SET NULL", "personas")] if sqlite else []),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_personas")),
        sa.UniqueConstraint("guild_id", "slug", name=op.f("uq_personas_guild_id_slug")),
    )
    _index("personas", "guild_id")
    op.create_index("uq_personas_global_slug", "personas", ["slug"], unique=True,
                    sqlite_where=sa.text("guild_id IS NULL"), postgresql_where=sa.text("guild_id IS NULL"))

    op.create_table(
        "persona_corpora",
        sa.Column("persona_id", sa.Integer(), nullable=False),
        sa.Column("corpus_id", sa.Integer(), nullable=False),
        _snowflake("added_by"),
        _ts("created_at"),
        _fk("corpus_id", "corpora", "CASCADE", "persona_corpora"),
        _fk("persona_id", "personas", "CASCADE", "persona_corpora"),
        sa.PrimaryKeyConstraint("persona_id", "corpus_id", name=op.f("pk_persona_corpora")),
    )
    _index("persona_corpora", "corpus_id")

    op.create_table(
        "schedules",
        sa.Column("id", sa.Integer(), nullable=False),
        _snowflake("guild_id", nullable=False),
        _snowflake("channel_id", nullable=False),
        sa.Column("persona_id", sa.Integer(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        _json("params"),
        sa.Column("interval_seconds", sa.Integer(), nullable=True),
        sa.Column("cron", sa.String(length=100), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        _snowflake("created_by"),
        _ts("last_slot", nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        sa.CheckConstraint("(interval_seconds IS NULL) <> (cron IS NULL)",
                           name=op.f("ck_schedules_interval_xor_cron")),
        sa.CheckConstraint("interval_seconds IS NULL OR interval_seconds > 0",
                           name=op.f("ck_schedules_interval_positive")),
        _fk("persona_id", "personas", "CASCADE", "schedules"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedules")),
    )
    _index("schedules", "guild_id")
    _index("schedules", "persona_id")

    op.create_table(
        "training_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("persona_id", sa.Integer(), nullable=False),
        sa.Column("corpus_id", sa.Integer(), nullable=True),
        sa.Column("recipe", sa.String(length=64), nullable=True),
        _json("config"),
        sa.Column("status", _enum(RUN_STATUS, "status"), nullable=False),
        _json("progress"),
        _json("metrics"),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        _snowflake("requested_by"),
        _snowflake("guild_id"),
        _snowflake("channel_id"),
        _snowflake("message_id"),
        sa.Column("task_id", sa.String(length=155), nullable=True),
        _ts("started_at", nullable=True),
        _ts("finished_at", nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        _fk("corpus_id", "corpora", "SET NULL", "training_runs"),
        _fk("persona_id", "personas", "CASCADE", "training_runs"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_runs")),
    )
    for column in ("corpus_id", "persona_id", "requested_by", "status"):
        _index("training_runs", column)

    op.create_table(
        "checkpoints",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("persona_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("storage_key", sa.String(length=255), nullable=False),
        sa.Column("family", _enum(FAMILY, "family"), nullable=False),
        sa.Column("val_loss", sa.Float(), nullable=True),
        _json("metrics"),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        _ts("created_at"),
        _fk("persona_id", "personas", "CASCADE", "checkpoints"),
        _fk("run_id", "training_runs", "SET NULL", "checkpoints"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_checkpoints")),
        sa.UniqueConstraint("storage_key", name=op.f("uq_checkpoints_storage_key")),
    )
    _index("checkpoints", "persona_id")
    _index("checkpoints", "run_id")
    if not sqlite:
        op.create_foreign_key(op.f(ACTIVE_FK), "personas", "checkpoints", ["active_checkpoint_id"], ["id"],
                              ondelete="SET NULL")

    op.create_table(
        "generations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("persona_id", sa.Integer(), nullable=False),
        sa.Column("checkpoint_id", sa.Integer(), nullable=True),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("prompt", sa.Text(), nullable=False),
        _json("params"),
        sa.Column("seed", sa.BigInteger(), nullable=True),
        sa.Column("output", sa.Text(), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        _snowflake("user_id"),
        _snowflake("guild_id"),
        _snowflake("channel_id"),
        _snowflake("message_id"),
        _snowflake("interaction_id"),
        _ts("created_at"),
        _fk("checkpoint_id", "checkpoints", "SET NULL", "generations"),
        _fk("parent_id", "generations", "SET NULL", "generations"),
        _fk("persona_id", "personas", "CASCADE", "generations"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_generations")),
    )
    for column in ("created_at", "message_id", "persona_id", "user_id"):
        _index("generations", column)

    op.create_table(
        "schedule_posts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("schedule_id", sa.Integer(), nullable=False),
        _ts("slot"),
        sa.Column("status", _enum(POST_STATUS, "status"), nullable=False),
        _snowflake("message_id"),
        sa.Column("generation_id", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _ts("claimed_at"),
        _ts("posted_at", nullable=True),
        _fk("generation_id", "generations", "SET NULL", "schedule_posts"),
        _fk("schedule_id", "schedules", "CASCADE", "schedule_posts"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedule_posts")),
        sa.UniqueConstraint("schedule_id", "slot", name=op.f("uq_schedule_posts_schedule_id_slot")),
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint(op.f(ACTIVE_FK), "personas", type_="foreignkey")
    # dropping a table drops its indexes
    for table in ("schedule_posts", "generations", "checkpoints", "training_runs", "schedules",
                  "persona_corpora", "personas", "guild_settings", "corpora"):
        op.drop_table(table)
