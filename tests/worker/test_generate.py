"""Generate jobs through real Redis and real `celery worker` processes: round trip with partial text,
64 concurrent requests stepped in shared batches, and a worker killed mid-job."""

from __future__ import annotations

import re
import time

from sqlalchemy import func, select

import db
from db.models import Generation
from tests.environment import wait_until, within
from worker.app import enqueue

from .support import generate_request

TIMEOUT = 60


def test_round_trip_with_partial_text(generate_worker, checkpoint_id):
    states: list[tuple[str, dict]] = []
    request = generate_request(checkpoint_id, seed=5, max_tokens=3000, interaction_id=99, reply_to=98)
    result = enqueue("improbable.generate", request).get(timeout=TIMEOUT, on_message=lambda m: states.append(
        (m["status"], m["result"])))
    assert result["tokens"] == 3000 and result["finish_reason"] == "length" and result["seed"] == 5
    assert result["full_text"] == "Alice was" + result["text"]
    assert result["worker"] == generate_worker.hostname and result["checkpoint_id"] == checkpoint_id
    assert (result["interaction_id"], result["reply_to"], result["persona"]) == (99, 98, "alice")
    partial = [meta["text"] for status, meta in states if status == "PROGRESS"]
    assert partial, f"no partial text was published: {states}"
    assert all(result["text"].startswith(p) for p in partial) and len(partial[-1]) < len(result["text"])
    with db.session_scope() as session:
        gen = session.get(Generation, result["generation_id"])
        assert gen.output == result["text"] and gen.seed == 5 and gen.checkpoint_id == checkpoint_id
        assert gen.params["max_tokens"] == 3000 and gen.interaction_id == 99

    again = enqueue("improbable.generate", request).get(timeout=TIMEOUT)  # the seed fixes the text
    assert again["text"] == result["text"] and again["generation_id"] != result["generation_id"]


def test_a_real_worker_answers_a_generate_request_with_a_generate_result(generate_worker, checkpoint_id):
    from core.contracts import GenerateRequest, GenerateResult
    from worker.tasks import generate_task

    request = GenerateRequest(checkpoint_id=checkpoint_id, persona="alice", prompt="Alice",
                              params={"max_tokens": 40, "seed": 3}, guild_id=7)
    answer = generate_task.apply_async(args=[request])  # Celery's pydantic=True dumps the model
    result = GenerateResult.model_validate(answer.get(timeout=TIMEOUT))
    assert result.tokens == 40 and result.seed == 3 and result.guild_id == 7 and result.persona == "alice"
    assert result.full_text.startswith("Alice") and result.generation_id is not None
    assert result.worker == generate_worker.hostname and 0 < result.probability.mean <= 1


def test_a_forged_request_fails_at_once_with_what_is_wrong(generate_worker, checkpoint_id):
    r = enqueue("improbable.generate", {"checkpoint_id": checkpoint_id, "params": {"top_p": 7}})
    try:
        r.get(timeout=TIMEOUT)
    except Exception as e:  # noqa: BLE001 - the task's error comes back re-raised
        assert "top_p" in str(e)
    assert r.state == "FAILURE" and r.result is not None


def test_bad_request_fails_without_retry(generate_worker):
    from celery.exceptions import TimeoutError as CeleryTimeout

    r = enqueue("improbable.generate", generate_request(10**6, seed=1))
    try:
        r.get(timeout=TIMEOUT)
    except CeleryTimeout:
        raise
    except Exception as e:  # noqa: BLE001 - the task's error comes back re-raised
        assert "no checkpoint 1000000" in str(e)
    assert r.state == "FAILURE"


def test_64_concurrent_requests_share_batches(generate_worker, checkpoint_id):
    requests = [generate_request(checkpoint_id, seed=1000 + i, max_tokens=280, prompt=f"Alice {i}")
                for i in range(64)]
    started = time.monotonic()
    pending = [enqueue("improbable.generate", r) for r in requests]
    results = [p.get(timeout=TIMEOUT) for p in pending]
    elapsed = time.monotonic() - started
    assert len(results) == 64 and all(r["tokens"] == 280 for r in results)
    peaks = sorted(r["batch_peak"] for r in results)
    assert peaks[-1] >= 16, f"requests were not batched together: peaks {peaks}"
    assert sum(p > 1 for p in peaks) >= 48, peaks
    # A request's text does not depend on who shared its batch: alone, it comes out the same.
    alone = enqueue("improbable.generate", requests[7]).get(timeout=TIMEOUT)
    assert alone["text"] == results[7]["text"] and alone["batch_peak"] <= results[7]["batch_peak"]
    assert elapsed < within(30)


def test_killed_worker_jobs_are_redelivered_to_the_survivor(generate_worker, start_worker, checkpoint_id):
    """kill -9 of a worker with jobs in flight: after the visibility timeout Redis hands them to the other
    worker; every job is answered, and each exactly once (one generation row per job)."""
    victim = start_worker("victim", "generate", "threads", 16).wait_ready()
    user = 424242
    requests = [generate_request(checkpoint_id, seed=2000 + i, max_tokens=2000, user_id=user) for i in range(12)]
    pending = [enqueue("improbable.generate", r) for r in requests]

    # Kill once every job has been received (the queue is empty): kombu's Redis transport pops a message
    # and then records it as unacknowledged, so a kill between the two would lose it (a known limit).
    deadline = time.monotonic() + TIMEOUT
    received: list = []
    while len(received) < len(pending) and time.monotonic() < deadline:
        received = [p for p in pending if p.state in ("STARTED", "PROGRESS", "SUCCESS")]
        time.sleep(0.02)
    on_victim = [p for p in received if p.state != "SUCCESS" and _host(p) == victim.hostname]
    assert len(received) == len(pending) and on_victim, f"jobs did not start on both workers:\n{victim.log()}"
    victim.kill()

    results = [p.get(timeout=TIMEOUT) for p in pending]
    assert {r["worker"] for r in results} == {generate_worker.hostname}  # the victim finished none
    assert [r["seed"] for r in results] == [2000 + i for i in range(12)]
    assert len({r["generation_id"] for r in results}) == 12
    with db.session_scope() as session:
        rows = session.scalar(select(func.count()).select_from(Generation).where(Generation.user_id == user))
    assert rows == 12, f"{rows} generation rows for 12 jobs"


