"""The bot's job client (bot/jobs.py) against a dead broker, and a live broker with no worker."""

from __future__ import annotations

import asyncio
import time

import pytest

from bot.jobs import GENERATE, Jobs, JobTimeout, Unavailable
from core.settings import Settings

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
    assert time.monotonic() - start < 2.5
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
            assert time.monotonic() - start < 3.0
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
