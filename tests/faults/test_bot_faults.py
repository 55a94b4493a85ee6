"""The bot's job client (bot/jobs.py) against real workers that die: the user is told plainly within seconds
instead of watching frozen partial text; and a scheduled post delivered twice is one Discord message."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest
import redis
from sqlalchemy import func, select

import db
from db.models import Generation
from db.personas import get_persona
from db.schedules import claim_slot, create_schedule, posts_of
from tests.worker.support import generate_request
from worker.app import app
from worker.serve.leases import LEASES

from .conftest import report

pytestmark = pytest.mark.slow


def test_the_bot_notices_a_dead_job_and_says_so(fault_checkpoint, start_worker, own_redis, monkeypatch):
    from bot import jobs as bot_jobs

    lonely = start_worker("lonely", 4).wait_ready()
    jobs = bot_jobs.Jobs()
    # production: a notice after 12 s of silence, the end after 45 s; shortened to keep the suite short (no
    # take-over is wanted here, so the order Liveness checks at start-up is not needed)
    jobs.liveness = jobs.liveness.model_copy(update={"stall_notice": 3.0, "stall": 8.0})
    seen: list[tuple[str, float]] = []

    async def follow():
        job = await jobs.submit(bot_jobs.GENERATE, generate_request(fault_checkpoint, seed=7, max_tokens=20000,
                                                                      user_id=5153), user_id=5153)
        killed: list[float] = []

        async def progress(state: str, meta: dict) -> None:
            if state == "PROGRESS" and not killed:
                await asyncio.to_thread(lonely.kill)  # the only worker dies mid-job
                killed.append(time.monotonic())
            seen.append((state, time.monotonic() - (killed[0] if killed else time.monotonic())))

        with pytest.raises(bot_jobs.JobStalled) as stalled:
            await jobs.wait(job, progress, timeout=120)
        return job, stalled.value.message, time.monotonic() - killed[0]

    job, message, after = asyncio.run(follow())
    redis.Redis.from_url(own_redis.url).hdel(LEASES, job.id)  # no later worker should take it over
    print(f"\nFAULT bot following a job whose only worker died: notice after {seen_notice(seen):.1f} s, "
          f"the user told it ended after {after:.1f} s (nothing left waiting)")
    notices = [t for state, t in seen if state == "STALLED"]
    assert notices and 2.5 < notices[0] < 8.0, seen
    assert "stopped answering" in message and "Regenerate" in message
    assert 7.5 < after < 15.0, f"the bot took {after:.1f} s to give up"


def test_a_job_whose_message_was_lost_is_sent_again(fault_checkpoint, start_worker, own_redis):
    """Redis hands a message to the worker whose BRPOP asks for it: a worker killed before reading it takes it
    along, and the job is nowhere (no lease, no state, not in the queue; bench/speed/faults_under_load.py
    lost 2 of 2,000 that way). The bot looks for its PENDING jobs, finds that one nowhere twice and sends it
    again: one answer, one row; the jobs that were not lost are not sent again."""
    from bot import jobs as bot_jobs

    start_worker("finder", 8).wait_ready()

    class LosingTheFirst(bot_jobs.Jobs):
        sends = 0

        def _send(self, name, args, task_id=None):
            self.sends += 1
            if self.sends == 1:  # into a queue that no worker consumes: as good as lost
                return self.app.send_task(name, args=list(args), task_id=task_id, queue="lost-on-the-way")
            return super()._send(name, args, task_id)

    jobs = LosingTheFirst()
    jobs.lost_check = 1.0  # production: 5 s
    user = 5154

    async def go():
        submitted = [await jobs.submit(bot_jobs.GENERATE, generate_request(
            fault_checkpoint, seed=20 + i, max_tokens=3000, user_id=user), user_id=user) for i in range(6)]
        return submitted, await asyncio.gather(*(jobs.wait(job, timeout=40) for job in submitted))

    started = time.monotonic()
    submitted, results = asyncio.run(go())
    redis.Redis.from_url(own_redis.url).delete("lost-on-the-way")
    with db.session_scope() as session:
        rows = session.scalar(select(func.count()).select_from(Generation).where(Generation.user_id == user))
    report("a message lost on its way to a worker (with 5 others)", 6, len(results), rows, time.monotonic() - started)
    assert [job.resent for job in submitted] == [1, 0, 0, 0, 0, 0] and jobs.sends == 7
    assert all(r["text"] for r in results) and rows == 6


def seen_notice(seen: list) -> float:
    return next((t for state, t in seen if state == "STALLED"), float("nan"))


def test_a_scheduled_post_delivered_twice_is_one_message(fault_checkpoint, fault_services, start_worker):
    start_worker("poster", 8).wait_ready()
    slot = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    with db.session_scope() as session:
        alice = get_persona(session, "alice", None)
        schedule = create_schedule(session, alice, guild_id=1, channel_id=777, prompt="The Queen",
                                   interval_seconds=3600)
        schedule_id = schedule.id
    with db.session_scope() as session:
        assert claim_slot(session, schedule_id, slot)
    before = len(fault_services.discord.posts)
    started = time.monotonic()
    twice = [app.send_task("improbable.post_scheduled", args=[schedule_id, slot.isoformat()], task_id=tid)
             for tid in ("dup-post-1", "dup-post-2")]
    results = [r.get(timeout=60) for r in twice]
    # messages posted (the worker first asks for a webhook to post as the persona: not a post)
    posts = [p for p in fault_services.discord.posts[before:] if p["path"].endswith("/messages")]
    report("scheduled post delivered twice", 1, sum(r["status"] == "posted" for r in results) and 1, len(posts),
           time.monotonic() - started)
    assert len(posts) == 1 and sorted(bool(r.get("duplicate")) for r in results) == [False, True]
    assert posts[0]["body"]["enforce_nonce"] is True
    with db.session_scope() as session:
        (row,) = posts_of(session, schedule_id)
        assert row.status.value == "posted" and row.generation_id is not None
