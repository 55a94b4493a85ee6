"""Schedules: validation, and slot claims that succeed exactly once (sequentially, and raced by threads on
PostgreSQL and SQLite; one at a time and a batch a statement)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

import db
from db.models import PostStatus, Schedule, SchedulePost
from db.personas import get_persona
from db.schedules import claim_slot, claim_slots, create_schedule, finish_post, interval_slot, posts_of

GUILD, CHANNEL = 2**62 + 1, 2**62 + 2  # snowflakes are 64-bit


@pytest.fixture
def trump(session):
    return get_persona(session, "trump", None)


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


def test_claim_slots_in_one_statement(session, trump):
    ids = [create_schedule(session, trump, guild_id=GUILD, channel_id=CHANNEL, interval_seconds=3600).id
           for _ in range(4)]
    session.commit()
    slot = datetime(2026, 5, 1, 12, tzinfo=UTC)
    assert claim_slot(session, ids[1], slot) is True  # one already claimed the old way
    due = [(i, slot) for i in ids] + [(10**9, slot)]  # and one schedule deleted since it was read
    won = claim_slots(session, due)
    assert won == [(ids[0], slot), (ids[2], slot), (ids[3], slot)]
    assert claim_slots(session, [(i, slot.astimezone(timezone(timedelta(hours=2)))) for i in ids]) == []
    assert claim_slots(session, []) == []
    session.expire_all()
    assert all(session.get(Schedule, i).last_slot == slot for i in ids)
    assert claim_slots(session, [(ids[0], slot - timedelta(hours=1))]) == [(ids[0], slot - timedelta(hours=1))]
    session.expire_all()
    assert session.get(Schedule, ids[0]).last_slot == slot  # a late catch-up never moves last_slot back
    assert [p.slot for p in posts_of(session, ids[0])] == [slot - timedelta(hours=1), slot]


def test_claim_slots_race_on_postgresql(pg_url):
    """Four dispatchers claim the same 60 (schedule, slot) pairs in batches, at once: each pair is won once."""
    with db.session_scope(pg_url) as session:
        trump = get_persona(session, "trump", None)
        ids = [create_schedule(session, trump, guild_id=GUILD, channel_id=CHANNEL, interval_seconds=60).id
               for _ in range(60)]
    slot = datetime(2026, 1, 1, tzinfo=UTC)
    engine = db.make_engine(pg_url, pool_size=4)
    maker = db.get_sessionmaker(engine)
    won: list[list] = [[] for _ in range(4)]
    barrier = threading.Barrier(4)

    def dispatcher(i: int) -> None:
        order = ids if i % 2 else ids[::-1]  # batches overlap in both orders
        with maker() as session:
            session.connection()
            barrier.wait(timeout=30)
            for start in range(0, 60, 25):
                won[i] += claim_slots(session, sorted((s, slot) for s in order[start:start + 25]))

    threads = [threading.Thread(target=dispatcher, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    engine.dispose()
    assert sorted(s for w in won for s, _ in w) == ids  # every pair exactly once, all of them
    with db.session_scope(pg_url) as session:
        assert all(session.get(Schedule, i).last_slot == slot for i in ids)
