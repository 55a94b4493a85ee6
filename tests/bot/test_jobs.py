"""The bot's job client (bot/jobs.py) against a dead broker, and a live broker with no worker."""

from __future__ import annotations

import asyncio
import time

import pytest

from bot.jobs import GENERATE, Jobs, JobTimeout, Unavailable
from core.settings import Settings
from tests.environment import within

from .conftest import free_port, start_redis


def jobs_for(url: str, **settings) -> Jobs:
    from worker.app import make_app

    s = Settings(broker_url=url, _env_file=None, **settings)
    return Jobs(s, app=make_app(s))


def test_a_dead_broker_fails_fast():
    jobs = jobs_for(f"redis://127.0.0.1:{free_port()}/0")
    start = time.monotonic()
    with pytest.raises(Unavailable, match="unavailable"):
        asyncio.run(jobs.submit(GENERATE, {"checkpoint_id": 1}, user_id=1))
    assert time.monotonic() - start < within(2.5)
    assert jobs.of_user(1) == []


def test_no_worker_listening_fails_fast(tmp_path):
    proc, url = start_redis(tmp_path, "redis-no-worker")
    try:
        jobs = jobs_for(url, bot_worker_check_after=0.3)

        async def go():
            job = await jobs.submit(GENERATE, {"checkpoint_id": 1}, user_id=7, label="alice: hi")
            assert jobs.in_flight(7) == 1 and jobs.position(job) == 1
            second = await jobs.submit(GENERATE, {"checkpoint_id": 1}, user_id=8)
            assert jobs.position(second) == 2
            seen = []

            async def progress(state, meta):
                seen.append((state, meta))

            start = time.monotonic()
            with pytest.raises(Unavailable):
                await jobs.wait(job, progress)
            assert time.monotonic() - start < within(3.0)
            assert seen[0] == ("PENDING", {"position": 1})
            assert jobs.in_flight(7) == 0 and jobs.position(second) == 1
            await jobs.cancel(second)
            assert jobs.of_user(8) == []

        asyncio.run(go())
        patient = jobs_for(url, bot_worker_check_after=60)  # (a worker would be asked about after 60 s)

        async def timeout():
            job = await patient.submit(GENERATE, {"checkpoint_id": 1}, user_id=7)
            with pytest.raises(JobTimeout, match="Timed out"):
                await patient.wait(job, timeout=0.5)

        asyncio.run(timeout())
    finally:
        proc.stop()


def test_no_answer_just_after_a_redis_outage_is_not_taken_for_no_worker(tmp_path, monkeypatch):
    """Redis restarts while a job waits in its queue. Workers reconnect seconds after it is back, and until
    then nobody answers "who consumes this queue?": the bot waits `Liveness.reconnect` after it last found Redis
    away before it says the generator is unavailable (it used to say so at once, and the job then ran unseen)."""
    proc, url = start_redis(tmp_path, "redis-restarting")
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    restarted = []
    try:
        jobs = jobs_for(url, bot_worker_check_after=1.5)
        jobs.liveness = jobs.liveness.model_copy(update={"reconnect": 8.0})

        async def go() -> float:
            job = await jobs.submit(GENERATE, {"checkpoint_id": 1}, user_id=7)
            waiting = asyncio.create_task(jobs.wait(job, timeout=60))
            await asyncio.to_thread(proc.stop)
            await asyncio.sleep(2.0)
            restarted.append(await asyncio.to_thread(start_redis, tmp_path, "redis-restarted", port))
            back = time.monotonic()
            with pytest.raises(Unavailable, match="unavailable"):
                await waiting
            return time.monotonic() - back

        told_after = asyncio.run(go())
        # not at once (without the window: ~2 s), not never; the last failed poll may precede the restart by ~1 s
        assert 6.0 <= told_after <= 14.0, told_after
    finally:
        proc.stop()
        for again, _ in restarted:
            again.stop()
