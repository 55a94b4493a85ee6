"""PostgreSQL restarting under a training run, on a private cluster that this test creates, restarts and
drops (`pg_createcluster 15 faults<pid> -p <spare port>`): the shared PostgreSQL on 5432 is never stopped.
Down for 30 s mid-run, the trainer trains on through the outage (its progress writes are skipped,
worker/training.py) and the run finishes."""

from __future__ import annotations

import time

import pytest

import db
from core.settings import get_settings
from db.models import RunStatus, TrainingRun
from db.personas import get_persona
from db.runs import create_run
from worker.app import enqueue

from .conftest import PrivatePostgres

pytestmark = pytest.mark.slow
TINY = {"init": "", "n_layers": 1, "n_hidden": 32, "n_embd": 16, "batch_size": 8, "seq_len": 32, "dropout": 0.0,
        "eval_interval": 100, "log_interval": 10, "patience": 0, "max_steps": 0, "minutes": 0.7}


@pytest.fixture(scope="module")
def private_pg():
    cluster = PrivatePostgres()
    cluster.create()
    try:
        yield cluster
    finally:
        cluster.drop()


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
    monkeypatch.setenv("IMPROBABLE_DATABASE_URL", private_pg.url)
    get_settings.cache_clear()
    try:
        db.upgrade(private_pg.url)
        with db.session_scope() as session:
            run_id = create_run(session, get_persona(session, "alice", None), recipe="alice", config=TINY).id
        trainer = start_worker("pg-trainer", queue="train", pool="solo", concurrency=1,
                               IMPROBABLE_DATABASE_URL=private_pg.url).wait_ready()
        enqueue("improbable.train", run_id)
        _wait(lambda: (_run(run_id).progress.get("step") or 0) > 0, 90, "the run to train", trainer.log)
        step_before = _run(run_id).progress["step"]
        private_pg.stop()
        down = time.monotonic()
        time.sleep(30)  # the bound for a transient outage
        private_pg.start()
        outage = time.monotonic() - down
        run = _wait(lambda: (r := _run(run_id)).status.finished and r, 120, "the run to finish", trainer.log)
        print(f"\nFAULT postgresql restart (down {outage:.0f} s) during training: run {run.status.value}, "
              f"attempt {run.progress.get('attempt')}, step {step_before} before, {run.metrics.get('steps')} at "
              f"the end, stranded runs 0")
        assert run.status is RunStatus.SUCCEEDED, f"{run.status}: {run.error}\n{trainer.log()}"
        assert run.metrics["steps"] > step_before
    finally:
        from db.session import _cached_engine

        _cached_engine(private_pg.url).dispose()
        monkeypatch.undo()
        get_settings.cache_clear()
