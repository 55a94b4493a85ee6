"""The REST budget (core/ratelimit.py): Discord's route buckets, the token bucket shared through the real Redis
by two processes (never more than rate + burst in any second), a 429's Retry-After pausing the other
processes (globally, or only its route), the same arithmetic in-process without Redis, and the shared timeline
that spreads scheduled posts."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import uuid

import pytest

from core.ratelimit import RestBudget, pause_of, route_key, route_kind
from tests.environment import reachable_redis

REDIS_URL = os.environ.get("IMPROBABLE_TEST_RATELIMIT_REDIS_URL", "redis://127.0.0.1:6379/7")
RATE, BURST = 20.0, 4


@pytest.fixture
def prefix():
    """A key prefix of this test's own in the real Redis (tests in parallel never share a bucket); removed."""
    client = reachable_redis(REDIS_URL)
    name = f"test:ratelimit:{uuid.uuid4().hex[:8]}:"
    yield name
    for key in client.scan_iter(match=name + "*"):
        client.delete(key)
    client.close()


def test_route_keys_are_discord_buckets():
    assert route_key("post", "/channels/123/messages") == "POST /channels/123/messages"
    assert route_key("PATCH", "/channels/123/messages/456") == "PATCH /channels/123/messages/{id}"
    assert route_key("PUT", "/channels/1/messages/2/reactions/%F0%9F%91%8D/@me") == \
        "PUT /channels/1/messages/{id}/reactions/{emoji}/@me"
    assert route_key("POST", "/webhooks/9/secret-token?wait=true") == "POST /webhooks/9"  # no token in a key
    assert route_key("DELETE", "/webhooks/9/secret-token/messages/5") == "DELETE /webhooks/9"
    assert route_key("GET", "/guilds/7/members/8") == "GET /guilds/7/members/{id}"
    assert route_key("POST", "/users/@me/channels") == "POST /users/@me/channels"
    assert route_key("POST", "/interactions/1/tok/callback") is None  # outside Discord's global limit
    # an interaction's webhook (the application's own id): edits and follow-ups, outside the global limit too
    assert route_key("PATCH", "/webhooks/77/tok/messages/@original", application_id=77) is None
    assert route_key("POST", "/webhooks/77/tok", application_id=77) is None
    assert route_key("POST", "/webhooks/9/tok", application_id=77) == "POST /webhooks/9"  # a channel webhook
    # metrics label a route by its kind: the major id too goes
    assert route_kind("POST /channels/123/messages") == "POST /channels/{id}/messages"
    assert route_kind("PATCH /webhooks/9") == "PATCH /webhooks/{id}"
    assert route_kind("POST /users/@me/channels") == "POST /users/@me/channels" and route_kind(None) == "-"


