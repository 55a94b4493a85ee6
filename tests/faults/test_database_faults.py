"""PostgreSQL restarting under a training run, on a private cluster that this test creates, restarts and
drops (`pg_createcluster 15 faults<pid> -p <spare port>`): the shared PostgreSQL on 5432 is never stopped.
Down for 30 s mid-run, the trainer trains on through the outage (its progress writes are skipped,
worker/training.py) and the run finishes."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

import db
from core.settings import get_settings
from db.models import RunStatus, TrainingRun
from db.personas import get_persona
from db.runs import create_run
from tests.environment import unavailable
from worker.app import enqueue

from .conftest import _spare_port

pytestmark = pytest.mark.slow
PG_VERSION = os.environ.get("IMPROBABLE_FAULTS_PG_VERSION", "15")
PG_CLUSTER = f"faults{os.getpid()}"  # one per test process: two runs at once never touch each other's
TINY = {"init": "", "n_layers": 1, "n_hidden": 32, "n_embd": 16, "batch_size": 8, "seq_len": 32, "dropout": 0.0,
        "eval_interval": 100, "log_interval": 10, "patience": 0, "max_steps": 0, "minutes": 0.7}


def _ctl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["pg_ctlcluster", PG_VERSION, PG_CLUSTER, *args], capture_output=True, text=True,
                          check=check, timeout=60)


@pytest.fixture(scope="module")
def private_pg():
    if shutil.which("pg_createcluster") is None or os.geteuid() != 0:
        unavailable("a private PostgreSQL cluster needs pg_createcluster (postgresql-common) and root")
    subprocess.run(["pg_dropcluster", "--stop", PG_VERSION, PG_CLUSTER], capture_output=True)  # a leftover
    port = _spare_port("IMPROBABLE_FAULTS_PG_PORT")
    made = subprocess.run(["pg_createcluster", PG_VERSION, PG_CLUSTER, "-p", str(port), "--start", "--",
                           "--auth=trust"], capture_output=True, text=True, timeout=120)
    if made.returncode != 0:
        pytest.fail(f"pg_createcluster failed: {made.stderr[-2000:]}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(["pg_dropcluster", "--stop", PG_VERSION, PG_CLUSTER], capture_output=True, timeout=120)


def _run(run_id: int) -> TrainingRun:
    with db.session_scope() as session:
        return session.get(TrainingRun, run_id)


def _wait(predicate, timeout: float, what: str, log=lambda: ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception:  # noqa: BLE001 - the database is restarting
            value = None
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout} s waiting for {what}\n{log()}")


def test_postgres_restart_during_training_strands_no_run(fault_services, private_pg, start_worker, monkeypatch):
    monkeypatch.setenv("IMPROBABLE_DATABASE_URL", private_pg)
    get_settings.cache_clear()
    try:
        db.upgrade(private_pg)
        with db.session_scope() as session:
            run_id = create_run(session, get_persona(session, "alice", None), recipe="alice", config=TINY).id
        trainer = start_worker("pg-trainer", queue="train", pool="solo", concurrency=1,
                               IMPROBABLE_DATABASE_URL=private_pg).wait_ready()
        enqueue("improbable.train", run_id)
        _wait(lambda: (_run(run_id).progress.get("step") or 0) > 0, 90, "the run to train", trainer.log)
        step_before = _run(run_id).progress["step"]
        _ctl("stop", "-m", "fast")
        down = time.monotonic()
        time.sleep(30)  # the bound for a transient outage
        _ctl("start")
        outage = time.monotonic() - down
        run = _wait(lambda: (r := _run(run_id)).status.finished and r, 120, "the run to finish", trainer.log)
        print(f"\nFAULT postgresql restart (down {outage:.0f} s) during training: run {run.status.value}, "
              f"attempt {run.progress.get('attempt')}, step {step_before} before, {run.metrics.get('steps')} at "
              f"the end, stranded runs 0")
        assert run.status is RunStatus.SUCCEEDED, f"{run.status}: {run.error}\n{trainer.log()}"
        assert run.metrics["steps"] > step_before
    finally:
        from db.session import _cached_engine

        _cached_engine(private_pg).dispose()
        monkeypatch.undo()
        get_settings.cache_clear()
