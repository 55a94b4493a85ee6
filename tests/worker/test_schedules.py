"""Scheduled posts: due-slot arithmetic (interval, cron, at most one catch-up), two dispatchers racing
against a real worker that posts to a fake Discord: every slot is posted exactly once, and posts due together
spread out at IMPROBABLE_SCHEDULE_POSTS_PER_SECOND, one dispatch after another on one timeline."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

import db
from core.cron import parse_cron
from db.models import PostStatus, Schedule
from db.personas import get_persona
from db.schedules import create_schedule, posts_of
from tests.environment import configured
from worker.app import enqueue
from worker.schedules import due_slot, latest_cron_slot, post_content

NOW = datetime(2026, 6, 10, 12, 34, 56, tzinfo=UTC)  # a Wednesday


def _schedule(**kw) -> Schedule:
    kw.setdefault("created_at", NOW - timedelta(days=30))
    return Schedule(guild_id=1, channel_id=2, persona_id=1, **kw)


def test_interval_slots_and_a_single_catch_up():
    hourly = _schedule(interval_seconds=3600)
    assert due_slot(hourly, NOW) == datetime(2026, 6, 10, 12, tzinfo=UTC)
    hourly.last_slot = datetime(2026, 6, 10, 12, tzinfo=UTC)
    assert due_slot(hourly, NOW) is None  # already claimed
    hourly.last_slot = NOW - timedelta(days=9)  # nine days down: one catch-up, the latest slot, not 216
    assert due_slot(hourly, NOW) == datetime(2026, 6, 10, 12, tzinfo=UTC)
    fresh = _schedule(interval_seconds=3600, created_at=NOW - timedelta(minutes=5))
    assert due_slot(fresh, NOW) is None  # created after this slot began: its first post is the next slot
    assert due_slot(fresh, NOW + timedelta(minutes=30)) == datetime(2026, 6, 10, 13, tzinfo=UTC)


def test_cron_slots():
    after = NOW - timedelta(days=30)
    assert latest_cron_slot("*/15 * * * *", NOW, after) == datetime(2026, 6, 10, 12, 30, tzinfo=UTC)
    assert latest_cron_slot("0 9 * * *", NOW, after) == datetime(2026, 6, 10, 9, 0, tzinfo=UTC)
    assert latest_cron_slot("0 18 * * *", NOW, after) == datetime(2026, 6, 9, 18, 0, tzinfo=UTC)
    assert latest_cron_slot("0 9 * * mon", NOW, after) == datetime(2026, 6, 8, 9, 0, tzinfo=UTC)
    assert latest_cron_slot("0 9 * * 0", NOW, after) == datetime(2026, 6, 7, 9, 0, tzinfo=UTC)  # Sunday = 0
    assert latest_cron_slot("30 8 1 1 *", NOW, after) is None  # New Year's was before `after`
    assert latest_cron_slot("34 12 * * *", NOW, after) == datetime(2026, 6, 10, 12, 34, tzinfo=UTC)
    cron = _schedule(cron="0 */6 * * *", last_slot=datetime(2026, 6, 1, tzinfo=UTC))
    assert due_slot(cron, NOW) == datetime(2026, 6, 10, 12, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_cron("* * *")
    assert len(post_content("Alice", "x" * 5000)) == 2000


def test_racing_dispatchers_post_each_slot_once(services, checkpoint_id, generate_worker):
    with db.session_scope() as session:
        alice = get_persona(session, "alice", None)
        ids = [create_schedule(session, alice, guild_id=1, channel_id=500 + i, prompt="The Queen",
                               params={"max_tokens": 120}, **kw).id
               for i, kw in enumerate([{"interval_seconds": 60}, {"interval_seconds": 3600},
                                       {"cron": "*/5 * * * *"}, {"cron": "0 0 1 1 *"}])]
        long_ago = datetime.now(UTC) - timedelta(days=3)
        session.execute(update(Schedule).where(Schedule.id.in_(ids)).values(created_at=long_ago))
        # the hourly one was down for days: it gets one catch-up post, not seventy
        session.execute(update(Schedule).where(Schedule.id == ids[1]).values(last_slot=long_ago))
    now = datetime.now(UTC)
    claimed: list[list] = [[], [], []]
    barrier = threading.Barrier(3)

    def dispatcher(i: int) -> None:  # beat's task in the worker, and two more dispatchers here
        barrier.wait(timeout=10)
        claimed[i] = enqueue("improbable.dispatch_schedules", now.isoformat()).get(timeout=30) \
            if i == 0 else _dispatch_here(now)

    threads = [threading.Thread(target=dispatcher, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    slots = sorted(tuple(c) for c in claimed[0] + claimed[1] + claimed[2])
    assert [s for s, _ in slots] == ids[:3]  # the yearly cron was not due; nobody claimed a slot twice

    discord = services.discord
    deadline = time.monotonic() + 30
    while len(discord.posts) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _dispatch_here(now) == []  # a late third dispatcher finds nothing due
    time.sleep(0.5)
    messages = [p for p in discord.posts if p["path"].endswith("/messages")]  # (and a refused webhook each)
    assert sorted(p["path"] for p in messages) == [f"/api/v10/channels/{500 + i}/messages" for i in range(3)]
    for p in messages:
        assert p["auth"] == "Bot test-token" and p["body"]["allowed_mentions"] == {"parse": []}
        assert p["body"]["content"].startswith("**Alice**\nThe Queen") and len(p["body"]["content"]) <= 2000
    with db.session_scope() as session:
        for schedule_id in ids[:3]:
            (post,) = posts_of(session, schedule_id)
            assert post.status is PostStatus.POSTED and post.message_id and post.generation_id
        assert posts_of(session, ids[3]) == []


def _dispatch_here(now: datetime) -> list:
    from worker.schedules import dispatch

    return [list(c) for c in dispatch(now)]


def _due_schedules(n: int, minute_ago: datetime, channel: int = 900) -> list[int]:
    with db.session_scope() as session:
        alice = get_persona(session, "alice", None)
        ids = [create_schedule(session, alice, guild_id=7, channel_id=channel + i, interval_seconds=60,
                               prompt="The Queen", params={"max_tokens": 30}).id for i in range(n)]
        session.execute(update(Schedule).where(Schedule.id.in_(ids)).values(created_at=minute_ago))
    return ids


def test_schedules_due_together_are_spread_out(services, monkeypatch):
    """90 schedules due in one minute at 2 posts a second, claimed 25 a statement: their posts start 0.5 s apart
    over 45 s (each batch where the last ended), each slot once; 10 more due a moment later queue after them."""
    import redis

    from core.ratelimit import PREFIX
    from worker import app as worker_app
    from worker.schedules import dispatch

    sent: list[tuple[int, float]] = []  # (schedule id, when its post is to start)
    monkeypatch.setattr(worker_app, "enqueue", lambda name, schedule_id, slot, countdown: sent.append(
        (schedule_id, time.time() + countdown)))
    cursor = redis.Redis.from_url(services.env["IMPROBABLE_BROKER_URL"])
    cursor.delete(f"{PREFIX}cursor:schedules")  # a free timeline
    now = datetime.now(UTC)
    ids = _due_schedules(90, now - timedelta(minutes=5))
    created = list(ids)
    try:
        with configured({"IMPROBABLE_SCHEDULE_POSTS_PER_SECOND": "2"}):
            claimed = [s for s, _ in dispatch(now, batch=25) if s in ids]
            assert not {s for s, _ in dispatch(now, batch=25)} & set(ids)  # claimed once
            more = _due_schedules(10, now - timedelta(minutes=5))
            created += more
            later = [s for s, _ in dispatch(now, batch=25) if s in more]
        assert sorted(claimed) == ids and sorted(later) == more
        starts = [at for s, at in sent if s in ids]
        steps = [b - a for a, b in zip(starts, starts[1:])]
        assert starts[0] - time.time() < 1 and all(abs(step - 0.5) < 0.02 for step in steps), steps
        assert 44 < starts[-1] - starts[0] < 45.1  # 90 posts over 45 s, not all at once
        queued = [at for s, at in sent if s in more]
        assert abs(queued[0] - starts[-1] - 0.5) < 0.1  # the next burst starts where this one ends
    finally:
        cursor.delete(f"{PREFIX}cursor:schedules")
        with db.session_scope() as session:
            session.execute(update(Schedule).where(Schedule.id.in_(created)).values(enabled=False))


def test_two_posts_making_a_channels_webhook_at_once_keep_one(services):
    """Two posts of one persona in a new channel create its webhook at the same moment: the second to record
    it finds the first's row (a unique one per channel and persona), uses that webhook and deletes its own,
    instead of failing after its message went out (which left its slot claimed but never recorded)."""
    from db.webhooks import Hook, find, remember
    from tests.bot.fake_discord import FakeDiscord as Discord
    from worker.schedules import _create_webhook

    fake = Discord().start()
    channel = fake.add_channel(fake.guild_id, "race")
    fake.grant_webhooks(channel)
    first = Hook(2**60 + 1, "first-token", "digest")
    recorded, created = threading.Event(), {}
    try:
        with configured({"IMPROBABLE_DISCORD_API_BASE": fake.api_base, "IMPROBABLE_DISCORD_TOKEN": "t"}):
            def the_first() -> None:  # records its webhook and commits a moment later
                with db.session_scope() as session:
                    remember(session, guild_id=fake.guild_id, channel_id=channel, persona_slug="alice", hook=first)
                    session.flush()
                    recorded.set()
                    time.sleep(0.5)

            thread = threading.Thread(target=the_first)
            thread.start()
            recorded.wait(10)
            with db.session_scope() as session:
                created["hook"] = _create_webhook(session, channel, fake.guild_id, "alice", "Alice")
            thread.join(10)
            with db.session_scope() as session:
                assert find(session, channel, "alice") == first
        assert created["hook"] == first
        assert fake.webhooks_in(channel) == []  # the second one's own webhook, deleted again
        assert [r.method for r in fake.sent(path_part="/webhooks")] == ["POST", "DELETE"]
    finally:
        fake.stop()


def test_a_big_tick_fans_out_to_the_workers(services, checkpoint_id, generate_worker):
    """60 due slots, 25 a batch: beat's tick claims the first batch itself and hands the other two to the
    generate workers (improbable.dispatch_batch), which claim them and enqueue their posts: 60 posts, one each."""
    import redis

    from core.ratelimit import PREFIX
    from db.models import SchedulePost
    from tests.environment import wait_until
    from worker.schedules import dispatch

    redis.Redis.from_url(services.env["IMPROBABLE_BROKER_URL"]).delete(f"{PREFIX}cursor:schedules")
    now = datetime.now(UTC)
    ids = _due_schedules(60, now - timedelta(minutes=5), channel=2000)
    try:
        here = [s for s, _ in dispatch(now, batch=25, fan_out=True) if s in ids]
        assert 0 < len(here) <= 25  # (earlier tests' schedules may be due too, and come first)

        def posted() -> int:
            with db.session_scope() as session:
                return session.query(SchedulePost).filter(SchedulePost.schedule_id.in_(ids),
                                                          SchedulePost.status == PostStatus.POSTED).count()

        wait_until(lambda: posted() == 60, 60, "60 scheduled posts")
        assert dispatch(now, batch=25, fan_out=True) == []  # nothing left to claim
        time.sleep(0.5)
        messages = [p["path"] for p in services.discord.posts if p["path"].endswith("/messages")
                    and 2000 <= int(p["path"].split("/")[-2]) < 2060]
        assert sorted(messages) == [f"/api/v10/channels/{2000 + i}/messages" for i in range(60)]  # each once
    finally:
        with db.session_scope() as session:
            session.execute(update(Schedule).where(Schedule.id.in_(ids)).values(enabled=False))
