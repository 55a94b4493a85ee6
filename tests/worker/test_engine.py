"""The engine and the checkpoint cache in-process: requests joining a running batch, per-request
parameters and seeds independent of the batch, failures isolated, LRU eviction under a memory cap."""

from __future__ import annotations

import threading
import time

import pytest

from core.contracts import SamplingParams
from trainer.checkpoint import Checkpoint
from trainer.model import ModelConfig, build_model
from trainer.sample import generate
from trainer.tokenizer import CharTokenizer
from worker.serve.cache import CheckpointCache, for_serving, model_bytes
from worker.serve.engine import Engine


@pytest.fixture(scope="module")
def tiny():
    tokenizer = CharTokenizer.build("abcdefghij .\n")
    model = build_model(ModelConfig(vocab_size=len(tokenizer), n_layers=1, n_embd=8, n_hidden=16)).eval()
    return Checkpoint(model, tokenizer, {}, {})


def test_engine_batches_requests_and_keeps_each_stream_its_own(tiny):
    cache = CheckpointCache(lambda cid: (*for_serving(tiny), 1), max_bytes=10**9)
    engine = Engine("cpu")
    params = [SamplingParams(max_tokens=300 + 7 * i, temperature=0.5 + i / 20, top_k=i % 4, seed=i)
              for i in range(12)]
    jobs = [engine.submit(cache.acquire(1), f"abc{i}", p) for i, p in enumerate(params)]
    streams = [j.future.result(timeout=30) for j in jobs]
    assert cache.loads == 1 and engine.max_batch > 1 and max(j.batch_peak for j in jobs) == engine.max_batch
    for i, (stream, p) in enumerate(zip(streams, params)):
        assert len(stream.tokens) == p.max_tokens
        alone = generate(tiny.model, tiny.tokenizer, [f"abc{i}"], p)[0]
        assert alone.text == stream.text  # batch company does not change a seeded stream

    bad = engine.submit(cache.acquire(1), "abc", SamplingParams(max_tokens=5, seed=1))
    bad.params.stop = (None,)  # a request that blows up inside the sampler fails alone...
    with pytest.raises(TypeError):
        bad.future.result(timeout=30)
    good = engine.submit(cache.acquire(1), "abc", SamplingParams(max_tokens=5, seed=1))
    assert len(good.future.result(timeout=30).tokens) == 5  # ...and the engine keeps serving


def test_an_abandoned_stream_stops_and_its_batch_mates_are_untouched(tiny):
    """A request whose caller gave up (its deadline passed) leaves the batch at the next step: the engine
    stops computing it, fails its future with Abandoned, and the seeded streams beside it write what they
    would have written alone."""
    import time

    from worker.serve.engine import Abandoned

    cache = CheckpointCache(lambda cid: (*for_serving(tiny), 1), max_bytes=10**9)
    engine = Engine("cpu")
    endless = engine.submit(cache.acquire(1), "abc", SamplingParams(max_tokens=100_000, seed=5))
    mates = [SamplingParams(max_tokens=3000 + 500 * i, temperature=0.8, seed=20 + i) for i in range(3)]
    mate_jobs = [engine.submit(cache.acquire(1), "cab", p) for p in mates]
    deadline = time.monotonic() + 10
    # (the mates are in the engine's inbox, but the endless stream may have its 200 characters before the
    # engine's next step boundary admits them)
    while (len(endless.partial) < 200 or mate_jobs[0].stream is None) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert mate_jobs[0].stream is not None and not any(j.future.done() for j in mate_jobs)
    engine.abandon(endless)
    with pytest.raises(Abandoned, match="stopped after"):
        endless.future.result(timeout=5)
    for job, p in zip(mate_jobs, mates):
        assert job.future.result(timeout=60).text == generate(tiny.model, tiny.tokenizer, ["cab"], p)[0].text
    assert engine.abandoned == 1
    assert idle(engine)  # nothing left stepping
    steps = engine.steps
    time.sleep(0.2)
    assert engine.steps == steps

    late = engine.submit(cache.acquire(1), "abc", SamplingParams(max_tokens=100_000, seed=1))
    engine.abandon(late)  # abandoned as it arrives: never joins a batch, or leaves it at the next step
    with pytest.raises(Abandoned, match="before it started|stopped after"):
        late.future.result(timeout=5)
    assert idle(engine)


