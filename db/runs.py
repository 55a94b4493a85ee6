"""Training runs: creation, the status machine every change goes through, cancellation, progress, and the
lookups the services need. Functions flush but do not commit (the caller owns the transaction).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.models import Corpus, Persona, RunStatus, TrainingRun
from db.types import utcnow

TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.QUEUED: frozenset({RunStatus.RUNNING, RunStatus.CANCELLED}),
    RunStatus.RUNNING: frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED}),
    RunStatus.SUCCEEDED: frozenset(),
    RunStatus.FAILED: frozenset(),
    RunStatus.CANCELLED: frozenset(),
}
ACTIVE_STATUSES = (RunStatus.QUEUED, RunStatus.RUNNING)


class InvalidTransition(ValueError):
    def __init__(self, run_id: int, current: RunStatus, target: RunStatus):
        super().__init__(f"training run {run_id} is {current.value}; it cannot become {target.value}")
        self.run_id, self.current, self.target = run_id, current, target


def create_run(session: Session, persona: Persona, *, corpus: Corpus | None = None, recipe: str | None = None,
               config: dict[str, Any] | None = None, requested_by: int | None = None,
               guild_id: int | None = None, channel_id: int | None = None) -> TrainingRun:
    """A queued run (flushed, so it has an id to enqueue)."""
    run = TrainingRun(persona_id=persona.id, corpus_id=corpus.id if corpus else None,
                      recipe=recipe or persona.recipe, config=dict(config or {}), status=RunStatus.QUEUED,
                      requested_by=requested_by, guild_id=guild_id, channel_id=channel_id)
    session.add(run)
    session.flush()
    return run


def transition_run(session: Session, run: TrainingRun | int, status: RunStatus | str, **fields: Any) -> TrainingRun:
    """Move a run to `status` if its *current database* status allows it, else InvalidTransition.

    A conditional UPDATE (WHERE status IN allowed sources), so two processes racing (a worker starting, a
    user cancelling) cannot both win. Extra fields (error, metrics, task_id...) are set in the same UPDATE.
    """
    target = RunStatus(status)
    run_id = run if isinstance(run, int) else run.id
    sources = [s for s, targets in TRANSITIONS.items() if target in targets]
    values: dict[str, Any] = {"status": target, "updated_at": utcnow(), **fields}
    if target is RunStatus.RUNNING:
        values.setdefault("started_at", utcnow())
    elif target.finished:
        values.setdefault("finished_at", utcnow())
    result = session.execute(update(TrainingRun).where(TrainingRun.id == run_id, TrainingRun.status.in_(sources))
                             .values(**values).execution_options(synchronize_session=False))
    row = session.get(TrainingRun, run_id, populate_existing=True)
    if row is None:
        raise LookupError(f"no training run {run_id}")
    if result.rowcount != 1:
        raise InvalidTransition(run_id, row.status, target)
    return row


def start_run(session: Session, run: TrainingRun | int, task_id: str | None = None) -> TrainingRun:
    return transition_run(session, run, RunStatus.RUNNING, **({"task_id": task_id} if task_id else {}))


def succeed_run(session: Session, run: TrainingRun | int, metrics: dict[str, Any] | None = None) -> TrainingRun:
    return transition_run(session, run, RunStatus.SUCCEEDED, **({"metrics": metrics} if metrics else {}))


def fail_run(session: Session, run: TrainingRun | int, error: str) -> TrainingRun:
    return transition_run(session, run, RunStatus.FAILED, error=error)


def cancel_run(session: Session, run: TrainingRun | int) -> TrainingRun:
    return transition_run(session, run, RunStatus.CANCELLED, cancel_requested=True)


def request_cancel(session: Session, run: TrainingRun | int) -> TrainingRun:
    """Ask a run to stop. A queued run is cancelled at once; a running one gets cancel_requested, sees it
    at its next progress report (update_progress returns True) and then calls cancel_run. A finished run
    raises InvalidTransition."""
    run_id = run if isinstance(run, int) else run.id
    now = utcnow()
    queued = session.execute(update(TrainingRun)
                             .where(TrainingRun.id == run_id, TrainingRun.status == RunStatus.QUEUED)
                             .values(status=RunStatus.CANCELLED, cancel_requested=True, finished_at=now,
                                     updated_at=now).execution_options(synchronize_session=False))
    if queued.rowcount != 1:
        session.execute(update(TrainingRun)
                        .where(TrainingRun.id == run_id, TrainingRun.status == RunStatus.RUNNING)
                        .values(cancel_requested=True, updated_at=now)
                        .execution_options(synchronize_session=False))
    row = session.get(TrainingRun, run_id, populate_existing=True)
    if row is None:
        raise LookupError(f"no training run {run_id}")
    if row.status.finished and queued.rowcount != 1:
        raise InvalidTransition(run_id, row.status, RunStatus.CANCELLED)
    return row


def update_progress(session: Session, run: TrainingRun | int, **progress: Any) -> bool:
    """Merge progress (step, total, loss, val_loss, tokens_per_s, eta...) into the row; returns
    cancel_requested so the trainer can stop. Only a running run accepts progress."""
    run_id = run if isinstance(run, int) else run.id
    row = session.get(TrainingRun, run_id, populate_existing=True)
    if row is None:
        raise LookupError(f"no training run {run_id}")
    if row.status is not RunStatus.RUNNING:
        raise InvalidTransition(run_id, row.status, RunStatus.RUNNING)
    row.progress = {**row.progress, **progress}
    session.flush()
    return row.cancel_requested


def active_runs(session: Session, *, requested_by: int | None = None, persona: Persona | None = None,
                guild_id: int | None = None) -> list[TrainingRun]:
    """Queued or running runs, optionally of one user / persona / guild, oldest first."""
    q = select(TrainingRun).where(TrainingRun.status.in_(ACTIVE_STATUSES)).order_by(TrainingRun.id)
    if requested_by is not None:
        q = q.where(TrainingRun.requested_by == requested_by)
    if persona is not None:
        q = q.where(TrainingRun.persona_id == persona.id)
    if guild_id is not None:
        q = q.where(TrainingRun.guild_id == guild_id)
    return list(session.scalars(q))


def last_run_requested(session: Session, requested_by: int, guild_id: int | None = None) -> TrainingRun | None:
    """The user's most recent run (for the training cooldown)."""
    q = select(TrainingRun).where(TrainingRun.requested_by == requested_by)
    if guild_id is not None:
        q = q.where(TrainingRun.guild_id == guild_id)
    return session.scalars(q.order_by(TrainingRun.created_at.desc(), TrainingRun.id.desc()).limit(1)).first()
