"""Generate jobs under faults, with real Redis, PostgreSQL and `celery worker` processes: a worker killed
(kill -9) mid-job, the broker restarted with jobs running, and a job delivered twice. Each test prints its
line of the fault table (sent, answered, lost, duplicated rows, slowest answer)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest
from sqlalchemy import func, select

import db
from db.models import Generation
from tests.worker.support import generate_request
from worker.app import app, configure, enqueue

from .conftest import report

pytestmark = pytest.mark.slow
ANSWER_WITHIN = 60.0
REDIS_DOWN_SECONDS = 30.0  # the longest transient outage


def _rows(user_id: int) -> int:
    with db.session_scope() as session:
        return session.scalar(select(func.count()).select_from(Generation).where(Generation.user_id == user_id))


def _wait_all(pending: list, since: float, limit: float) -> tuple[list, float]:
    """Results of the jobs that answered within `limit` seconds of `since` (None for the others) and the
    slowest answer's delay."""
    results, slowest = [None] * len(pending), 0.0
    while time.monotonic() < since + limit and any(r is None for r in results):
        for i, p in enumerate(pending):
            if results[i] is None and p.state == "SUCCESS":
                results[i], slowest = p.result, max(slowest, time.monotonic() - since)
        time.sleep(0.1)
    return results, slowest


def _started_on(pending: list, hostname: str, timeout: float = 60.0) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = [p for p in pending if p.state in ("STARTED", "PROGRESS")]
        if len(running) == len(pending):
            return [p for p in running if (p._get_task_meta().get("worker") or "") == hostname
                    or (isinstance(p.info, dict) and p.info.get("hostname") == hostname)]
        time.sleep(0.05)
    raise AssertionError(f"only {len(running)} of {len(pending)} jobs started in {timeout} s")


def test_worker_killed_mid_job_every_job_answered_once(fault_checkpoint, start_worker):
    """kill -9 of a worker with jobs running while another is alive: every job is answered by the survivor
    within 60 s (the visibility timeout is the production 2 h: the lease reaper re-publishes them), and
    each has exactly one `generations` row."""
    survivor = start_worker("survivor", 16).wait_ready()
    victim = start_worker("victim", 16).wait_ready()
    user = 5150
    pending = [enqueue("improbable.generate", generate_request(fault_checkpoint, seed=300 + i, max_tokens=6000,
                                                                 user_id=user)) for i in range(10)]
    on_victim = _started_on(pending, victim.hostname)
    assert on_victim, "no job started on the victim"
    victim.kill()
    killed = time.monotonic()
    results, slowest = _wait_all(pending, killed, ANSWER_WITHIN)
    answered = [r for r in results if r is not None]
    rows = _rows(user)
    report(f"worker kill -9 ({len(on_victim)} of 10 jobs on the victim)", len(pending), len(answered), rows,
           slowest)
    assert len(answered) == len(pending), f"lost jobs:\n{survivor.log()}"
    assert {r["worker"] for r in answered} == {survivor.hostname}
    assert [r["seed"] for r in answered] == [300 + i for i in range(10)]
    assert len({r["generation_id"] for r in answered}) == 10 and rows == 10


def test_duplicate_delivery_one_row_one_answer(fault_checkpoint, start_worker):
    """The same job delivered twice (two messages with one task id, as a redelivery or a re-published lease
    makes): both runs answer with the same generation, and there is one row."""
    start_worker("twice", 16).wait_ready()
    user = 5152
    task_id = uuid.uuid4().hex
    request = generate_request(fault_checkpoint, seed=None, max_tokens=2000, user_id=user)  # unseeded: texts differ
    first = app.send_task("improbable.generate", args=[request], task_id=task_id)
    app.send_task("improbable.generate", args=[request], task_id=task_id)
    started = time.monotonic()
    result = first.get(timeout=ANSWER_WITHIN)
    time.sleep(1.0)
    deadline = time.monotonic() + ANSWER_WITHIN  # the second run ends too; it must not have added a row
    while time.monotonic() < deadline and _rows(user) == 1 and first.state != "SUCCESS":
        time.sleep(0.2)
    second = enqueue("improbable.generate", {**request, "request_id": task_id}).get(timeout=ANSWER_WITHIN)
    rows = _rows(user)
    report("duplicate delivery (same task id twice, then the same request id again)", 1, 1, rows,
           time.monotonic() - started)
    assert rows == 1
    assert second["generation_id"] == result["generation_id"] and second["text"] == result["text"]
    assert second.get("duplicate") is True
    with db.session_scope() as session:
        row = session.scalars(select(Generation).where(Generation.request_id == task_id)).one()
        assert row.output == result["text"]


def test_redis_restart_with_jobs_running_loses_none(fault_checkpoint, start_worker, own_redis):
    """(Last in this suite: this process's pooled connections to the broker die with it.)
    The broker and result store restart (down REDIS_DOWN_SECONDS, append-only file kept) while jobs run: the
    jobs keep computing, partial-text updates that fail are skipped, and every result is stored once Redis is
    back. The bot's job client follows one more job through the outage and gets its answer (not "unavailable",
    though the workers answer "who listens?" only seconds after Redis is back)."""
    from bot.jobs import GENERATE, Jobs

    worker = start_worker("steady", 16).wait_ready()
    user = 5151
    pending = [enqueue("improbable.generate", generate_request(fault_checkpoint, seed=400 + i, max_tokens=6000,
                                                                 user_id=user)) for i in range(6)]
    bot: dict = {}

    def follow_as_the_bot() -> None:
        async def go():
            jobs = Jobs()
            bot["job"] = await jobs.submit(GENERATE, generate_request(fault_checkpoint, seed=499, max_tokens=6000,
                                                                      user_id=user), user_id=user)
            bot["result"] = await jobs.wait(bot["job"], timeout=120)

        try:
            asyncio.run(go())
        except Exception as e:  # noqa: BLE001 - reported below
            bot["error"] = e

    follower = threading.Thread(target=follow_as_the_bot, daemon=True)
    follower.start()
    _started_on(pending, worker.hostname)
    while "job" not in bot and "error" not in bot:
        time.sleep(0.05)
    own_redis.restart(down_seconds=REDIS_DOWN_SECONDS)
    back = time.monotonic()
    configure()  # (this test process's pooled broker connections died with the server)
    results, slowest = _wait_all(pending, back, ANSWER_WITHIN)
    follower.join(ANSWER_WITHIN)
    answered = [r for r in results if r is not None] + ([bot["result"]] if "result" in bot else [])
    rows = _rows(user)
    report(f"redis restart (down {REDIS_DOWN_SECONDS:.0f} s) with 7 jobs running, 1 followed by the bot",
           len(pending) + 1, len(answered), rows, slowest)
    assert "result" in bot, f"the bot lost its job: {bot.get('error')!r}"
    assert len(answered) == len(pending) + 1, f"lost jobs:\n{worker.log()}"
    assert rows == len(pending) + 1
