"""This test process's environment: the services it needs, and IMPROBABLE_* variables set for a while.

`unavailable(why)`: a service a test needs (Redis, PostgreSQL, redis-server, a private cluster) is missing.
In CI (`CI` set, as .ci/run does) that fails the test: the suite's point is to run against the real ones.
Elsewhere it skips, saying what is missing.

`configured(env)`: this test process configured as a worker or the bot would be.

Settings are cached (core.settings.get_settings) and Celery's app and the database engine are built from them,
so setting os.environ alone changes nothing: `configured()` sets the variables, rebuilds what reads them, and
on exit puts everything back (and disposes the engine of the database it pointed at).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


def unavailable(why: str):
    """Fail (in CI) or skip (elsewhere) the test that needs what `why` names."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{why} (CI requires every service the tests use)", pytrace=False)
    pytest.skip(why)


@contextmanager
def configured(env: dict[str, str], *, celery: bool = False) -> Iterator[None]:
    """`env` applied to this process; `celery`: also reconfigure worker.app (the broker, the result backend)."""
    from core.settings import get_settings
    from db.session import _cached_engine
    from worker import app as worker_app

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    get_settings.cache_clear()
    if celery:
        worker_app.configure()
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        get_settings.cache_clear()
        if celery:
            worker_app.configure()
        if env.get("IMPROBABLE_DATABASE_URL"):
            _cached_engine(env["IMPROBABLE_DATABASE_URL"]).dispose()
        _cached_engine.cache_clear()
