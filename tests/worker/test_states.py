"""The states that the engine's side stores for its jobs (worker/serve/states.py): as Celery's own
store_result writes them, never over a SUCCESS, and a final state waited out through a Redis outage for the
configured `result_retry` (no longer: the bot stops waiting at `Liveness.outage`). The outage tests stop a
redis-server of their own on a spare port; the shared Redis is never stopped."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.environment import within
from tests.faults.conftest import OwnRedis

JOBS = 32  # finished together while Redis is away: 8 per writer thread, as 256 jobs would give 64


def _request():
    from celery.app.task import Context

    return Context(task="improbable.generate", args=[{"prompt": "Alice"}], kwargs={}, hostname="w@test",
                   retries=0, delivery_info={"routing_key": "generate"})


def _app(redis_url: str):
    from core.settings import get_settings
    from worker.app import make_app

    return make_app(get_settings().model_copy(update={"broker_url": redis_url, "result_backend": redis_url}))


def test_states_are_stored_as_celery_stores_them_and_never_over_a_success(services):
    from worker.app import app
    from worker.serve.states import States

    backend, request = app.backend, _request()
    states = States(backend, retry=5.0)
    done, ours, celerys = ({s: f"states-test-{s}-{uuid.uuid4().hex}" for s in ("PROGRESS", "SUCCESS", "FAILURE")}
                           for _ in range(3))
    backend.store_result(done["SUCCESS"], {"text": "the whole text"}, "SUCCESS", request=request)
    states.partial([(done["SUCCESS"], {"text": "so"}, request), (ours["PROGRESS"], {"text": "so far"}, request)])
    states.final([(done["SUCCESS"], "FAILURE", RuntimeError("late"), request),
                  (ours["SUCCESS"], "SUCCESS", {"text": "all"}, request),
                  (ours["FAILURE"], "FAILURE", RuntimeError("the sampler failed"), request)], time.monotonic())
    backend.store_result(celerys["PROGRESS"], {"text": "so far"}, "PROGRESS", request=request)  # Celery's own
    backend.store_result(celerys["SUCCESS"], {"text": "all"}, "SUCCESS", request=request)
    backend.mark_as_failure(celerys["FAILURE"], RuntimeError("the sampler failed"), request=request)

    assert backend.get_task_meta(done["SUCCESS"], cache=False)["result"] == {"text": "the whole text"}
    for state in ("PROGRESS", "SUCCESS", "FAILURE"):  # the JSON stored (an exception decodes to a new one)
        mine, theirs = (json.loads(backend.client.get(backend.get_key_for_task(t[state]))) for t in (ours, celerys))
        assert mine["status"] == state and mine["task_id"] == ours[state]
        assert {k: v for k, v in mine.items() if k not in ("task_id", "date_done")} == \
               {k: v for k, v in theirs.items() if k not in ("task_id", "date_done")}
        ttl, expected = backend.client.ttl(backend.get_key_for_task(ours[state])), backend.client.ttl(
            backend.get_key_for_task(theirs["task_id"]))
        assert 0 < ttl and abs(ttl - expected) <= 2


@pytest.fixture
def own_redis(tmp_path):
    redis = OwnRedis(tmp_path)
    redis.start()
    yield redis
    redis.stop()


def test_final_states_ride_out_a_redis_outage_shorter_than_result_retry(own_redis):
    """JOBS results due while Redis is down for `outage` seconds, with result_retry = outage + 3 s: every one
    stored once it is back (none lost), an earlier SUCCESS kept; a partial text fails at once instead of
    holding its writer."""
    import redis

    from worker.serve.states import States

    outage, app, request = 3.0, _app(own_redis.url), _request()
    states = States(app.backend, retry=outage + within(3.0))
    ids = [f"outage-{i}-{uuid.uuid4().hex}" for i in range(JOBS)]
    app.backend.store_result(ids[0], {"text": "first run"}, "SUCCESS", request=request)
    states.partial([(ids[1], {"text": "s"}, request)])  # its script loaded: the restarted Redis has forgotten it
    own_redis.stop()
    down = time.monotonic()
    with ThreadPoolExecutor(4) as writers:
        stored = [writers.submit(states.final, [(task_id, "SUCCESS", {"text": f"job {i}"}, request)], time.monotonic())
                  for i, task_id in enumerate(ids)]
        with pytest.raises(redis.exceptions.ConnectionError):
            states.partial([(ids[1], {"text": "so far"}, request)])
        assert time.monotonic() - down < 1.0, "a partial text waited for the result store"
        time.sleep(outage)
        own_redis.start()
        for future in stored:
            future.result(timeout=within(10))
    check = redis.Redis.from_url(own_redis.url)
    metas = [app.backend.decode(check.get(app.backend.get_key_for_task(t)) or b"null") for t in ids]
    lost = [t for t, meta in zip(ids, metas) if not meta or meta["status"] != "SUCCESS"]
    assert not lost, f"{len(lost)} of {JOBS} results lost in a {outage:.0f} s outage"
    assert metas[0]["result"] == {"text": "first run"} and metas[5]["result"] == {"text": "job 5"}


def test_a_final_state_gives_up_when_result_retry_has_passed(own_redis):
    """Redis away for longer than result_retry: the store gives up then, not after a count of random
    pauses (Celery's own retry: 0 to 52 s), so the worker never stores an answer the bot stopped waiting for."""
    import redis

    from worker.serve.states import States

    retry, app = 2.0, _app(own_redis.url)
    states = States(app.backend, retry=retry)
    own_redis.stop()
    started = time.monotonic()
    with pytest.raises(redis.exceptions.ConnectionError):
        states.final([(uuid.uuid4().hex, "SUCCESS", {"text": "lost"}, _request())], started)
    assert retry <= time.monotonic() - started <= retry + within(2.5)
