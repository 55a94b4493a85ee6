"""Followed jobs' states read together (bot.jobs.TaskStates) from a real Redis result backend."""

from __future__ import annotations

import asyncio

from bot.jobs import TaskStates
from core.settings import Settings

from .conftest import free_port, start_redis


def test_many_asks_are_one_read_with_each_jobs_own_state(tmp_path):
    from worker.app import make_app

    proc, url = start_redis(tmp_path, "redis-states")
    try:
        backend = make_app(Settings(broker_url=url, _env_file=None)).backend
        backend.store_result("done", {"text": "Alice"}, "SUCCESS")
        backend.store_result("failed", ValueError("diverged"), "FAILURE")
        states = TaskStates(backend)
        reads = []
        read = states.read
        states.read = lambda ids: reads.append(sorted(ids)) or read(ids)

        async def ask():
            return await asyncio.gather(*(states.get(t) for t in ("done", "failed", "queued") * 20))

        metas = asyncio.run(ask())
        assert reads == [["done", "failed", "queued"]]  # 60 asks, one read
        assert [m["status"] for m in metas[:3]] == ["SUCCESS", "FAILURE", "PENDING"]
        assert metas[0]["result"] == {"text": "Alice"} and metas[2]["result"] is None
        assert metas[3:6] == metas[:3]
    finally:
        proc.stop()


def test_an_unchanged_state_is_not_decoded_again(tmp_path):
    from worker.app import make_app

    proc, url = start_redis(tmp_path, "redis-states")
    try:
        backend = make_app(Settings(broker_url=url, _env_file=None)).backend
        states = TaskStates(backend)
        decoded = []
        decode = backend.decode_result
        backend.decode_result = lambda value: decoded.append(value) or decode(value)

        async def ask(task_id):
            return await states.get(task_id)

        def decodes(task_id: str, times: int) -> tuple[list[dict], int]:
            """The metas of `times` reads, and how many values were decoded for them."""
            before = len(decoded)  # (storing a result reads the stored one too)
            metas = [asyncio.run(ask(task_id)) for _ in range(times)]
            return metas, len(decoded) - before

        backend.store_result("running", {"text": "Al"}, "PROGRESS")
        metas, n = decodes("running", 3)
        assert n == 1 and [m["result"] for m in metas] == [{"text": "Al"}] * 3
        backend.store_result("running", {"text": "Alice"}, "PROGRESS")  # a new partial text: read anew
        metas, n = decodes("running", 2)
        assert n == 1 and metas[-1]["result"] == {"text": "Alice"}
        backend.store_result("running", {"text": "Alice was"}, "SUCCESS")
        metas, n = decodes("running", 2)
        assert n == 2 and [m["status"] for m in metas] == ["SUCCESS"] * 2  # a final state is its reader's
    finally:
        proc.stop()


def test_a_backend_that_does_not_answer_fails_every_ask():
    from worker.app import make_app

    backend = make_app(Settings(broker_url=f"redis://127.0.0.1:{free_port()}/0", _env_file=None)).backend
    states = TaskStates(backend)

    async def ask():
        return await asyncio.gather(states.get("a"), states.get("b"), return_exceptions=True)

    results = asyncio.run(ask())
    assert all(isinstance(r, Exception) for r in results)
