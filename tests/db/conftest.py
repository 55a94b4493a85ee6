"""Fixtures for the db tests: every db test runs on SQLite and on the real PostgreSQL.

Schemas are always built by the real Alembic migrations (db.upgrade), never by create_all.

- `db_url`: an empty database per test (a new SQLite file, or a new PostgreSQL schema
  imptest_<pid>_<random> in the `test` database, reached through a URL whose libpq `options` set
  search_path to it, dropped after the test). The migration tests use it.
- `migrated_url`: a migrated, seeded database per test. SQLite: a copy of a template file migrated once
  per session. PostgreSQL: one schema migrated once per session (per pytest process), emptied and
  re-seeded before each test (DELETE from every table: ~20 ms instead of ~300 ms for a migration).
Schemas left by a crashed run (its pid is gone) are dropped at start.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

import db
from db.models import Base
from db.personas import seed_defaults
from db.session import make_engine
from db.storage import Storage
from tests.environment import unavailable

PG_URL = os.environ.get("IMPROBABLE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SCHEMA_PREFIX = "imptest_"
CORPORA = Path(__file__).resolve().parents[3] / "shared" / "corpora"
if not CORPORA.is_dir():
    CORPORA = Path("/work/shared/corpora")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture(scope="session")
def pg_admin():
    """An AUTOCOMMIT engine on the test database, or a skip saying why PostgreSQL is unreachable."""
    engine = create_engine(PG_URL, isolation_level="AUTOCOMMIT", pool_size=1)
    try:
        with engine.connect() as conn:
            stale = conn.execute(text("SELECT nspname FROM pg_namespace WHERE nspname LIKE :p"),
                                 {"p": SCHEMA_PREFIX + "%"}).scalars().all()
            for name in stale:
                m = re.match(rf"{SCHEMA_PREFIX}(\d+)_", name)
                if m and not _pid_alive(int(m.group(1))):
                    conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
    except Exception as e:  # noqa: BLE001 - any connection failure means "skip", with the reason
        engine.dispose()
        unavailable(f"PostgreSQL is unreachable at {make_url(PG_URL).render_as_string()}: {e}")
    yield engine
    engine.dispose()


def _pg_schema_url(pg_admin, request) -> str:
    schema = f"{SCHEMA_PREFIX}{os.getpid()}_{uuid.uuid4().hex[:10]}"
    with pg_admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))

    def drop() -> None:
        with pg_admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))

    request.addfinalizer(drop)
    url = make_url(PG_URL)
    return url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def _pg_migrated(pg_admin, request) -> str:
    url = _pg_schema_url(pg_admin, request)
    db.upgrade(url, seed=False)
    return url


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("template") / "improbable.db"
    db.upgrade(f"sqlite:///{path}", seed=False)
    return path


def _reset(url: str) -> None:
    """Empty every table and seed the defaults again."""
    engine = make_engine(url)
    try:
        with db.session_scope(engine) as session:
            for table in reversed(Base.metadata.sorted_tables):
                session.execute(table.delete())
            seed_defaults(session)
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """An empty database (not migrated): a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'improbable.db'}"
    return _pg_schema_url(request.getfixturevalue("pg_admin"), request)


@pytest.fixture
def pg_url(_pg_migrated) -> str:
    """PostgreSQL only, migrated and seeded (for races that need a server)."""
    _reset(_pg_migrated)
    return _pg_migrated


@pytest.fixture(params=["sqlite", "postgresql"])
def migrated_url(request, tmp_path) -> str:
    """A database migrated to head and seeded, with no other rows."""
    if request.param == "sqlite":
        path = tmp_path / "improbable.db"
        shutil.copyfile(request.getfixturevalue("_sqlite_template"), path)
        url = f"sqlite:///{path}"
        _reset(url)  # seeds (the template is not seeded, so seeding is exercised on both)
        return url
    return request.getfixturevalue("pg_url")


@pytest.fixture
def engine(migrated_url):
    engine = make_engine(migrated_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine):
    with db.get_sessionmaker(engine)() as s:
        yield s


@pytest.fixture
def storage(tmp_path) -> Storage:
    return Storage(str(tmp_path / "storage"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A local moto S3 server (no network), with dummy credentials."""
    pytest.importorskip("s3fs")
    from moto.server import ThreadedMotoServer

    for var, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_DEFAULT_REGION", "eu-west-1")):
        os.environ.setdefault(var, value)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


S3_OPTIONS = {"key": "testing", "secret": "testing", "client_kwargs": {"region_name": "eu-west-1"}}


@pytest.fixture(scope="session")
def s3_bucket(s3_endpoint) -> str:
    import s3fs

    bucket = f"improbable-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(endpoint_url=s3_endpoint, skip_instance_cache=True, **S3_OPTIONS).mkdir(bucket)
    return bucket


@pytest.fixture
def s3_storage(s3_endpoint, s3_bucket) -> Storage:
    """Storage under a fresh prefix of a bucket on the moto server, opened like a service would."""
    return db.open_storage(f"s3://{s3_bucket}/{uuid.uuid4().hex[:12]}", endpoint_url=s3_endpoint, **S3_OPTIONS)


@pytest.fixture(scope="session")
def alice_text() -> str:
    """The first ~5 KB of Alice in Wonderland (real text)."""
    return (CORPORA / "alice" / "alice.txt").read_text(encoding="utf-8")[:5000]
