"""This test process's environment: the services it needs, and IMPROBABLE_* variables set for a while.

`unavailable(why)`: a service a test needs (Redis, PostgreSQL, redis-server, a private cluster) is missing.
In CI (`CI` set, as .ci/run does) that fails the test: the suite's point is to run against the real ones.
Elsewhere it skips, saying what is missing.

`configured(env)`: this test process configured as a worker or the bot would be.

`within(seconds)`: a wall-clock bound scaled by IMPROBABLE_TEST_TIME_SCALE (default 1; a slow or shared host
sets 2 or 3), the one factor every timed assertion of the suite goes through. `wait_until(condition, seconds,
what)`: poll until a condition holds (an event, a log line), instead of sleeping for a guessed time.

Settings are cached (core.settings.get_settings) and Celery's app and the database engine are built from them,
so setting os.environ alone changes nothing: `configured()` sets the variables, rebuilds what reads them, and
on exit puts everything back (and disposes the engine of the database it pointed at).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

TIME_SCALE = float(os.environ.get("IMPROBABLE_TEST_TIME_SCALE") or 1.0)


def within(seconds: float) -> float:
    """A wall-clock bound of a test, scaled for the host (IMPROBABLE_TEST_TIME_SCALE)."""
    return seconds * TIME_SCALE


def wait_until(condition: Callable[[], object], seconds: float, what: str, poll: float = 0.05):
    """The first truthy value of `condition()`, polled until `within(seconds)` has passed; AssertionError
    naming `what` when it never came."""
    deadline = time.monotonic() + within(seconds)
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            break
        time.sleep(poll)
    assert value, f"waited {within(seconds):.0f} s for {what}"
    return value


def unavailable(why: str):
    """Fail (in CI) or skip (elsewhere) the test that needs what `why` names."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{why} (CI requires every service the tests use)", pytrace=False)
    pytest.skip(why)


def reachable_redis(url: str):
    """A redis-py client of `url`, answering a PING; unavailable() when it does not."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as e:
        unavailable(f"Redis is unreachable at {url}: {e}")
    return client


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
