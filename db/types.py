"""Column types shared by the models: portable across SQLite and PostgreSQL."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Enum, MetaData
from sqlalchemy.types import TypeDecorator

# Stable constraint names, so Alembic autogenerate and batch migrations (SQLite) see the same names.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def metadata() -> MetaData:
    return MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """Aware UTC datetime; a naive one is taken to be UTC already."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """DateTime(timezone=True) that always stores UTC and always returns aware UTC datetimes.

    PostgreSQL keeps the zone (timestamptz); SQLite keeps none, so values are normalised to UTC on the
    way in and tagged UTC on the way out. Equal instants therefore compare equal on both databases,
    which is what the (schedule, slot) unique constraint relies on.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else as_utc(value)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else as_utc(value)


def str_enum(cls: type[enum.StrEnum], name: str, length: int = 16) -> Enum:
    """A portable enum column: VARCHAR + CHECK constraint, storing the enum *values*."""
    return Enum(cls, name=name, native_enum=False, create_constraint=True, length=length,
                validate_strings=True, values_callable=lambda e: [m.value for m in e])


class Family(enum.StrEnum):
    CHAR_RNN = "char-rnn"
    WORD_GRU = "word-gru"
    WORD_MLP = "word-mlp"


class RunStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)


class PostStatus(enum.StrEnum):
    CLAIMED = "claimed"
    POSTED = "posted"
    FAILED = "failed"
