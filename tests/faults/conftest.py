"""Fixtures of the fault suite: real processes, and a broker this suite may stop.

The Redis that a test restarts is this suite's own (`redis-server --port <spare port>`, append-only file in a
temporary folder, started as a subprocess): the shared 127.0.0.1:6379 is never stopped. Generation rows go to
a private schema of the shared PostgreSQL, which no test stops. The workers run with the production
visibility timeout (2 h): a job of a dead worker comes back through the generate leases (worker/leases.py),
not through Redis's redelivery. A test that restarts PostgreSQL makes its own cluster (PrivatePostgres).
bench/speed/faults_under_load.py builds its stack from these helpers (OwnRedis, PrivatePostgres, fault_env,
tiny_checkpoint).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.environment import unavailable
from tests.worker.conftest import CORPORA, Services, _pg_schema
from tests.worker.support import FakeDiscord, WorkerProcess, free_port


def _spare_port(variable: str) -> int:
    """The port named by `variable`, else a free one: two runs of the suite at once (two engineers on one
    machine) must not stop each other's broker or database."""
    return int(os.environ.get(variable) or free_port())


@dataclass
class OwnRedis:
    """A redis-server subprocess on a spare port, with an append-only file (what a restart keeps)."""

    folder: Path
    port: int = field(default_factory=lambda: _spare_port("IMPROBABLE_FAULTS_REDIS_PORT"))
    proc: subprocess.Popen | None = None
    log: list = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        server = shutil.which("redis-server")
        if server is None:
            unavailable("redis-server is not installed")
        self.proc = subprocess.Popen([server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.folder),
                                      "--daemonize", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_up()

    def wait_up(self, timeout: float = 10.0) -> None:
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"redis-server on port {self.port} exited ({self.proc.returncode}); port in use?")
            try:
                client.ping()
                return
            except redis.exceptions.ConnectionError:
                time.sleep(0.1)
        pytest.fail(f"redis-server on port {self.port} did not answer in {timeout} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: the append-only file is flushed, as in a restart by an operator
            self.proc.wait(10)

    def restart(self, down_seconds: float) -> None:
        self.stop()
        time.sleep(down_seconds)
        self.start()


@dataclass
class PrivatePostgres:
    """A PostgreSQL cluster of this process's own, which a test may stop and start
    (`pg_createcluster <version> faults<pid> -p <spare port>`, trust authentication): the shared PostgreSQL
    on 5432 is never stopped. Needs postgresql-common and root."""

    version: str = field(default_factory=lambda: os.environ.get("IMPROBABLE_FAULTS_PG_VERSION", "15"))
    name: str = field(default_factory=lambda: f"faults{os.getpid()}")  # two runs at once never share one
    port: int = field(default_factory=lambda: _spare_port("IMPROBABLE_FAULTS_PG_PORT"))

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def create(self) -> None:
        if shutil.which("pg_createcluster") is None or os.geteuid() != 0:
            unavailable("a private PostgreSQL cluster needs pg_createcluster (postgresql-common) and root")
        self.drop()  # a leftover of a dead run of this pid
        made = subprocess.run(["pg_createcluster", self.version, self.name, "-p", str(self.port), "--start", "--",
                               "--auth=trust"], capture_output=True, text=True, timeout=120)
        if made.returncode != 0:
            pytest.fail(f"pg_createcluster failed: {made.stderr[-2000:]}")

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["pg_ctlcluster", self.version, self.name, *args], capture_output=True, text=True,
                              check=check, timeout=60)

    def stop(self) -> None:
        self.ctl("stop", "-m", "fast")  # connections cut at once, as a restart by an operator

    def start(self) -> None:
        self.ctl("start")

    def drop(self) -> None:
        subprocess.run(["pg_dropcluster", "--stop", self.version, self.name], capture_output=True, timeout=120)


@pytest.fixture(scope="package")
def own_redis(tmp_path_factory):
    redis = OwnRedis(tmp_path_factory.mktemp("faults-redis"))
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()


