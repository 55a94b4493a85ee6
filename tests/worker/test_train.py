"""The trainer service in a real `celery worker -Q train --pool solo`: kill -9 mid-run → a new trainer
resumes from the stored checkpoint and finishes; cancel within seconds."""

from __future__ import annotations

import time

import pytest

import db
from db.ingest import ingest
from db.models import Checkpoint, Persona, RunStatus, TrainingRun
from db.personas import get_persona
from db.runs import create_run, request_cancel
from db.storage import checkpoint_key
from tests.environment import within
from worker.app import enqueue

from .support import generate_request

# A 1x32 char LSTM, evaluated (and checkpointed) every 100 steps, for a few seconds of wall clock, without
# early stopping (these runs end on their budget).
TINY = {"init": "", "n_layers": 1, "n_hidden": 32, "n_embd": 16, "batch_size": 8, "seq_len": 32, "dropout": 0.0,
        "eval_interval": 100, "log_interval": 10, "patience": 0, "patience_epochs": 0, "max_steps": 0}


def _new_run(alice_bytes: bytes, **config) -> int:
    with db.session_scope() as session:
        corpus = ingest(alice_bytes, "alice.txt", session=session).corpus
    with db.session_scope() as session:
        return create_run(session, get_persona(session, "alice", None), corpus=corpus,
                          config={**TINY, **config}, requested_by=7).id


def _run(run_id: int) -> TrainingRun:
    with db.session_scope() as session:
        return session.get(TrainingRun, run_id)


def _wait(predicate, timeout: float, what: str, log=lambda: ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout} s waiting for {what}\n{log()}")


def test_killed_trainer_resumes_from_its_checkpoint(services, checkpoint_id, generate_worker, start_worker,
                                                    alice_bytes):
    run_id = _new_run(alice_bytes, minutes=0.12)  # a 7 s budget, kept across the restart
    first = start_worker("trainer1", "train", "solo").wait_ready()
    task = enqueue("improbable.train", run_id)
    storage = db.open_storage()
    last_key = checkpoint_key("alice", run_id, "last")
    _wait(lambda: _run(run_id).status is RunStatus.RUNNING, 60, "the first trainer to start", first.log)
    second = start_worker("trainer2", "train", "solo")  # starting up meanwhile; the job is the first's
    _wait(lambda: storage.exists(last_key) and (_run(run_id).progress.get("step") or 0) > 0, 60,
          "the first checkpoint", first.log)
    first.kill()
    killed_at = _run(run_id).progress["step"]
    assert _run(run_id).status is RunStatus.RUNNING
    second.wait_ready()
    summary = task.get(timeout=90)
    run = _run(run_id)
    assert run.status is RunStatus.SUCCEEDED, (run.error, second.log())
    assert summary["status"] == "succeeded" and summary["run_id"] == run_id
    # it resumed (from a stored checkpoint at step > 0), not from scratch
    assert run.metrics["resumed_from"] > 0 and run.metrics["attempt"] == 2
    assert run.progress["first_step"] > run.metrics["resumed_from"] - 1
    assert run.progress["owner"].endswith(f":{second.proc.pid}")  # the second trainer took it over
    assert run.metrics["resumed_from"] <= killed_at + 100
    assert run.metrics["stop_reason"] == "time budget reached" and run.metrics["elapsed"] >= 0.12 * 60
    assert "resuming from step" in second.log()
    # the best checkpoint is a row in storage, the loss curve is stored, and it was promoted if better
    with db.session_scope() as session:
        ckpt = session.get(Checkpoint, run.metrics["checkpoint_id"])
        persona = session.get(Persona, ckpt.persona_id)
        previous = session.get(Checkpoint, checkpoint_id)
        assert storage.exists(ckpt.storage_key) and ckpt.val_loss == run.metrics["val_loss"]
        assert storage.exists(previous.storage_key)
        # a 1x32 model trained for 7 s from scratch does not beat the base (nor, by the gate's margin, the active)
        assert run.metrics["promoted"] is False and "base model's" in run.metrics["gate"], run.metrics["gate"]
        assert persona.active_checkpoint_id == checkpoint_id
    assert storage.get(run.metrics["loss_png"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert run.metrics["sample"] and run.progress["sample"]  # samples while training, and one at the end
    # the next request names the new checkpoint, and the generate worker loads it
    reply = enqueue("improbable.generate", generate_request(ckpt.id, seed=3, max_tokens=40)).get(timeout=60)
    assert reply["checkpoint_id"] == ckpt.id and reply["tokens"] == 40


def test_cancel_stops_a_running_trainer_within_seconds(services, start_worker, alice_bytes):
    trainer = start_worker("trainer3", "train", "solo").wait_ready()
    run_id = _new_run(alice_bytes, minutes=2)
    task = enqueue("improbable.train", run_id)
    _wait(lambda: (_run(run_id).progress.get("step") or 0) > 0, 60, "training to start", trainer.log)
    asked = time.monotonic()
    with db.session_scope() as session:
        request_cancel(session, run_id)
    _wait(lambda: _run(run_id).status is RunStatus.CANCELLED, 10, "the cancellation", trainer.log)
    assert time.monotonic() - asked < within(5)
    assert task.get(timeout=30)["status"] == "cancelled"
    assert db.open_storage().exists(checkpoint_key("alice", run_id, "last"))  # its progress is kept


def test_runs_whose_trainer_went_silent_are_found_for_requeueing(services):
    from db.runs import fail_run, start_run, update_progress
    from worker.training import orphaned_runs

    with db.session_scope() as session:
        alice = get_persona(session, "alice", None)
        silent, alive = (start_run(session, create_run(session, alice)).id for _ in range(2))
        update_progress(session, silent, heartbeat=time.time() - 60)
        update_progress(session, alive, heartbeat=time.time())
    try:
        found = orphaned_runs(stale_after=30)
        assert silent in found and alive not in found
    finally:
        with db.session_scope() as session:
            fail_run(session, silent, "test")
            fail_run(session, alive, "test")


def test_a_second_trainer_of_a_run_on_this_machine_backs_off(tmp_path, monkeypatch):
    """The run folder's lock: a second claim of a run held here is Busy, another run is not, and the run is
    free again once its trainer lets go."""
    from core.settings import get_settings
    from worker.training import Busy, _hold_run

    monkeypatch.setenv("IMPROBABLE_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        with _hold_run(41):
            with pytest.raises(Busy, match="run 41 is being trained on this machine"):
                with _hold_run(41):
                    pass
            with _hold_run(42):
                pass
        with _hold_run(41):
            pass
    finally:
        get_settings.cache_clear()