def _host(result) -> str | None:
    info = result.info
    if isinstance(info, dict) and "hostname" in info:
        return info["hostname"]
    return (result._get_task_meta() or {}).get("worker")  # result_extended records the worker


def test_batch_exceeds_the_workers_celery_threads(start_worker, checkpoint_id):
    """A worker with 4 Celery threads steps 40 concurrent jobs in one batch: a task hands its request to the
    engine and returns, so the batch is not bounded by the threads (int8 on: the single stream at the end
    of the batch steps with int8 weights, and the jobs still answer in full)."""
    worker = start_worker("narrow", "narrow", "threads", 4, IMPROBABLE_GENERATE_INT8="on").wait_ready()
    user = 777001
    pending = [enqueue("improbable.generate", generate_request(checkpoint_id, seed=3000 + i, max_tokens=1500,
                                                               prompt=f"Alice {i}", user_id=user), queue="narrow")
               for i in range(40)]
    results = [p.get(timeout=TIMEOUT) for p in pending]
    assert {r["worker"] for r in results} == {worker.hostname}
    assert all(r["tokens"] == 1500 for r in results) and [r["seed"] for r in results] == [3000 + i for i in range(40)]
    assert max(r["batch_peak"] for r in results) >= 20, sorted(r["batch_peak"] for r in results)
    assert len({r["generation_id"] for r in results}) == 40 and all(p.state == "SUCCESS" for p in pending)
    with db.session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Generation).where(Generation.user_id == user)) == 40


def test_a_worker_holds_at_most_generate_max_streams_jobs(start_worker, checkpoint_id):
    """generate_max_streams bounds the engine's batch: with 3 slots and 8 Celery threads, 12 concurrent jobs
    are stepped at most 3 at a time, the rest wait for a slot, and every one is answered in full."""
    start_worker("capped", "capped", "threads", 8, IMPROBABLE_GENERATE_MAX_STREAMS="3").wait_ready()
    pending = [enqueue("improbable.generate", generate_request(checkpoint_id, seed=4000 + i, max_tokens=600,
                                                               prompt=f"Alice {i}"), queue="capped")
               for i in range(12)]
    results = [p.get(timeout=TIMEOUT) for p in pending]
    assert all(r["tokens"] == 600 for r in results)
    peaks = sorted(r["batch_peak"] for r in results)
    assert peaks[-1] == 3, peaks  # full, never over


def test_engine_side_failure_reaches_the_caller_and_frees_the_lease(start_worker, checkpoint_id):
    """A job that fails after its task handed it over (here: past its deadline) is stored as FAILURE with the
    message the task used to raise, its lease is released, and the engine stops computing it."""
    import redis

    from worker.serve.leases import LEASES

    worker = start_worker("hasty", "hasty", "threads", 2, IMPROBABLE_GENERATE_TIMEOUT="1").wait_ready()
    r = enqueue("improbable.generate", generate_request(checkpoint_id, seed=9, max_tokens=20000), queue="hasty")
    try:
        r.get(timeout=TIMEOUT)
        raise AssertionError("a 20,000-token job finished within a 1 s deadline")
    except TimeoutError as e:  # the task's error, re-raised from the stored FAILURE
        assert "generation took more than 1 s" in str(e)
    assert r.state == "FAILURE"
    client = redis.Redis.from_url(services_env("IMPROBABLE_BROKER_URL"), decode_responses=True)
    deadline = time.monotonic() + 5
    while client.hexists(LEASES, r.id) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not client.hexists(LEASES, r.id)
    deadline = time.monotonic() + 10  # (the engine logs it at its next step boundary, after the answer)
    while not (stopped := re.search(r"stopped an abandoned stream after (\d+) tokens",
                                    log := worker.log_path.read_text(errors="replace"))) \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stopped and int(stopped.group(1)) < 20000, log[-3000:]


def test_generated_text_stays_out_of_the_info_log(start_worker, checkpoint_id):
    """At INFO the worker's log never shows a prompt or a generated text, not even in Celery's own
    "Task ... succeeded in ...: <result>" line (a re-published job answers with its stored result)."""
    from worker.app import app

    worker = start_worker("quiet", "quiet", "threads", 2).wait_ready()
    request = generate_request(checkpoint_id, seed=11, max_tokens=400, prompt="Alice quietly whispered")
    first = enqueue("improbable.generate", request, queue="quiet")
    result = first.get(timeout=TIMEOUT)
    again = app.send_task("improbable.generate", args=[request], task_id=first.id, queue="quiet",
                          headers={"republished": True}).get(timeout=TIMEOUT)
    assert again["text"] == result["text"]
    # Celery's line is there (written after the result is stored)...
    log = wait_until(lambda: (text := worker.log_path.read_text(errors="replace")).count("succeeded in") >= 1
                     and text, 10, "Celery's 'succeeded in' lines")
    assert result["text"][:40] not in log and "quietly whispered" not in log  # ...without the text


def services_env(name: str) -> str:
    import os

    return os.environ[name]
