"""Migrations and models agree, and upgrade/downgrade run, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

import db
from db.models import Base
from db.session import make_engine

ROOT = Path(__file__).resolve().parents[2]


def _diff(url: str) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_matches_models_then_downgrade_and_upgrade_again(db_url):
    assert db.current_revision(db_url) is None
    db.upgrade(db_url)
    assert db.current_revision(db_url) == db.head_revision()
    assert _diff(db_url) == []
    assert set(Base.metadata.tables) <= _tables(db_url)

    db.downgrade(db_url, "base")
    assert db.current_revision(db_url) is None
    assert _tables(db_url) <= {"alembic_version"}

    db.upgrade(db_url)
    assert _diff(db_url) == []
    db.upgrade(db_url)  # at head already: a no-op, seeds stay idempotent
    with db.session_scope(db_url) as s:
        assert sorted(p.slug for p in s.query(db.Persona)) == [
            "alice", "harry-potter", "movie-reviews", "shakespeare", "trump"]


def test_alembic_command_line_uses_alembic_ini(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    alembic = Path(sys.executable).with_name("alembic")
    out = subprocess.run([str(alembic), "-x", f"url={url}", "upgrade", "head"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert db.current_revision(url) == db.head_revision()
    assert _diff(url) == []


def test_settings_url_is_the_default(tmp_path, monkeypatch):
    from core.settings import get_settings

    monkeypatch.setenv("IMPROBABLE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("IMPROBABLE_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    try:
        db.upgrade()
        assert (tmp_path / "data" / "improbable.db").is_file()
        assert db.current_revision() == db.head_revision()
    finally:
        get_settings.cache_clear()


def test_db_is_importable_without_torch():
    code = ("import sys, db, db.ingest, db.personas, db.runs, db.checkpoints, db.generations, "
            "db.schedules, db.guilds, db.storage, db.migrate, db.session, db.models\n"
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'worker', 'bot', "
            "'trainer.model'))]\n"
            "assert not bad, bad\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    assert out.returncode == 0, out.stderr
