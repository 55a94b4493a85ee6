"""The queries the services need: training-run lifecycle, checkpoints, generations, schedule slots, guild
settings. Functions flush but do not commit (the caller owns the transaction) unless they say so.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import (
    Checkpoint,
    Corpus,
    Generation,
    GuildSettings,
    Persona,
    PostStatus,
    RunStatus,
    Schedule,
    SchedulePost,
    TrainingRun,
)
from db.storage import Storage, checkpoint_key
from db.types import as_utc, utcnow

# -- training runs ---------------------------------------------------------------------------------------

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


# -- checkpoints -----------------------------------------------------------------------------------------

def add_checkpoint(session: Session, persona: Persona, storage_key: str, *, run: TrainingRun | None = None,
                   name: str = "best", val_loss: float | None = None, metrics: dict[str, Any] | None = None,
                   size_bytes: int = 0, activate: bool = False) -> Checkpoint:
    """Record a checkpoint already in storage; activate=True promotes it to the persona's active one."""
    ckpt = Checkpoint(persona_id=persona.id, run_id=run.id if run else None, name=name, storage_key=storage_key,
                      family=persona.family, val_loss=val_loss, metrics=dict(metrics or {}), size_bytes=size_bytes)
    session.add(ckpt)
    session.flush()
    if activate:
        persona.active_checkpoint = ckpt
        session.flush()
    return ckpt


def save_checkpoint(session: Session, storage: Storage, persona: Persona, run: TrainingRun, name: str,
                    data: bytes, *, val_loss: float | None = None, metrics: dict[str, Any] | None = None,
                    activate: bool = False) -> Checkpoint:
    """Store checkpoint bytes at checkpoints/<slug>/<run>/<name>.safetensors (atomically), then record them.
    If recording fails the blob is removed again."""
    key = checkpoint_key(persona.slug, run.id, name)
    storage.put(key, data)
    try:
        with session.begin_nested():
            return add_checkpoint(session, persona, key, run=run, name=name, val_loss=val_loss,
                                  metrics=metrics, size_bytes=len(data), activate=activate)
    except BaseException:
        storage.delete(key)
        raise


# -- generations -----------------------------------------------------------------------------------------

def generation_row(persona_id: int, *, prompt: str, output: str, params: dict[str, Any] | None = None,
                   seed: int | None = None, checkpoint: Checkpoint | int | None = None, latency_ms: int | None = None,
                   user_id: int | None = None, guild_id: int | None = None, channel_id: int | None = None,
                   message_id: int | None = None, interaction_id: int | None = None,
                   parent: Generation | int | None = None, request_id: str | None = None) -> dict[str, Any]:
    """The `generations` columns of one generated text, with everything a regenerate button needs to do it
    again. The workers insert such rows in batches (worker/recording.py); `record_generation` adds one.
    `request_id` is the idempotency key (the job's id). NUL characters are dropped: PostgreSQL text cannot
    hold them, and one would fail the whole batch insert it travels in."""
    prompt, output = prompt.replace("\x00", ""), output.replace("\x00", "")
    return {"persona_id": persona_id, "prompt": prompt, "output": output, "params": dict(params or {}),
            "seed": seed, "checkpoint_id": checkpoint.id if isinstance(checkpoint, Checkpoint) else checkpoint,
            "latency_ms": latency_ms, "user_id": user_id, "guild_id": guild_id, "channel_id": channel_id,
            "message_id": message_id, "interaction_id": interaction_id,
            "parent_id": parent.id if isinstance(parent, Generation) else parent, "request_id": request_id}


def record_generation(session: Session, persona: Persona, **fields: Any) -> Generation:
    """Store one generated text (the fields of `generation_row`)."""
    gen = Generation(**generation_row(persona.id, **fields))
    session.add(gen)
    session.flush()
    return gen


def set_generation_message(session: Session, generation: Generation | int, message_id: int) -> None:
    """Attach the Discord message id once the reply has been posted."""
    gen_id = generation if isinstance(generation, int) else generation.id
    session.execute(update(Generation).where(Generation.id == gen_id).values(message_id=message_id))


def generation_for_message(session: Session, message_id: int) -> Generation | None:
    """The (latest) generation shown in a Discord message: what a regenerate button reads."""
    return session.scalars(select(Generation).where(Generation.message_id == message_id)
                           .order_by(Generation.id.desc()).limit(1)).first()


def recent_generations(session: Session, *, user_id: int | None = None, since: datetime | None = None,
                       limit: int = 50) -> list[Generation]:
    q = select(Generation).order_by(Generation.created_at.desc(), Generation.id.desc()).limit(limit)
    if user_id is not None:
        q = q.where(Generation.user_id == user_id)
    if since is not None:
        q = q.where(Generation.created_at >= as_utc(since))
    return list(session.scalars(q))


