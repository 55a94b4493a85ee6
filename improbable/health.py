"""Health and readiness checks: `improbable health [CHECK ...]` (exit 0 when all pass, 1 otherwise).

Checks: `database` (connect and SELECT 1), `broker` (ping the Celery broker, and the result backend when
it is another Redis), `storage` (write, read back and delete a probe object), `migrations` (the database
is at the newest Alembic revision), and any `http://` / `https://` URL (answers 2xx within the timeout:
the process's own /healthz or /readyz, see core/metrics.py). docker-compose.yml uses them as
healthchecks. Every check is bounded by a timeout and reports one line that says what failed and where
(URLs with their passwords masked).
"""

from __future__ import annotations

import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

from core.settings import Settings, get_settings, mask_url

CHECKS = ("database", "broker", "storage", "migrations")
DEFAULT_CHECKS = ("database", "broker", "storage")


@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str
    seconds: float = 0.0
    skipped: bool = False

    def line(self) -> str:
        mark = "skip" if self.skipped else ("ok" if self.ok else "FAIL")
        return f"{mark:<4} {self.name:<10} {self.detail} ({self.seconds * 1000:.0f} ms)"

    def to_dict(self) -> dict:
        return asdict(self)


def _one_line(error: BaseException) -> str:
    """The most useful single line of an exception (the driver's message for SQLAlchemy errors)."""
    inner = getattr(error, "orig", None) or error
    text = " ".join(str(inner).split()) or type(inner).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def check_database(settings: Settings, timeout: float) -> str:
    from sqlalchemy import pool, text
    from sqlalchemy.engine import make_url

    from db.session import make_engine

    url = settings.effective_database_url
    backend = make_url(url).get_backend_name()
    if backend == "postgresql":
        connect_args = {"connect_timeout": max(1, math.ceil(timeout))}
    elif backend == "sqlite":
        connect_args = {"timeout": timeout}
    else:
        connect_args = {}
    engine = make_engine(url, poolclass=pool.NullPool, connect_args=connect_args)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    finally:
        engine.dispose()
    return mask_url(url)


def _ping(url: str, timeout: float) -> None:
    if url.startswith(("redis://", "rediss://", "unix://")):
        import redis

        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
        return
    from kombu import Connection

    with Connection(url, connect_timeout=timeout) as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)


def check_broker(settings: Settings, timeout: float) -> str | None:
    """None (skipped) without a broker: tasks run in-process."""
    if not settings.broker_url:
        return None
    _ping(settings.broker_url, timeout)
    shown = mask_url(settings.broker_url)
    backend = settings.result_backend
    if backend and backend != settings.broker_url and backend.startswith(("redis://", "rediss://")):
        _ping(backend, timeout)
        shown += f", results {mask_url(backend)}"
    return shown


def check_storage(settings: Settings, timeout: float) -> str:
    from db.storage import Storage

    url = settings.effective_storage_url
    storage = Storage(url)
    key = f"health/{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.probe"
    payload = uuid.uuid4().bytes
    storage.put(key, payload)
    try:
        if storage.get(key) != payload:
            raise OSError("the probe object read back differs from what was written")
    finally:
        storage.delete(key)
    return f"{mask_url(url)} (writable)"


def check_migrations(settings: Settings, timeout: float) -> str:
    from db.migrate import current_revision, head_revision

    url = settings.effective_database_url
    current, head = current_revision(url), head_revision()
    if current != head:
        raise RuntimeError(f"database at revision {current or 'none'}, code at {head}: "
                           "run `python -m db upgrade`")
    return f"{mask_url(url)} at revision {current}"


def check_http(url: str, timeout: float) -> str:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - operator's URL
            status = response.status
    except urllib.error.HTTPError as e:
        body = e.read(200).decode("utf-8", "replace").strip()
        raise RuntimeError(f"{url} answered {e.code}{': ' + body if body else ''}") from None
    except urllib.error.URLError as e:
        raise RuntimeError(f"{url}: {e.reason}") from None
    return f"{url} answered {status}"


_CHECK_FUNCTIONS: dict[str, Callable[[Settings, float], str | None]] = {
    "database": check_database,
    "broker": check_broker,
    "storage": check_storage,
    "migrations": check_migrations,
}


def run_check(target: str, settings: Settings, timeout: float) -> CheckResult:
    started = time.perf_counter()
    is_url = "://" in target
    name = "http" if is_url else target
    try:
        if is_url:
            detail = check_http(target, timeout)
        else:
            detail = _CHECK_FUNCTIONS[target](settings, timeout)
    except Exception as e:  # noqa: BLE001 - every failure becomes a one-line report
        where = target if is_url else _where(target, settings)
        message = _one_line(e)
        if where and not message.startswith(where):
            message = f"{where}: {message}"
        return CheckResult(name, False, message, time.perf_counter() - started)
    if detail is None:
        return CheckResult(name, True, "not configured: tasks run in-process", time.perf_counter() - started,
                           skipped=True)
    return CheckResult(name, True, detail, time.perf_counter() - started)


def _where(check: str, settings: Settings) -> str:
    if check in ("database", "migrations"):
        return mask_url(settings.effective_database_url)
    if check == "broker":
        return mask_url(settings.broker_url)
    if check == "storage":
        return mask_url(settings.effective_storage_url)
    return ""


def run_checks(targets: Iterable[str] | None = None, settings: Settings | None = None,
               timeout: float = 3.0) -> list[CheckResult]:
    """Run the named checks (default: database, broker, storage) in order."""
    settings = settings or get_settings()
    targets = list(targets or DEFAULT_CHECKS)
    unknown = [t for t in targets if t not in CHECKS and "://" not in t]
    if unknown:
        raise ValueError(f"unknown check {unknown[0]!r}: use {', '.join(CHECKS)} or an http:// URL")
    return [run_check(t, settings, timeout) for t in targets]
