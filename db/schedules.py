"""Scheduled posts: schedules, their time slots, and the claim that lets exactly one dispatcher post each slot.
Functions flush but do not commit (the caller owns the transaction) unless they say so.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import Generation, Persona, PostStatus, Schedule, SchedulePost
from db.types import as_utc, utcnow


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


def claim_slots(session: Session, due: list[tuple[int, datetime]]) -> list[tuple[int, datetime]]:
    """claim_slot for many (schedule id, slot) pairs in one statement (INSERT ... ON CONFLICT DO NOTHING
    RETURNING on PostgreSQL and SQLite): returns the pairs this caller won, in the order given, and COMMITS.
    A racing claimant waits for this one's commit and then skips what it won. Pairs of a schedule deleted
    meanwhile are skipped."""
    dialect = session.get_bind().dialect.name
    if not due:
        return []
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as upsert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as upsert
    else:
        return [(s, slot) for s, slot in due if _claim_or_skip(session, s, slot)]
    at = utcnow()
    rows = [{"schedule_id": s, "slot": as_utc(slot), "status": PostStatus.CLAIMED, "claimed_at": at}
            for s, slot in due]
    statement = upsert(SchedulePost).values(rows).on_conflict_do_nothing(index_elements=["schedule_id", "slot"]) \
        .returning(SchedulePost.schedule_id, SchedulePost.slot)
    try:
        with session.begin_nested():
            won = {(s, as_utc(slot)) for s, slot in session.execute(statement)}
            by_slot: dict[datetime, list[int]] = {}
            for s, slot in won:  # schedules due together mostly share their slot: one UPDATE per slot
                by_slot.setdefault(slot, []).append(s)
            for slot, ids in by_slot.items():
                session.execute(update(Schedule).where(Schedule.id.in_(ids))
                                .where((Schedule.last_slot.is_(None)) | (Schedule.last_slot < slot))
                                .values(last_slot=slot).execution_options(synchronize_session=False))
    except IntegrityError:  # a schedule deleted since it was read: claim one by one, skipping it
        return [(s, slot) for s, slot in due if _claim_or_skip(session, s, slot)]
    session.commit()
    return [(s, as_utc(slot)) for s, slot in due if (s, as_utc(slot)) in won]


def _claim_or_skip(session: Session, schedule_id: int, slot: datetime) -> bool:
    try:
        return claim_slot(session, schedule_id, slot)
    except LookupError:
        return False


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