# -- schedules -------------------------------------------------------------------------------------------

def create_schedule(session: Session, persona: Persona, *, guild_id: int, channel_id: int, prompt: str = "",
                    interval_seconds: int | None = None, cron: str | None = None,
                    params: dict[str, Any] | None = None, created_by: int | None = None,
                    enabled: bool = True) -> Schedule:
    if (interval_seconds is None) == (cron is None):
        raise ValueError("a schedule needs exactly one of interval_seconds or cron")
    if interval_seconds is not None and interval_seconds <= 0:
        raise ValueError("interval_seconds must be positive")
    sched = Schedule(persona_id=persona.id, guild_id=guild_id, channel_id=channel_id, prompt=prompt,
                     interval_seconds=interval_seconds, cron=cron, params=dict(params or {}),
                     created_by=created_by, enabled=enabled)
    session.add(sched)
    session.flush()
    return sched


def enabled_schedules(session: Session, guild_id: int | None = None) -> list[Schedule]:
    q = select(Schedule).where(Schedule.enabled.is_(True)).order_by(Schedule.id)
    if guild_id is not None:
        q = q.where(Schedule.guild_id == guild_id)
    return list(session.scalars(q))


def interval_slot(interval_seconds: int, now: datetime | None = None) -> datetime:
    """The start of the interval containing `now`, aligned to the Unix epoch (UTC)."""
    now = as_utc(now or utcnow())
    epoch = datetime(1970, 1, 1, tzinfo=now.tzinfo)
    seconds = int((now - epoch).total_seconds()) // interval_seconds * interval_seconds
    return epoch + timedelta(seconds=seconds)


def claim_slot(session: Session, schedule_id: int, slot: datetime) -> bool:
    """Claim (schedule, slot) for posting: True for exactly one caller ever, False for all others.

    Inserts the schedule_posts row and COMMITS, so the claim is durable before anything is posted; the
    unique constraint decides races (on PostgreSQL a concurrent claimant waits for the winner's commit and
    then gets the IntegrityError). The session's other pending work is committed with it.
    """
    slot = as_utc(slot)
    try:
        with session.begin_nested():
            session.execute(insert(SchedulePost).values(schedule_id=schedule_id, slot=slot,
                                                        status=PostStatus.CLAIMED, claimed_at=utcnow()))
            session.execute(update(Schedule).where(Schedule.id == schedule_id)
                            .where((Schedule.last_slot.is_(None)) | (Schedule.last_slot < slot))
                            .values(last_slot=slot).execution_options(synchronize_session=False))
    except IntegrityError:
        # the savepoint is rolled back; the session's own transaction goes on
        if session.get(Schedule, schedule_id) is None:
            raise LookupError(f"no schedule {schedule_id}") from None
        return False
    session.commit()
    return True


def finish_post(session: Session, schedule_id: int, slot: datetime, *, message_id: int | None = None,
                generation: Generation | int | None = None, error: str | None = None) -> None:
    """Mark a claimed slot as posted (message_id) or failed (error)."""
    values: dict[str, Any] = {"status": PostStatus.FAILED if error else PostStatus.POSTED, "error": error}
    if message_id is not None:
        values.update(message_id=message_id, posted_at=utcnow())
    if generation is not None:
        values["generation_id"] = generation if isinstance(generation, int) else generation.id
    session.execute(update(SchedulePost).where(SchedulePost.schedule_id == schedule_id,
                                               SchedulePost.slot == as_utc(slot))
                    .values(**values))


def posts_of(session: Session, schedule_id: int) -> list[SchedulePost]:
    return list(session.scalars(select(SchedulePost).where(SchedulePost.schedule_id == schedule_id)
                                .order_by(SchedulePost.slot)))


# -- guild settings --------------------------------------------------------------------------------------

def guild_settings(session: Session, guild_id: int) -> GuildSettings:
    """The guild's settings row, or an unsaved one holding the defaults."""
    row = session.get(GuildSettings, guild_id)
    if row is not None:
        return row
    defaults = {c.key: c.default.arg for c in GuildSettings.__table__.columns
                if c.default is not None and c.default.is_scalar}
    return GuildSettings(guild_id=guild_id, **defaults)


def update_guild_settings(session: Session, guild_id: int, **values: Any) -> GuildSettings:
    """Create or update the guild's settings (flushed)."""
    row = session.get(GuildSettings, guild_id)
    if row is None:
        row = guild_settings(session, guild_id)
        session.add(row)
    for key, value in values.items():
        if key not in GuildSettings.__table__.columns or key in ("guild_id", "created_at", "updated_at"):
            raise AttributeError(f"guild settings have no field {key!r}")
        setattr(row, key, value)
    session.flush()
    return row


def count_rows(session: Session, model: type) -> int:
    return session.scalar(select(func.count()).select_from(model)) or 0