def fault_env(redis_url: str, database_url: str, data_dir: Path, discord_url: str) -> dict[str, str]:
    """What the fault suite's workers (and bench/speed/faults_under_load.py's) run with: production liveness
    (2 h visibility timeout, 10 s generate leases), one intra-op thread, a fake Discord."""
    return {
        "IMPROBABLE_BROKER_URL": redis_url,
        "IMPROBABLE_RESULT_BACKEND": redis_url,
        "IMPROBABLE_DATABASE_URL": database_url,
        "IMPROBABLE_DATA_DIR": str(data_dir),
        "IMPROBABLE_STORAGE_URL": str(data_dir / "storage"),
        "IMPROBABLE_CORPUS_PATH": str(CORPORA),
        "IMPROBABLE_VISIBILITY_TIMEOUT": "7200",  # production: a dead worker's job must not wait for it
        "IMPROBABLE_GENERATE_LEASE_SECONDS": "10",
        "IMPROBABLE_PARTIAL_INTERVAL": "0.2",
        "IMPROBABLE_MAX_GENERATE_TOKENS": "20000",
        "IMPROBABLE_TORCH_THREADS": "1",
        "IMPROBABLE_DISCORD_TOKEN": "test-token",
        "IMPROBABLE_DISCORD_API_BASE": discord_url,
    }


@pytest.fixture(scope="package")
def fault_services(own_redis, tmp_path_factory):
    import db

    database_url, drop_schema = _pg_schema()
    db.upgrade(database_url)
    data_dir = tmp_path_factory.mktemp("faults-data")
    discord = FakeDiscord()
    env = fault_env(own_redis.url, database_url, data_dir, discord.url)
    services = Services(env, database_url, data_dir, discord, tmp_path_factory.mktemp("faults-logs"))
    try:
        with services.serving():
            yield services
    finally:
        drop_schema()


def tiny_checkpoint(out: Path) -> int:
    """A char-rnn 1x32 trained for 30 steps on 6 KB of Alice (in `out`), stored and active for the `alice`
    persona of the configured database; its checkpoint id."""
    import db
    from db.checkpoints import save_checkpoint
    from db.personas import get_persona
    from db.runs import create_run
    from trainer.train import TrainConfig, train

    text = (CORPORA / "alice" / "alice.txt").read_text(encoding="utf-8")[:6000]
    config = TrainConfig(corpus="alice", out_dir=str(out), n_layers=1, n_hidden=32, n_embd=16, batch_size=8,
                         seq_len=32, max_steps=30, eval_interval=30, log_interval=30, threads=1)
    result = train(config, text[: text.rfind("\n") + 1])
    with db.session_scope() as session:
        persona = get_persona(session, "alice", None)
        run = create_run(session, persona, recipe="alice")
        return save_checkpoint(session, db.open_storage(), persona, run, "best",
                               (out / "best.safetensors").read_bytes(), val_loss=result.best_val_loss,
                               activate=True).id


@pytest.fixture(scope="package")
def fault_checkpoint(fault_services, tmp_path_factory) -> int:
    return tiny_checkpoint(tmp_path_factory.mktemp("faults-model"))


@pytest.fixture
def start_worker(fault_services):
    started = []

    def start(name: str, concurrency: int = 16, queue: str = "generate", pool: str = "threads",
              **env: str) -> WorkerProcess:
        w = WorkerProcess(fault_services, name, queue, pool, concurrency, **env)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


def report(scenario: str, sent: int, answered: int, rows: int, seconds: float) -> None:
    """One line of the fault table (printed; `pytest -s` shows it, and it lands in the junit output)."""
    lost, duplicated = sent - answered, max(0, rows - answered)
    print(f"\nFAULT {scenario}: sent {sent}, answered {answered}, lost {lost}, duplicated rows {duplicated}, "
          f"slowest answer {seconds:.1f} s")
