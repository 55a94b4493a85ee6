"""Training runs: creation, the status machine every change goes through, cancellation, progress, and the
lookups the services need. Functions flush but do not commit (the caller owns the transaction).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import case, delete, false, func, or_, select, update
from sqlalchemy.orm import Session

from db.models import Corpus, Persona, PersonaCorpus, RunStatus, TrainingRun
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
    if target in (RunStatus.CANCELLED, RunStatus.FAILED):
        detach_unused_upload(session, row)
    return row


def detach_unused_upload(session: Session, run: TrainingRun) -> None:
    """A run that ended without a model (cancelled, failed) gives its upload back: the persona no longer lists
    it, so a later plain retrain does not train on it, unless another run of the persona succeeded on it or
    is still training on it. The row stays (the run refers to it) until the persona is deleted."""
    if run.corpus_id is None:
        return
    still_used = session.scalar(select(TrainingRun.id).where(
        TrainingRun.persona_id == run.persona_id, TrainingRun.corpus_id == run.corpus_id, TrainingRun.id != run.id,
        TrainingRun.status.in_((RunStatus.SUCCEEDED, *ACTIVE_STATUSES))).limit(1))
    if still_used is None:
        session.execute(delete(PersonaCorpus).where(PersonaCorpus.persona_id == run.persona_id,
                                                    PersonaCorpus.corpus_id == run.corpus_id))
        session.expire(run.persona, ["corpora"])


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
    if queued.rowcount == 1:
        detach_unused_upload(session, row)
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


# -- the fair training queue ------------------------------------------------------------------------------

def server_order(session: Session) -> list[int | None]:
    """The servers (guild ids; None: runs from the console or the CLI) with queued runs, the least served
    first: fewest runs running now, then the one whose latest run started longest ago (never: first), then
    the one that has waited longest (its oldest queued run)."""
    waiting = dict(session.execute(select(TrainingRun.guild_id, func.min(TrainingRun.id))
                                   .where(TrainingRun.status == RunStatus.QUEUED)
                                   .group_by(TrainingRun.guild_id)).all())
    if not waiting:
        return []
    named = [g for g in waiting if g is not None]
    of_waiting = or_(TrainingRun.guild_id.in_(named), TrainingRun.guild_id.is_(None) if None in waiting else false())
    running = func.sum(case((TrainingRun.status == RunStatus.RUNNING, 1), else_=0))
    served = {guild: (int(busy or 0), last) for guild, busy, last in session.execute(
        select(TrainingRun.guild_id, running, func.max(TrainingRun.started_at))
        .where(of_waiting, TrainingRun.started_at.is_not(None)).group_by(TrainingRun.guild_id)).all()}

    def key(guild):
        busy, last = served.get(guild, (0, None))
        return busy, last is not None, last or 0, waiting[guild]

    return sorted(waiting, key=key)


def claim_next_run(session: Session, task_id: str | None) -> TrainingRun | None:
    """Start the fairest queued run (the oldest of the least served server, see server_order) for the
    trainer holding ticket `task_id`, recorded as the run's task_id; None when nothing is queued. On
    PostgreSQL the candidate row is locked with SKIP LOCKED, so trainers claiming at once take different runs
    without waiting for each other; on SQLite (one writer) the conditional UPDATE of start_run decides."""
    for guild in server_order(session):
        same_server = TrainingRun.guild_id.is_(None) if guild is None else TrainingRun.guild_id == guild
        while True:
            run_id = session.scalar(select(TrainingRun.id)
                                    .where(TrainingRun.status == RunStatus.QUEUED, same_server)
                                    .order_by(TrainingRun.id).limit(1).with_for_update(skip_locked=True))
            if run_id is None:
                break  # this server's queued runs are being claimed by other trainers right now
            try:
                return start_run(session, run_id, task_id)
            except InvalidTransition:  # cancelled between the two statements: the next one
                continue
    return None


def run_claimed_by(session: Session, task_id: str) -> int | None:
    """The run that ticket `task_id` claimed earlier (a redelivered or retried train message), if any."""
    return session.scalar(select(TrainingRun.id).where(TrainingRun.task_id == task_id)
                          .order_by(TrainingRun.id).limit(1))


def queued_runs(session: Session, guild_id: int | None) -> int:
    """How many runs of a server wait for a trainer."""
    same_server = TrainingRun.guild_id.is_(None) if guild_id is None else TrainingRun.guild_id == guild_id
    return session.scalar(select(func.count()).select_from(TrainingRun)
                          .where(TrainingRun.status == RunStatus.QUEUED, same_server)) or 0
