"""Programmatic Alembic: what services, the CLI and the tests call instead of the `alembic` command."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, pool

from db.session import database_url, make_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str | Engine | None = None) -> Config:
    """A Config pointing at db/migrations and at the given database (default: the configured one)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if isinstance(url, Engine):
        cfg.attributes["engine"] = url
    else:
        cfg.attributes["url"] = database_url(url)
    return cfg


def _run(cfg: Config, fn, *args) -> None:
    engine = cfg.attributes.pop("engine", None)
    if engine is None:
        fn(cfg, *args)
        return
    with engine.connect() as connection:
        cfg.attributes["connection"] = connection
        fn(cfg, *args)


def _engine(url: str | Engine | None) -> tuple[Engine, bool]:
    if isinstance(url, Engine):
        return url, False
    return make_engine(url, poolclass=pool.NullPool), True


def upgrade(url: str | Engine | None = None, revision: str = "head", *, seed: bool = True) -> None:
    """`alembic upgrade <revision>`, then (idempotently) seed the default personas."""
    _run(alembic_config(url), command.upgrade, revision)
    if seed:
        from db.personas import seed_defaults
        from db.session import session_scope

        engine, own = _engine(url)
        try:
            with session_scope(engine) as session:
                seed_defaults(session)
        finally:
            if own:
                engine.dispose()


def downgrade(url: str | Engine | None = None, revision: str = "base") -> None:
    _run(alembic_config(url), command.downgrade, revision)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(url: str | Engine | None = None) -> str | None:
    """The revision the database is at (None: never migrated)."""
    engine, own = _engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        if own:
            engine.dispose()