def test_what_an_answer_asks_to_hold_back():
    assert pause_of("R", 429, {"Retry-After": "2", "X-RateLimit-Global": "true"}) == (None, 2.0)
    assert pause_of("R", 429, {"Retry-After": "1", "X-RateLimit-Scope": "global",
                               "X-RateLimit-Reset-After": "1.5"}) == (None, 1.5)
    assert pause_of("R", 429, {"Retry-After": "3", "X-RateLimit-Scope": "user"}) == ("R", 3.0)
    assert pause_of("R", 200, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": "0.75"}) == ("R", 0.75)
    assert pause_of("R", 200, {"X-RateLimit-Remaining": "3", "X-RateLimit-Reset-After": "0.75"}) is None
    assert pause_of("R", 403, {}) is None


def _take_for(prefix: str | None, seconds: float, start: float, out) -> None:
    """Take tokens as fast as the budget allows for `seconds` from `start` (time.time()); put their times."""
    budget = RestBudget(RATE, BURST, REDIS_URL if prefix else None, prefix=prefix or "local:")
    times = []
    time.sleep(max(0.0, start - time.time()))
    while time.time() < start + seconds:
        budget.acquire("POST /channels/1/messages")
        times.append(time.time())
    out.put(times)


def _most_in_a_second(times: list[float]) -> int:
    times = sorted(times)
    return max(sum(1 for u in times[i:] if u < t + 1.0) for i, t in enumerate(times))


def test_two_processes_share_the_bucket_through_redis(prefix):
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start = time.time() + 1.5  # both started (spawn imports) before either takes a token
    procs = [ctx.Process(target=_take_for, args=(prefix, 2.0, start, out)) for _ in range(2)]
    for p in procs:
        p.start()
    per_process = [out.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(10)
    times = per_process[0] + per_process[1]
    # every token is counted once, in one bucket: at most rate + burst in any second (1 of slack for the time
    # between a grant and its stamp), and both processes got some
    assert _most_in_a_second(times) <= RATE + BURST + 1, sorted(times)
    assert len(times) <= BURST + RATE * 2.0 + 1
    assert all(len(t) >= 5 for t in per_process), [len(t) for t in per_process]


def test_without_redis_the_bucket_is_the_process_own():
    out: list[list[float]] = []

    class Box:
        def put(self, times):
            out.append(times)

    start = time.time() + 0.1
    threads = [threading.Thread(target=_take_for, args=(None, 1.5, start, Box())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    # (two budget objects: two buckets, as two processes without Redis would have)
    assert all(_most_in_a_second(t) <= RATE + BURST + 1 for t in out)
    shared = RestBudget(RATE, BURST)
    assert [shared.try_take("R") for _ in range(BURST)] == [0.0] * BURST
    assert 0 < shared.try_take("R") <= 1 / RATE
    shared.pause(None, 0.5)
    assert 0.4 < shared.try_take("other") <= 0.5


def test_while_redis_is_unreachable_a_process_keeps_only_its_share():
    # a closed port: every process that shares the bucket falls back to a bucket of its own at a quarter of
    # the rate and burst, so that four of them stay within the budget together
    down = RestBudget(RATE, BURST, "redis://127.0.0.1:1/0", prefix="down:", fallback_share=0.25)
    assert down.try_take("R") == 0.0  # a burst of BURST / 4 = 1
    assert 1 / RATE < down.try_take("R") <= 4 / RATE  # then RATE / 4 a second
    alone = RestBudget(RATE, BURST, fallback_share=0.25)  # no Redis at all: the one process has it all
    assert [alone.try_take("R") for _ in range(BURST)] == [0.0] * BURST


def test_a_429_pauses_the_other_processes(prefix):
    bot, worker = RestBudget(RATE, BURST, REDIS_URL, prefix=prefix), RestBudget(RATE, BURST, REDIS_URL, prefix=prefix)
    messages, webhook = route_key("POST", "/channels/1/messages"), route_key("POST", "/webhooks/2/t")
    # a 429 on one route holds back that route only, everywhere
    assert bot.observe(messages, 429, {"Retry-After": "0.6", "X-RateLimit-Scope": "shared"}) == (messages, 0.6)
    assert 0.4 < worker.try_take(messages) <= 0.6
    assert worker.try_take(webhook) == 0.0
    # a global one holds back every route of every process; the waiter goes once it is over
    bot.observe(webhook, 429, {"Retry-After": "0.8", "X-RateLimit-Global": "true"})
    assert 0.6 < worker.try_take(webhook) <= 0.8
    started = time.monotonic()
    waited = worker.acquire(route_key("GET", "/guilds/3"))
    assert waited >= 0.6 and time.monotonic() - started >= 0.6
    # an exhausted route (remaining 0) is held back for its reset, without any 429
    bot.observe(webhook, 200, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": "0.5"})
    assert worker.try_take(webhook) > 0.3
    with pytest.raises(TimeoutError):
        worker.acquire(webhook, timeout=0.1)
    # rate 0: no bucket (nothing waits for a token), but Discord's pauses are still kept
    unlimited = RestBudget(0, BURST, REDIS_URL, prefix=prefix + "off:")
    assert [unlimited.try_take(messages) for _ in range(3 * BURST)] == [0.0] * (3 * BURST)
    unlimited.observe(messages, 429, {"Retry-After": "0.5", "X-RateLimit-Global": "true"})
    assert 0.3 < unlimited.try_take(webhook) <= 0.5


def test_reserved_starts_queue_after_each_other(prefix):
    one, other = RestBudget(RATE, BURST, REDIS_URL, prefix=prefix), RestBudget(RATE, BURST, REDIS_URL, prefix=prefix)
    assert one.reserve(100, 50.0) < 0.05  # a free timeline: now
    assert 1.9 < other.reserve(10, 50.0) <= 2.0  # after the first 100, at 50 a second
    assert 2.0 < one.reserve(1, 50.0) <= 2.2
    local = RestBudget(RATE, BURST)
    assert local.reserve(20, 10.0) < 0.05 and 1.9 < local.reserve(1, 10.0) <= 2.0


def test_the_metrics_count_429s_and_the_requests_held_back():
    import asyncio

    from prometheus_client import REGISTRY

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    def seen() -> tuple[float, ...]:
        return (value("improbable_discord_rate_limited_total", scope="route", route="POST /channels/{id}/messages"),
                value("improbable_discord_rate_limited_total", scope="global", route="POST /webhooks/{id}"),
                value("improbable_discord_rest_wait_seconds_count"), value("improbable_discord_rest_wait_seconds_sum"))

    budget = RestBudget(RATE, BURST)  # this process's own: the metrics are counted where the answers are seen
    messages, webhook = route_key("POST", "/channels/1/messages"), route_key("POST", "/webhooks/2/t")
    before = seen()
    budget.observe(messages, 429, {"Retry-After": "0.2", "X-RateLimit-Scope": "user"})
    budget.observe(webhook, 429, {"Retry-After": "0.01", "X-RateLimit-Global": "true"})
    budget.observe(messages, 200, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": "0.05"})  # no 429
    assert seen()[:2] == (before[0] + 1, before[1] + 1)
    waited = budget.acquire(messages)  # held back by the route's 429
    assert waited >= 0.15 and seen()[2] == before[2] + 1 and seen()[3] - before[3] == pytest.approx(waited, abs=0.01)
    assert budget.acquire(route_key("GET", "/guilds/3")) == 0.0 and seen()[2] == before[2] + 1  # went at once
    asyncio.run(budget.observe_async(messages, 429, {"Retry-After": "0.1"}))
    assert seen()[0] == before[0] + 2
    assert asyncio.run(budget.acquire_async(messages)) >= 0.05 and seen()[2] == before[2] + 2


class _Counted(RestBudget):
    """The budget, counting the Redis round trips of its event-loop side."""

    takes = 0

    async def _acall(self, name, keys, args):
        self.takes += name == "take"
        return await super()._acall(name, keys, args)


def test_an_event_loops_requests_queue_for_the_bucket_in_order(prefix):
    import asyncio

    budget = _Counted(RATE, BURST, REDIS_URL, prefix=prefix)
    messages, webhook = route_key("POST", "/channels/1/messages"), route_key("POST", "/webhooks/2/t")
    n = 30
    went: list[int] = []

    async def request(i: int) -> None:
        await budget.acquire_async(messages)
        went.append(i)

    async def burst() -> float:
        started = time.monotonic()
        await asyncio.gather(*(request(i) for i in range(n)))
        return time.monotonic() - started

    elapsed = asyncio.run(burst())
    assert went == list(range(n))  # first come, first served
    assert elapsed >= (n - BURST) / RATE - 0.05  # never faster than the bucket
    # one take per token and a few for refills: the waiters behind the head of the queue do not ask Redis
    # (each asked every refill before: ~n²/2 round trips)
    assert budget.takes <= 2 * n, budget.takes

    # a route that Discord paused leaves the queue: another route's request goes meanwhile
    async def paused_and_free() -> tuple[float, float]:
        await budget.pause_async(messages, 0.5)
        started, done = time.monotonic(), {}

        async def timed(route):
            await budget.acquire_async(route)
            done[route] = time.monotonic() - started

        await asyncio.sleep(1.0)  # the bucket refilled
        await budget.pause_async(messages, 0.5)
        started = time.monotonic()
        await asyncio.gather(timed(messages), timed(webhook))
        return done[messages], done[webhook]

    held, free = asyncio.run(paused_and_free())
    assert held >= 0.45 and free < 0.2, (held, free)
