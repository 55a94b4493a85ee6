"""Fixtures for the worker tests: real Redis (a dedicated database number, flushed), a PostgreSQL schema
migrated by the real migrations, a storage folder, a tiny trained model, a fake Discord REST API, and real
`celery worker` subprocesses (always killed at teardown).

The environment the workers get is also applied to this process (and Celery's app reconfigured), so the
tests enqueue through the same settings. Everything is package-scoped: other test folders never see it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.environment import configured, reachable_redis, unavailable

from .support import ROOT, FakeDiscord, WorkerProcess

REDIS_URL = os.environ.get("IMPROBABLE_TEST_REDIS_URL", "redis://127.0.0.1:6379/5")
PG_URL = os.environ.get("IMPROBABLE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SCHEMA_PREFIX = "imptest_"  # the db tests drop schemas of this prefix left by dead processes
CORPORA = ROOT.parent / "shared" / "corpora"
if not CORPORA.is_dir():
    CORPORA = Path("/work/shared/corpora")


@dataclass
class Services:
    env: dict[str, str]  # what a worker process needs (IMPROBABLE_*)
    database_url: str
    data_dir: Path
    discord: FakeDiscord
    logs: Path
    workers: list = field(default_factory=list)

    @contextmanager
    def serving(self) -> Iterator[Services]:
        """This process configured as its workers are; afterwards every worker stopped, the fake Discord closed."""
        with configured(self.env, celery=True):
            try:
                yield self
            finally:
                for w in self.workers:
                    w.stop()
                self.discord.close()


def _pg_schema() -> tuple[str, callable]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT", pool_size=1)
    schema = f"{SCHEMA_PREFIX}{os.getpid()}_worker{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as e:  # noqa: BLE001 - unreachable PostgreSQL means skip, with the reason
        admin.dispose()
        unavailable(f"PostgreSQL is unreachable at {PG_URL}: {e}")

    def drop():
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()

    url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False), drop


@pytest.fixture(scope="package")
def services(tmp_path_factory):
    import db

    redis_client = reachable_redis(REDIS_URL)
    redis_client.flushdb()
    database_url, drop_schema = _pg_schema()
    db.upgrade(database_url)  # migrate + seed the default personas
    data_dir = tmp_path_factory.mktemp("worker-data")
    discord = FakeDiscord()
    env = {
        "IMPROBABLE_BROKER_URL": REDIS_URL,
        "IMPROBABLE_RESULT_BACKEND": REDIS_URL,
        "IMPROBABLE_DATABASE_URL": database_url,
        "IMPROBABLE_DATA_DIR": str(data_dir),
        "IMPROBABLE_STORAGE_URL": str(data_dir / "storage"),
        "IMPROBABLE_CORPUS_PATH": str(CORPORA),
        "IMPROBABLE_VISIBILITY_TIMEOUT": "8",  # redelivery after a kill -9 within seconds (> any test job)
        "IMPROBABLE_TRAIN_LEASE_SECONDS": "3",
        "IMPROBABLE_TRAIN_REPORT_SECONDS": "1",
        "IMPROBABLE_PARTIAL_INTERVAL": "0.1",
        "IMPROBABLE_MAX_GENERATE_TOKENS": "20000",
        "IMPROBABLE_TORCH_THREADS": "1",
        "IMPROBABLE_GENERATE_INT8": "off",  # a seed's text alone = in a batch (tests that need int8 turn it on)
        "IMPROBABLE_DISCORD_TOKEN": "test-token",
        "IMPROBABLE_DISCORD_API_BASE": discord.url,
    }
    services = Services(env, database_url, data_dir, discord, tmp_path_factory.mktemp("worker-logs"))
    try:
        with services.serving():
            yield services
    finally:
        drop_schema()
        redis_client.flushdb()
        redis_client.close()


# -- a tiny model --------------------------------------------------------------------------------------------

@pytest.fixture(scope="package")
def alice_bytes() -> bytes:
    text = (CORPORA / "alice" / "alice.txt").read_text(encoding="utf-8")[:6000]
    return text[: text.rfind("\n") + 1].encode()


@pytest.fixture(scope="package")
def checkpoint_id(services, alice_bytes, tmp_path_factory) -> int:
    """A char-rnn 1x32 trained for 50 steps on 6 KB of Alice, stored and active for the `alice` persona."""
    import db
    from db.checkpoints import save_checkpoint
    from db.personas import get_persona
    from db.runs import create_run, start_run, succeed_run
    from trainer.train import TrainConfig, train

    out = tmp_path_factory.mktemp("tiny-model")
    config = TrainConfig(corpus="alice", out_dir=str(out), n_layers=1, n_hidden=32, n_embd=16, batch_size=8,
                         seq_len=32, max_steps=50, eval_interval=50, log_interval=50, threads=1)
    result = train(config, alice_bytes.decode())
    with db.session_scope() as session:
        persona = get_persona(session, "alice", None)
        run = start_run(session, create_run(session, persona, recipe="alice"))  # trained here, not queued
        ckpt = save_checkpoint(session, db.open_storage(), persona, run, "best",
                               (out / "best.safetensors").read_bytes(), val_loss=result.best_val_loss,
                               activate=True)
        succeed_run(session, run, metrics={"val_loss": result.best_val_loss, "checkpoint_id": ckpt.id})
        return ckpt.id



@pytest.fixture(scope="package")
def generate_worker(services, checkpoint_id) -> WorkerProcess:
    """The package's generate worker: threads pool, 64 concurrent jobs."""
    return WorkerProcess(services, "generate1", "generate", "threads", 64).wait_ready()


@pytest.fixture
def start_worker(services):
    """Start extra workers inside one test; they are stopped when it ends."""
    started = []

    def start(name: str, queue: str, pool: str, concurrency: int = 1, **env: str) -> WorkerProcess:
        w = WorkerProcess(services, name, queue, pool, concurrency, **env)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


