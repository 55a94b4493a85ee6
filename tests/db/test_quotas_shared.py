"""The limits' counters (service.quotas) are shared: two Quotas on one database, in two processes, on SQLite
and PostgreSQL, see the same cooldowns, jobs in flight and usage, and a race for the last slot has one winner."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ThreadPoolExecutor

import pytest

from db import make_engine
from service.errors import TooManyJobs
from service.quotas import Quotas


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def two(migrated_url):
    """Two Quotas with engines of their own on one database, and one shared clock."""
    engines = [make_engine(migrated_url), make_engine(migrated_url)]
    clock = Clock()
    yield Quotas(engines[0], clock), Quotas(engines[1], clock), clock
    for engine in engines:
        engine.dispose()


def test_a_cooldown_claimed_by_one_is_seen_by_the_other(two):
    a, b, clock = two
    assert a.hit("generate:1:7", 10) == 0.0
    assert b.hit("generate:1:7", 10) == pytest.approx(10)
    assert b.hit("generate:1:8", 10) == 0.0  # another member is not affected
    clock.now += 4
    assert a.retry_after("generate:1:7") == pytest.approx(6)
    b.reset("generate:1:7")  # a refund in one process frees the member in the other
    assert a.hit("generate:1:7", 10) == 0.0
    a.extend("generate:1:7", 100)  # a costly job cools down longer
    clock.now += 50
    assert b.hit("generate:1:7", 10) == pytest.approx(50)
    clock.now += 51
    assert b.hit("generate:1:7", 10) == 0.0


def test_jobs_in_flight_count_by_cost_across_instances(two):
    a, b, clock = two
    a.claim("j1", 5, 7, 2.0, member_cap=3, server_cap=10, ttl=60)
    seen = b.in_flight(5, 7)
    assert (seen.member_units, seen.member_jobs, seen.server_units) == (2.0, 1, 2.0)
    with pytest.raises(TooManyJobs) as refused:
        b.claim("j2", 5, 7, 1.5, member_cap=3, server_cap=10, ttl=60)
    assert refused.value.used == 2.0 and refused.value.limit == 3 and not refused.value.server
    b.claim("j3", 5, 8, 7.0, member_cap=3, server_cap=10, ttl=60)  # idle member: one job whatever it costs
    with pytest.raises(TooManyJobs) as busy:
        a.claim("j4", 5, 9, 2.0, member_cap=3, server_cap=10, ttl=60)
    assert busy.value.server and busy.value.used == 9.0
    b.release("j3")
    a.claim("j4", 5, 9, 2.0, member_cap=3, server_cap=10, ttl=60)
    assert a.used("units:guild:5", 3600) == pytest.approx(11.0)  # usage keeps what was admitted
    clock.now += 61  # a claim left behind by a dead bot expires
    assert b.in_flight(5, 7).member_units == 0.0


def test_a_window_cap_holds_across_instances(two):
    a, b, clock = two
    took = [q.take("ambient:guild:5", 1, 3, 3600) for q in (a, b, a, b, a)]
    assert took == [0.0, 1.0, 2.0, None, None]
    clock.now += 3601
    assert b.take("ambient:guild:5", 1, 3, 3600) == 0.0


def test_a_race_for_the_last_slot_has_one_winner(migrated_url):
    engines = [make_engine(migrated_url) for _ in range(6)]
    quotas = [Quotas(e) for e in engines]
    try:
        with ThreadPoolExecutor(6) as pool:
            cooled = list(pool.map(lambda q: q.hit("race", 60), quotas))
            taken = list(pool.map(lambda q: q.take("race:window", 1, 1, 3600), quotas))
        assert sorted(c == 0.0 for c in cooled) == [False] * 5 + [True]
        assert sum(t is not None for t in taken) == 1
    finally:
        for engine in engines:
            engine.dispose()


def _hit_in_a_process(url: str, key: str, out) -> None:
    engine = make_engine(url)
    try:
        out.put(Quotas(engine).hit(key, 30))
    finally:
        engine.dispose()


def test_two_processes_share_a_cooldown(migrated_url):
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_hit_in_a_process, args=(migrated_url, "generate:9:9", out))
    proc.start()
    first = out.get(timeout=60)
    proc.join(60)
    engine = make_engine(migrated_url)
    try:
        assert first == 0.0
        assert 0 < Quotas(engine).hit("generate:9:9", 30) <= 30  # the other process's claim holds here
    finally:
        engine.dispose()
