"""Run lifecycle, generations, schedules (exactly-once slot claims, raced on PostgreSQL), guild settings."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

import db
from db.models import Generation, PostStatus, RunStatus, Schedule, SchedulePost, TrainingRun
from db.personas import get_persona
from db.queries import (
    InvalidTransition,
    active_runs,
    cancel_run,
    claim_slot,
    create_run,
    create_schedule,
    fail_run,
    finish_post,
    generation_for_message,
    guild_settings,
    interval_slot,
    last_run_requested,
    posts_of,
    recent_generations,
    record_generation,
    request_cancel,
    set_generation_message,
    start_run,
    succeed_run,
    transition_run,
    update_guild_settings,
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


def test_record_generation_round_trip(session, trump):
    gen = record_generation(session, trump, prompt="Make America", output="great again", seed=2**63 - 1,
                            params={"temperature": 0.8, "improbability": 0.05}, latency_ms=123,
                            user_id=USER, guild_id=GUILD, channel_id=CHANNEL, interaction_id=2**62 + 9)
    set_generation_message(session, gen, 2**62 + 10)
    again = record_generation(session, trump, prompt="Make America", output="great", parent=gen,
                              message_id=2**62 + 11)
    session.commit()
    session.expire_all()
    found = generation_for_message(session, 2**62 + 10)
    assert found.id == gen.id and found.seed == 2**63 - 1 and found.user_id == USER
    assert found.params == {"temperature": 0.8, "improbability": 0.05} and found.latency_ms == 123
    assert found.created_at.tzinfo is not None and found.persona.slug == "trump"
    assert generation_for_message(session, 2**62 + 11).parent_id == gen.id
    assert generation_for_message(session, 1) is None
    assert [g.id for g in recent_generations(session, user_id=USER)] == [gen.id]
    assert {g.id for g in recent_generations(session, since=datetime.now(UTC) - timedelta(hours=1))} == {
        gen.id, again.id}
    assert session.scalar(select(Generation.guild_id).where(Generation.id == gen.id)) == GUILD


def test_schedule_validation(session, trump):
    with pytest.raises(ValueError):
        create_schedule(session, trump, guild_id=GUILD, channel_id=CHANNEL)
    with pytest.raises(ValueError):
        create_schedule(session, trump, guild_id=GUILD, channel_id=CHANNEL, interval_seconds=60, cron="* * * * *")
    with pytest.raises(ValueError):
        create_schedule(session, trump, guild_id=GUILD, channel_id=CHANNEL, interval_seconds=0)
    # the database's check constraints hold without the helper
    session.add(Schedule(persona_id=trump.id, guild_id=GUILD, channel_id=CHANNEL, interval_seconds=60,
                         cron="0 * * * *"))
    with pytest.raises(IntegrityError):
        session.commit()
    session.rollback()
    s = create_schedule(session, trump, guild_id=GUILD, channel_id=CHANNEL, cron="0 9 * * *", prompt="Today")
    assert s.enabled and s.last_slot is None


def test_claim_slot_exactly_once_sequentially(session, trump):
    s1 = create_schedule(session, trump, guild_id=GUILD, channel_id=CHANNEL, interval_seconds=3600)
    s2 = create_schedule(session, trump, guild_id=GUILD, channel_id=CHANNEL, interval_seconds=3600)
    session.commit()
    slot = interval_slot(3600, datetime(2026, 5, 1, 12, 34, 56, tzinfo=UTC))
    assert slot == datetime(2026, 5, 1, 12, tzinfo=UTC)
    assert claim_slot(session, s1.id, slot) is True
    assert claim_slot(session, s1.id, slot) is False
    same_instant = slot.astimezone(timezone(timedelta(hours=2)))
    assert claim_slot(session, s1.id, same_instant) is False
    assert claim_slot(session, s1.id, slot.replace(tzinfo=None)) is False  # naive = UTC
    assert claim_slot(session, s2.id, slot) is True
    assert claim_slot(session, s1.id, slot + timedelta(hours=1)) is True
    assert claim_slot(session, s1.id, slot - timedelta(hours=1)) is True  # a late catch-up slot
    with pytest.raises(LookupError):
        claim_slot(session, 10**9, slot)
    session.expire_all()
    assert session.get(Schedule, s1.id).last_slot == slot + timedelta(hours=1)
    finish_post(session, s1.id, slot, message_id=2**62 + 5)
    finish_post(session, s1.id, slot + timedelta(hours=1), error="Missing Permissions")
    session.commit()
    session.expire_all()
    posts = posts_of(session, s1.id)
    assert [p.status for p in posts] == [PostStatus.CLAIMED, PostStatus.POSTED, PostStatus.FAILED]
    assert posts[1].slot == slot and posts[1].message_id == 2**62 + 5 and posts[1].posted_at is not None
    assert posts[2].error == "Missing Permissions"
    assert session.scalar(select(SchedulePost.id).where(SchedulePost.schedule_id == s2.id)) is not None


def _race(url: str, schedule_id: int, slots: list[datetime], threads: int) -> list[list[bool]]:
    engine = db.make_engine(url, pool_size=threads)
    maker = db.get_sessionmaker(engine)
    results: list[list[bool]] = [[] for _ in slots]
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def contender() -> None:
        try:
            for i, slot in enumerate(slots):
                with maker() as session:
                    session.connection()  # connect before the barrier, so the race is the INSERT
                    barrier.wait(timeout=30)
                    results[i].append(claim_slot(session, schedule_id, slot))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
            barrier.abort()

    workers = [threading.Thread(target=contender) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    engine.dispose()
    assert not errors, errors
    return results


def test_claim_slot_race_on_postgresql(pg_url):
    with db.session_scope(pg_url) as session:
        schedule_id = create_schedule(session, get_persona(session, "trump", None), guild_id=GUILD,
                                      channel_id=CHANNEL, interval_seconds=60).id
    base = datetime(2026, 1, 1, tzinfo=UTC)
    slots = [base + timedelta(minutes=i) for i in range(25)]
    results = _race(pg_url, schedule_id, slots, threads=4)
    assert all(sorted(r) == [False, False, False, True] for r in results), results
    with db.session_scope(pg_url) as session:
        assert [p.slot for p in posts_of(session, schedule_id)] == slots
        assert session.get(Schedule, schedule_id).last_slot == slots[-1]


def test_claim_slot_threads_on_sqlite(tmp_path, _sqlite_template):
    import shutil

    path = tmp_path / "race.db"
    shutil.copyfile(_sqlite_template, path)
    url = f"sqlite:///{path}"
    db.upgrade(url)  # seeds
    with db.session_scope(url) as session:
        schedule_id = create_schedule(session, get_persona(session, "trump", None), guild_id=GUILD,
                                      channel_id=CHANNEL, interval_seconds=60).id
    slots = [datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=i) for i in range(10)]
    results = _race(url, schedule_id, slots, threads=3)
    assert all(sorted(r) == [False, False, True] for r in results), results


def test_guild_settings_defaults_and_updates(session):
    gs = guild_settings(session, GUILD)
    assert gs.max_queued_jobs_per_user == 1 and gs.cooldown_seconds == 10 and gs.trainer_role_id is None
    assert gs.max_upload_bytes == 25_000_000 and gs.train_cooldown_seconds == 600
    assert session.get(db.GuildSettings, GUILD) is None  # defaults are not saved
    update_guild_settings(session, GUILD, trainer_role_id=2**62 + 3, max_queued_jobs_per_user=3)
    session.commit()
    session.expire_all()
    gs = guild_settings(session, GUILD)
    assert (gs.trainer_role_id, gs.max_queued_jobs_per_user, gs.cooldown_seconds) == (2**62 + 3, 3, 10)
    update_guild_settings(session, GUILD, cooldown_seconds=0)
    assert guild_settings(session, GUILD).cooldown_seconds == 0
    with pytest.raises(AttributeError):
        update_guild_settings(session, GUILD, nonsense=1)
