"""Engines and sessions from a URL (default: the configured database, else a SQLite file in data_dir)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from core.settings import get_settings

SQLITE_BUSY_TIMEOUT_MS = 30_000

EngineLike = Engine | str | None


def database_url(url: str | None = None) -> str:
    """The explicit URL, else IMPROBABLE_DATABASE_URL, else sqlite:///<data_dir>/improbable.db."""
    return url or get_settings().effective_database_url


def _sqlite_pragmas(wal: bool):
    def on_connect(dbapi_connection, _record) -> None:
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        if wal:  # readers (bot) and a writer (worker) in other processes do not block each other
            cur.execute("PRAGMA journal_mode=WAL")
        cur.close()

    return on_connect


def _begin_before_savepoint(conn, name) -> None:
    """pysqlite (legacy transaction mode) emits no BEGIN before a SAVEPOINT, so an outermost SAVEPOINT
    would open the transaction itself and its RELEASE would COMMIT: begin_nested() would commit early and
    a later rollback() would undo nothing. Open the real transaction first."""
    dbapi_connection = conn.connection.dbapi_connection
    if not dbapi_connection.in_transaction:
        dbapi_connection.execute("BEGIN")


def make_engine(url: str | None = None, **kwargs) -> Engine:
    """A new Engine. SQLite: creates the file's folder, turns foreign keys on, waits on locks."""
    u = make_url(database_url(url))
    if u.get_backend_name() == "sqlite":
        on_disk = bool(u.database) and u.database != ":memory:" and not u.database.startswith("file:")
        if on_disk:
            Path(u.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(u, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas(wal=on_disk))
        event.listen(engine, "savepoint", _begin_before_savepoint)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(u, **kwargs)


@lru_cache(maxsize=16)
def _cached_engine(url: str) -> Engine:
    return make_engine(url)


def get_engine(engine: EngineLike = None) -> Engine:
    """An Engine as given, or the process-wide one for a URL (default: the configured database)."""
    if isinstance(engine, Engine):
        return engine
    return _cached_engine(database_url(engine))


def get_sessionmaker(engine: EngineLike = None) -> sessionmaker[Session]:
    """Sessions that keep loaded attributes after commit, so rows can be handed to other code."""
    return sessionmaker(bind=get_engine(engine), expire_on_commit=False)


@contextmanager
def session_scope(engine: EngineLike = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on any exception."""
    with get_sessionmaker(engine)() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def count_rows(session: Session, model: type) -> int:
    """How many rows `model`'s table holds."""
    return session.scalar(select(func.count()).select_from(model)) or 0
