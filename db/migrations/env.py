"""Alembic environment: migrates the database given by (first found)

1. ``config.attributes["connection"]`` (a Connection; db.migrate passes one for an Engine),
2. ``config.attributes["url"]`` (db.migrate.upgrade(url)),
3. ``alembic -x url=...`` on the command line,
4. ``sqlalchemy.url`` in alembic.ini (left empty on purpose),
5. the settings: IMPROBABLE_DATABASE_URL, else the SQLite file in the data directory.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection, pool

from db.models import Base
from db.session import database_url, make_engine

config = context.config
target_metadata = Base.metadata

if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    return (config.attributes.get("url") or context.get_x_argument(as_dictionary=True).get("url")
            or config.get_main_option("sqlalchemy.url") or database_url())


def _configure(**kwargs) -> None:
    context.configure(target_metadata=target_metadata, compare_type=True,
                      render_as_batch=True,  # SQLite can only ALTER by copying the table
                      **kwargs)


def run_migrations_offline() -> None:
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:  # batch migrations copy tables; foreign keys must not fire meanwhile (outside a transaction)
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        connection.commit()
    try:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
    finally:
        if sqlite:
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            connection.commit()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(_url(), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
