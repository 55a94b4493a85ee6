"""Training runs: the status machine (every lifecycle, rejected transitions, the database's state deciding
a race), cancellation, progress, and the active-run lookups."""

from __future__ import annotations

import pytest

import db
from db.models import RunStatus, TrainingRun
from db.personas import get_persona
from db.runs import (
    InvalidTransition,
    active_runs,
    cancel_run,
    create_run,
    fail_run,
    last_run_requested,
    request_cancel,
    start_run,
    succeed_run,
    transition_run,
    update_progress,
)

GUILD, CHANNEL, USER = 2**62 + 1, 2**62 + 2, 2**63 - 1  # snowflakes are 64-bit


@pytest.fixture
def trump(session):
    return get_persona(session, "trump", None)


def _run_in(session, persona, status: RunStatus) -> TrainingRun:
    run = create_run(session, persona, requested_by=USER, guild_id=GUILD)
    path = {RunStatus.QUEUED: [], RunStatus.RUNNING: [RunStatus.RUNNING],
            RunStatus.SUCCEEDED: [RunStatus.RUNNING, RunStatus.SUCCEEDED],
            RunStatus.FAILED: [RunStatus.RUNNING, RunStatus.FAILED],
            RunStatus.CANCELLED: [RunStatus.CANCELLED]}[status]
    for step in path:
        run = transition_run(session, run, step)
    return run


@pytest.mark.parametrize("path", [
    ["running", "succeeded"], ["running", "failed"], ["running", "cancelled"], ["cancelled"]])
def test_valid_lifecycles(session, trump, path):
    run = create_run(session, trump, requested_by=USER, guild_id=GUILD, config={"max_steps": 10})
    session.commit()
    assert run.status is RunStatus.QUEUED and run.started_at is None and run.recipe == "trump"
    for status in path:
        run = transition_run(session, run.id, status)
        session.commit()
    session.expire_all()
    run = session.get(TrainingRun, run.id)
    assert run.status == RunStatus(path[-1])
    assert run.finished_at is not None and run.finished_at.tzinfo is not None
    assert (run.started_at is not None) == (path[0] == "running")
    assert run.requested_by == USER and run.guild_id == GUILD and run.config == {"max_steps": 10}


@pytest.mark.parametrize(("start", "target"), [
    (RunStatus.QUEUED, RunStatus.SUCCEEDED), (RunStatus.QUEUED, RunStatus.FAILED),
    (RunStatus.QUEUED, RunStatus.QUEUED), (RunStatus.RUNNING, RunStatus.RUNNING),
    (RunStatus.RUNNING, RunStatus.QUEUED), (RunStatus.SUCCEEDED, RunStatus.RUNNING),
    (RunStatus.SUCCEEDED, RunStatus.CANCELLED), (RunStatus.SUCCEEDED, RunStatus.FAILED),
    (RunStatus.FAILED, RunStatus.RUNNING), (RunStatus.FAILED, RunStatus.SUCCEEDED),
    (RunStatus.CANCELLED, RunStatus.RUNNING), (RunStatus.CANCELLED, RunStatus.SUCCEEDED)])
def test_invalid_transitions_rejected(session, trump, start, target):
    run = _run_in(session, trump, start)
    session.commit()
    with pytest.raises(InvalidTransition) as info:
        transition_run(session, run, target)
    assert (info.value.current, info.value.target) == (start, target)
    assert f"is {start.value}" in str(info.value)
    session.expire_all()
    assert session.get(TrainingRun, run.id).status is start


def test_transition_uses_the_database_state_not_a_stale_object(migrated_url, trump, session):
    run = create_run(session, trump)
    session.commit()
    with db.session_scope(migrated_url) as other:  # the worker, in another session
        start_run(other, run.id, task_id="celery-1")
        succeed_run(other, run.id, metrics={"val_loss": 1.23})
    assert run.status is RunStatus.QUEUED  # stale in this session
    with pytest.raises(InvalidTransition, match="succeeded"):
        start_run(session, run)
    assert run.status is RunStatus.SUCCEEDED and run.metrics == {"val_loss": 1.23} and run.task_id == "celery-1"


def test_cancel_progress_and_failure(session, trump):
    queued = create_run(session, trump)
    assert request_cancel(session, queued).status is RunStatus.CANCELLED  # queued: cancelled at once

    run = start_run(session, create_run(session, trump, requested_by=USER), task_id="t-2")
    assert update_progress(session, run, step=10, total=100, loss=2.5) is False
    assert update_progress(session, run, step=20, val_loss=2.4, tokens_per_s=1e5, eta=30.0) is False
    session.commit()
    session.expire_all()
    run = session.get(TrainingRun, run.id)
    assert run.progress == {"step": 20, "total": 100, "loss": 2.5, "val_loss": 2.4, "tokens_per_s": 1e5,
                            "eta": 30.0}
    assert request_cancel(session, run).status is RunStatus.RUNNING and run.cancel_requested
    assert update_progress(session, run, step=30) is True  # the trainer sees the request...
    assert cancel_run(session, run).status is RunStatus.CANCELLED  # ...and stops
    with pytest.raises(InvalidTransition):
        update_progress(session, run, step=40)
    with pytest.raises(InvalidTransition):
        request_cancel(session, run)

    failed = fail_run(session, start_run(session, create_run(session, trump)), "CUDA out of memory")
    assert failed.status is RunStatus.FAILED and failed.error == "CUDA out of memory"
    with pytest.raises(LookupError):
        start_run(session, 10**9)


def test_active_runs_and_last_request(session, trump):
    alice = get_persona(session, "alice", None)
    a = create_run(session, trump, requested_by=USER, guild_id=GUILD)
    b = start_run(session, create_run(session, alice, requested_by=USER, guild_id=GUILD))
    succeed_run(session, start_run(session, create_run(session, alice, requested_by=USER)))
    create_run(session, alice, requested_by=USER + 0 - 1)
    session.commit()
    assert [r.id for r in active_runs(session, requested_by=USER)] == [a.id, b.id]
    assert [r.id for r in active_runs(session, persona=alice, guild_id=GUILD)] == [b.id]
    assert last_run_requested(session, USER).requested_by == USER
    assert last_run_requested(session, 5) is None
