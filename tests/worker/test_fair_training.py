"""Training runs are shared fairly between servers: a real `celery worker -Q train --pool solo` on real Redis and
PostgreSQL, server X's runs queued first and server Y's after them, and Y's run starts after at most one of X's
(worker/training.py: a train message is a claim ticket for the fairest queued run). And a server's queue of
runs waiting for a trainer is capped by the service."""

from __future__ import annotations

from datetime import timedelta

import pytest

import db
import service.personas
from core.settings import get_settings
from db.ingest import ingest
from db.models import RunStatus, TrainingRun
from db.personas import get_persona
from db.runs import create_run, request_cancel
from db.types import utcnow
from service.errors import ServerTrainingQueueFull
from service.policy import Actor
from tests.environment import configured
from worker.app import enqueue

from .conftest import CORPORA
from .test_train import TINY, _wait

SERVER_X, SERVER_Y = 7001, 7002
SHORT = {**TINY, "max_steps": 30, "eval_interval": 30}  # about a second of training each


def _queue(alice_bytes: bytes, guild_id: int, n: int) -> list[int]:
    """n runs of `guild_id`, each created and then enqueued (one ticket each), as the bot does."""
    with db.session_scope() as session:
        corpus = ingest(alice_bytes, "alice.txt", session=session).corpus
    ids = []
    for i in range(n):
        with db.session_scope() as session:
            ids.append(create_run(session, get_persona(session, "alice", None), corpus=corpus, config=SHORT,
                                  requested_by=guild_id * 10 + i, guild_id=guild_id).id)
        enqueue("improbable.train", ids[-1])
    return ids


def _rows(ids: list[int]) -> list[TrainingRun]:
    with db.session_scope() as session:
        return [session.get(TrainingRun, i) for i in ids]


def test_a_servers_run_waits_for_at_most_one_run_of_a_flooding_server(services, start_worker, alice_bytes):
    xs = _queue(alice_bytes, SERVER_X, 6)  # queued before any trainer is up: FIFO would run all six first
    y_id = _queue(alice_bytes, SERVER_Y, 1)[0]
    trainer = start_worker("fair-trainer", "train", "solo").wait_ready()
    try:
        _wait(lambda: _rows([y_id])[0].status.finished, 120, "Y's run to finish", trainer.log)
        y = _rows([y_id])[0]
        assert y.status is RunStatus.SUCCEEDED, (y.error, trainer.log())
        started_before_y = [r.id for r in _rows(xs) if r.started_at is not None and r.started_at < y.started_at]
        assert len(started_before_y) <= 1, (started_before_y, trainer.log())
        # every ticket still trains a run: X's runs all finish, each exactly once, in their own order
        _wait(lambda: all(r.status.finished for r in _rows(xs)), 180, "X's runs to finish", trainer.log)
        x_rows = _rows(xs)
        assert all(r.status is RunStatus.SUCCEEDED for r in x_rows), [(r.id, r.error) for r in x_rows]
        x_starts = [r.started_at for r in x_rows]
        assert x_starts == sorted(x_starts)  # within a server, oldest first
        assert len({r.task_id for r in [*x_rows, y]}) == 7  # one ticket spent on each run
    finally:
        with db.session_scope() as session:
            for run_id in [*xs, y_id]:
                if not session.get(TrainingRun, run_id).status.finished:
                    request_cancel(session, run_id)


def test_a_ticket_with_nothing_left_to_claim_ends_at_once(services, start_worker, alice_bytes):
    """A cancelled run's ticket does not train anything and does not wait."""
    trainer = start_worker("fair-trainer2", "train", "solo").wait_ready()
    with db.session_scope() as session:
        run_id = create_run(session, get_persona(session, "alice", None), config=SHORT, guild_id=SERVER_X).id
        request_cancel(session, run_id)
    summary = enqueue("improbable.train", run_id).get(timeout=30)
    assert summary["run_id"] == run_id and summary["status"] == "cancelled", trainer.log()


def test_a_servers_queue_of_waiting_runs_is_capped(services):
    text = (CORPORA / "alice" / "alice.txt").read_text(encoding="utf-8")[:12000].encode()
    cap = 2
    created = []
    with configured({"IMPROBABLE_TRAIN_QUEUED_PER_SERVER": str(cap)}):
        assert get_settings().train_queued_per_server == cap
        try:
            for i in range(cap):  # different members, each within their own limit of one run
                member = Actor(8000 + i, SERVER_Y + 1, 5, can_manage=True)
                created.append(service.personas.create_persona(member, f"fair{i}", text, "t.txt").run_id)
            with pytest.raises(ServerTrainingQueueFull, match=f"already has {cap} training run.*limit is {cap}") \
                    as refused:
                service.personas.create_persona(Actor(8100, SERVER_Y + 1, 5, can_manage=True), "fairx", text,
                                                "t.txt")
            assert (refused.value.count, refused.value.limit) == (cap, cap)
            assert "/train status" in refused.value.render(str)
            # another server is not affected, nor is the operator
            service.personas.create_persona(Actor(8200, SERVER_Y + 2, 5, can_manage=True), "fairy", text, "t.txt")
            service.personas.create_persona(Actor(8300, SERVER_Y + 1, 5, can_manage=True, operator=True), "fairo",
                                            text, "t.txt")
        finally:
            with db.session_scope() as session:
                for run in session.query(TrainingRun).filter(TrainingRun.status == RunStatus.QUEUED):
                    request_cancel(session, run)


def test_a_queued_run_whose_message_was_lost_gets_a_ticket_from_beat(services, start_worker, alice_bytes):
    from sqlalchemy import update

    from worker.tasks import requeue_orphaned_runs

    with db.session_scope() as session:
        corpus = ingest(alice_bytes, "alice.txt", session=session).corpus
    with db.session_scope() as session:  # created an hour ago, never enqueued (the bot died in between)
        run_id = create_run(session, get_persona(session, "alice", None), corpus=corpus, config=SHORT,
                            guild_id=SERVER_X).id
        session.execute(update(TrainingRun).where(TrainingRun.id == run_id)
                        .values(created_at=utcnow() - timedelta(hours=1)))
    requeue_orphaned_runs.apply().get()  # beat's task, here; the ticket goes through Redis
    trainer = start_worker("fair-trainer3", "train", "solo").wait_ready()
    _wait(lambda: _rows([run_id])[0].status.finished, 90, "the run to be trained", trainer.log)
    assert _rows([run_id])[0].status is RunStatus.SUCCEEDED, trainer.log()