def idle(engine: Engine, within: float = 5.0) -> bool:
    """The engine holds no batch (it drops one just after answering its last stream)."""
    import time

    deadline = time.monotonic() + within
    while engine._batches and time.monotonic() < deadline:
        time.sleep(0.01)
    return not engine._batches


def test_cache_loads_once_and_evicts_least_recently_used_idle(tiny):
    loads = []

    def load(cid):
        loads.append(cid)
        return *for_serving(Checkpoint(build_model(tiny.model.config), tiny.tokenizer, {}, {})), cid

    size = model_bytes(tiny.model)
    evicted = []  # (the engine's process is told to drop those models: EngineProcess.forget)
    cache = CheckpointCache(load, max_bytes=2 * size, on_evict=lambda entry: evicted.append(entry.checkpoint_id))
    entries = []
    threads = [threading.Thread(target=lambda: entries.append(cache.acquire(1))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loads == [1] and len({id(e) for e in entries}) == 1 and entries[0].users == 8
    assert cache.hits == 7 and cache.loads == 1 and cache.n_bytes == size
    for e in entries:
        cache.release(e)
    cache.release(cache.acquire(2))
    cache.release(cache.acquire(1))  # 1 is now the most recently used
    held = cache.acquire(3)  # over the cap: 2 (idle, least recent) goes
    assert 2 not in cache and 1 in cache and 3 in cache
    cache.acquire(4)  # everything else in use or recent: 1 goes, 3 and 4 are held
    assert 1 not in cache and 3 in cache and 4 in cache and held.users == 1
    assert cache.evictions == 2 and cache.loads == 4 and cache.hits == 8 and cache.n_bytes == 2 * size
    assert evicted == [2, 1]


def test_engine_serves_bfloat16_weights(tiny):
    """IMPROBABLE_GENERATE_PRECISION=bf16 loads weights in bfloat16; the engine is dtype-agnostic."""
    import copy

    import torch

    half = Checkpoint(copy.deepcopy(tiny.model).to(torch.bfloat16), tiny.tokenizer, {}, {})
    cache = CheckpointCache(lambda cid: (*for_serving(half), 1), max_bytes=10**9)
    engine = Engine("cpu")
    params = [SamplingParams(max_tokens=50, temperature=0.7, seed=i) for i in range(4)]
    jobs = [engine.submit(cache.acquire(1), "abc", p) for p in params]
    streams = [j.future.result(timeout=30) for j in jobs]
    assert all(len(s.tokens) == 50 for s in streams)
    assert generate(half.model, half.tokenizer, ["abc"], params[2])[0].text == streams[2].text


def test_a_stream_served_alone_steps_with_int8_weights_when_on(tiny):
    """generate_int8 "on": a batch of one steps with the int8 model built once per cache entry (the text is
    exactly what the sampler makes with trainer.quantize's model); "off" keeps float32 (the text of the float
    model); "auto" decides by timing both and serves either way."""
    from trainer.quantize import quantize_for_serving

    params = SamplingParams(max_tokens=200, temperature=0.9, seed=42)
    texts = {}
    for mode in ("on", "off", "auto"):
        cache = CheckpointCache(lambda cid: (*for_serving(tiny), 1), max_bytes=10**9)
        entry = cache.acquire(1)
        texts[mode] = Engine("cpu", int8=mode).submit(entry, "abc", params).future.result(timeout=30).text
        assert (entry.single_stream is not None) == (mode == "on") or mode == "auto"
        assert entry.single_stream_decided
        # the int8 copy counts against the cache's memory cap
        assert (entry.n_bytes > model_bytes(tiny.model)) == (entry.single_stream is not None)
    assert texts["on"] == generate(quantize_for_serving(tiny.model), tiny.tokenizer, ["abc"], params)[0].text
    assert texts["off"] == generate(tiny.model, tiny.tokenizer, ["abc"], params)[0].text
    assert len(texts["auto"]) == 200


def test_a_light_server_is_stepped_ahead_of_another_servers_flood(tiny):
    """Batches are per (server, model) and the engine steps the server that has had the least engine time
    lately: a single request from server Y finishes while server X's flood barely moves, and X alone gets
    every step again afterwards."""
    cache = CheckpointCache(lambda cid: (*for_serving(tiny), 1), max_bytes=10**9)
    engine = Engine("cpu")
    flood = [engine.submit(cache.acquire(1), "abc", SamplingParams(max_tokens=100_000, seed=i), owner=1)
             for i in range(32)]
    deadline = time.monotonic() + 30
    while len(flood[0].partial) < 300 and time.monotonic() < deadline:
        time.sleep(0.01)
    before = len(flood[0].stream.tokens)
    light = engine.submit(cache.acquire(1), "cab", SamplingParams(max_tokens=200, seed=7), owner=2)
    light.future.result(timeout=30)
    during = len(flood[0].stream.tokens) - before
    assert light.batch_peak == 1  # its own batch, not the flood's
    assert during < 60, f"server 1's flood advanced {during} tokens while server 2's 200 were written"
    after = len(flood[0].stream.tokens)
    while len(flood[0].stream.tokens) < after + 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(flood[0].stream.tokens) >= after + 200  # alone again, the flood gets the engine
    for job in flood:
        engine.abandon(job)


def test_fair_share_prefers_the_least_served_owner_and_forgets_with_time():
    from worker.serve.engine import FairShare, _Batch

    now = [0.0]
    fair = FairShare(half_life=1.0, clock=lambda: now[0])
    batches = {(1, 9): _Batch(sampler=None), (2, 9): _Batch(sampler=None)}
    fair.charge(1, 4.0)
    fair.charge(2, 1.0)
    assert fair.pick(batches) == (2, 9)
    now[0] = 2.0  # server 1's 4 s decay to 1 s, server 2's 1 s to 0.25 s
    assert fair.used(1) == pytest.approx(1.0) and fair.used(2) == pytest.approx(0.25)
    fair.charge(2, 1.0)
    assert fair.pick(batches) == (1, 9)


def test_a_flood_of_arrivals_does_not_hold_another_servers_request_at_the_door(tiny):
    """Requests join their batches a few milliseconds' worth per step boundary, least-served server first: a
    server's one request arriving behind another server's 300 long prompts joins and finishes while most of
    the flood still waits to join."""
    cache = CheckpointCache(lambda cid: (*for_serving(tiny), 1), max_bytes=10**9)
    engine = Engine("cpu")
    prompt = "abcdefghij " * 300
    flood = [engine.submit(cache.acquire(1), prompt, SamplingParams(max_tokens=50, seed=i), owner=1)
             for i in range(300)]
    light = engine.submit(cache.acquire(1), "cab", SamplingParams(max_tokens=20, seed=7), owner=2)
    light.future.result(timeout=60)
    joined = sum(job.stream is not None for job in flood)
    assert joined < 150, f"{joined} of the flood's 300 joined before server 2's request was answered"
    for job in flood:
        job.future.result(timeout=120)


def test_a_process_with_an_engine_hands_the_gil_over_within_half_a_millisecond():
    """The engine's thread needs the GIL back between its torch ops: the worker's other threads may keep it
    at most GIL_SWITCH_SECONDS each time, not Python's default 5 ms."""
    import sys

    from worker.serve.engine import GIL_SWITCH_SECONDS

    Engine("cpu")
    assert sys.getswitchinterval() <= GIL_SWITCH_SECONDS < 0.005
