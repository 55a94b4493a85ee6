"""Fixtures of the deployment tests: a clean environment (no IMPROBABLE_*/DISCORD_* variables, no .env
in the working directory) with the settings cache cleared before and after each test."""

from __future__ import annotations

import os
import socket

import pytest

from core.settings import get_settings
from tests.environment import unavailable

PG_URL = os.environ.get("IMPROBABLE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("IMPROBABLE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.upper().startswith(("IMPROBABLE_", "DISCORD_")) and not name.upper().startswith("IMPROBABLE_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMPROBABLE_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_port() -> int:
    """A local port nothing listens on (bound and released, so refused at once)."""
    return free_port()


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except Exception as e:  # noqa: BLE001
        unavailable(f"Redis is unreachable at {REDIS_URL}: {e}")
    return REDIS_URL


@pytest.fixture(scope="session")
def pg_url() -> str:
    from sqlalchemy import create_engine, text

    engine = create_engine(PG_URL, connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as e:  # noqa: BLE001
        unavailable(f"PostgreSQL is unreachable at {PG_URL}: {e}")
    finally:
        engine.dispose()
    return PG_URL
