"""Sessions: transactions behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import text

import db
from db.models import GuildSettings
from db.session import count_rows


def test_savepoint_release_does_not_commit_and_rollback_undoes(session):
    """On SQLite the driver would let an outermost SAVEPOINT's RELEASE commit; db.session prevents it."""
    with session.begin_nested():
        session.add(GuildSettings(guild_id=1))
    session.rollback()
    assert count_rows(session, GuildSettings) == 0


def test_session_scope_commits_or_rolls_back(engine):
    with db.session_scope(engine) as s:
        s.add(GuildSettings(guild_id=1))
    with pytest.raises(RuntimeError), db.session_scope(engine) as s:
        s.add(GuildSettings(guild_id=2))
        s.flush()
        raise RuntimeError
    with db.session_scope(engine) as s:
        assert [g.guild_id for g in s.query(GuildSettings)] == [1]


def test_sqlite_engine_makes_its_folder_and_enforces_foreign_keys(tmp_path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'a' / 'b' / 'x.db'}")
    try:
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    finally:
        engine.dispose()
    assert (tmp_path / "a" / "b" / "x.db").is_file()
