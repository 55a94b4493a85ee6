"""A generate worker whose engine runs in a process of its own (IMPROBABLE_GENERATE_ENGINE=process,
worker/serve/engine_process.py), through real Redis and real `celery worker` processes: the same answers as
the engine on a thread (seeded text, partial text, the recorded row, a blend), and a dead engine process ends
its worker instead of leaving it up with nothing to step its jobs."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.environment import wait_until, within
from worker.app import app

from .support import generate_request

QUEUE = "generate.engine-process-test"  # only this test's process-engine worker consumes it
THREAD_QUEUE = "generate.engine-thread-test"  # and this, its thread-engine twin
TIMEOUT = 60


def _send(request: dict):
    return app.send_task("improbable.generate", args=[request], queue=QUEUE)


def _engine_pid(worker_pid: int) -> int:
    """The worker's child process that runs the engine thread (the other is multiprocessing's resource tracker)."""
    from worker.serve.engine import OS_THREAD_NAME

    children = [int(c) for task in Path(f"/proc/{worker_pid}/task").iterdir()
                for c in (task / "children").read_text().split()]
    found = [c for c in children if any((t / "comm").read_text().strip() == OS_THREAD_NAME
                                        for t in Path(f"/proc/{c}/task").iterdir())]
    assert len(found) == 1, f"{len(found)} of the worker's {len(children)} child processes run an engine"
    return found[0]


def test_its_answers_are_the_thread_engines(start_worker, checkpoint_id):
    worker = start_worker("engineproc", QUEUE, "threads", 16, IMPROBABLE_GENERATE_ENGINE="process").wait_ready()
    start_worker("enginethread", THREAD_QUEUE, "threads", 4, IMPROBABLE_GENERATE_ENGINE="thread").wait_ready()
    requests = [generate_request(checkpoint_id, seed=s, max_tokens=200) for s in range(6)]
    remote = [_send(r) for r in requests]  # stepped together in the engine's process
    on_thread = [app.send_task("improbable.generate", args=[r], queue=THREAD_QUEUE).get(timeout=TIMEOUT)
                 for r in requests]  # the engine on a thread, one at a time
    answers = [r.get(timeout=TIMEOUT) for r in remote]
    assert [a["text"] for a in answers] == [t["text"] for t in on_thread]
    assert all(a["worker"] == worker.hostname and a["generation_id"] for a in answers)
    assert max(a["batch_peak"] for a in answers) > 1 and _engine_pid(worker.proc.pid) > 0

    states = []  # partial text flows back from the engine's process
    long = _send(generate_request(checkpoint_id, seed=9, max_tokens=3000)).get(
        timeout=TIMEOUT, on_message=lambda m: states.append((m["status"], m["result"])))
    partial = [meta["text"] for status, meta in states if status == "PROGRESS" and meta.get("text")]
    assert partial and all(long["text"].startswith(p) for p in partial) and len(partial[-1]) < len(long["text"])

    blend = {**generate_request(checkpoint_id, seed=4, max_tokens=80),
             "blend": [{"checkpoint_id": checkpoint_id, "persona": "alice", "weight": 0.5},
                       {"checkpoint_id": checkpoint_id, "persona": "alice", "weight": 0.5}]}
    blended, threaded = (app.send_task("improbable.generate", args=[blend], queue=q).get(timeout=TIMEOUT)
                         for q in (QUEUE, THREAD_QUEUE))
    assert blended["text"] == threaded["text"] and blended["tokens"] == 80


def test_a_dead_engine_process_ends_its_worker(start_worker, checkpoint_id):
    worker = start_worker("engineproc2", QUEUE, "threads", 4, IMPROBABLE_GENERATE_ENGINE="process").wait_ready()
    assert _send(generate_request(checkpoint_id, seed=1, max_tokens=20)).get(timeout=TIMEOUT)["tokens"] == 20
    os.kill(_engine_pid(worker.proc.pid), signal.SIGKILL)
    started = time.monotonic()
    wait_until(lambda: worker.proc.poll() is not None, 15, "the worker to exit")
    assert worker.proc.returncode == 70 and time.monotonic() - started < within(15)
    assert "the generation engine's process died" in worker.log()


def test_an_int8_copy_made_in_the_engine_process_counts_against_the_workers_cache():
    """generate_int8 "on" in the engine's process: a stream served alone steps with the int8 model (the text of
    trainer.quantize's model), and the bytes that copy adds reach the worker's cache entry, whose cap they count
    against, as they do with the engine on a thread."""
    from core.contracts import SamplingParams
    from trainer.checkpoint import to_bytes
    from trainer.model import ModelConfig, build_model
    from trainer.quantize import quantize_for_serving
    from trainer.sample import generate
    from trainer.tokenizer import CharTokenizer
    from worker.serve.cache import CheckpointCache
    from worker.serve.engine_process import EngineProcess

    tokenizer = CharTokenizer.build("abcdefghij .\n")
    model = build_model(ModelConfig(vocab_size=len(tokenizer), n_layers=1, n_embd=8, n_hidden=16)).eval()
    data = to_bytes(model, tokenizer, {})
    engine = EngineProcess("cpu", threads=1, int8="on")
    cache = CheckpointCache(lambda cid: (*engine.load(cid, data, "tiny", "fp32"), None), max_bytes=10**9)
    entry = cache.acquire(7)
    loaded = entry.n_bytes
    params = SamplingParams(max_tokens=120, temperature=0.9, seed=3)
    text = engine.submit(entry, "abc", params).future.result(timeout=TIMEOUT).text
    assert text == generate(quantize_for_serving(model), tokenizer, ["abc"], params)[0].text
    assert entry.checkpoint.model is None and entry.n_bytes > loaded
    cache.release(entry)
    assert cache.n_bytes == entry.n_bytes
