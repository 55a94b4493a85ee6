"""The Celery app: importable without torch, configured for reliability, eager without a broker, and
failing fast when the broker is down."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time

import pytest

from core.settings import Settings
from tests.environment import within
from worker import app as worker_app
from worker.app import TASK_NAMES, celery_config, make_app

from .support import ROOT, free_port, generate_request


def _python(code: str, env: dict[str, str], timeout: float = 60) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_app_imports_without_torch():
    out = _python("import sys, worker.app; print('torch' in sys.modules, 'trainer.model' in sys.modules)",
                  {**os.environ, "IMPROBABLE_BROKER_URL": "redis://127.0.0.1:1/0"})
    assert out.split() == ["False", "False"]


def test_config_is_json_only_with_late_acks_and_routes():
    conf = celery_config(Settings(broker_url="redis://127.0.0.1:6379/0", visibility_timeout=30))
    assert conf["task_serializer"] == conf["result_serializer"] == "json" and conf["accept_content"] == ["json"]
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"] and conf["worker_prefetch_multiplier"] == 1
    assert conf["broker_transport_options"]["visibility_timeout"] == 30
    assert {q.name for q in conf["task_queues"]} == {"generate", "generate.gpu", "generate.cpu", "train"}
    assert conf["task_routes"]["improbable.train"] == {"queue": "train"}
    assert conf["task_routes"]["improbable.generate"] == {"queue": "generate"}
    gpu = celery_config(Settings(broker_url="redis://127.0.0.1:6379/0", generate_queue="generate.gpu"))["task_routes"]
    assert gpu["improbable.generate"] == gpu["improbable.post_scheduled"] == {"queue": "generate.gpu"}
    assert gpu["improbable.dispatch_schedules"] == {"queue": "generate"}  # beat's own jobs: any worker
    assert not conf["task_always_eager"] and conf["beat_schedule"]["dispatch-schedules"]["schedule"] == 60
    assert celery_config(Settings(broker_url=""))["task_always_eager"]

    import worker.tasks  # noqa: F401 - registers the tasks
    from worker.app import app

    assert set(TASK_NAMES) <= set(app.tasks)
    generate = app.tasks["improbable.generate"]
    assert generate.acks_late and generate.max_retries == 3 and generate.retry_backoff


def test_dead_broker_fails_fast(monkeypatch):
    port = free_port()
    monkeypatch.setattr(worker_app, "app", make_app(Settings(broker_url=f"redis://127.0.0.1:{port}/0")))
    started = time.monotonic()
    with pytest.raises(worker_app.BrokerUnavailable, match=f"127.0.0.1:{port}.*unreachable"):
        worker_app.enqueue("improbable.generate", {"checkpoint_id": 1})
    assert time.monotonic() - started < within(5)
    assert not worker_app.broker_available(0.5)


def test_broker_available(services):
    from worker.app import broker_available

    assert broker_available(1.0)


def test_eager_round_trip_without_broker(services, checkpoint_id):
    """No broker: enqueue runs the task in this process through the same code, and records the row."""
    env = {**os.environ, **services.env, "IMPROBABLE_BROKER_URL": "", "IMPROBABLE_RESULT_BACKEND": ""}
    request = generate_request(checkpoint_id, seed=11, max_tokens=60)
    code = ("import json, sys; from worker.app import enqueue, is_eager; assert is_eager(); "
            f"r = enqueue('improbable.generate', {request!r}).get(); print(json.dumps(r))")
    result = json.loads(_python(code, env).strip().splitlines()[-1])
    assert result["tokens"] == 60 and result["seed"] == 11 and result["full_text"].startswith("Alice was")
    assert result["generation_id"] is not None and result["checkpoint_id"] == checkpoint_id


def test_a_generate_worker_consumes_its_kinds_queue_and_labels_its_metrics(services, checkpoint_id, start_worker):
    """`-Q generate` with IMPROBABLE_WORKER_KIND=auto on a host without CUDA: the worker also consumes
    generate.cpu, jobs sent there are answered, and its metrics carry its host and kind. A job for GPU workers
    waits in generate.gpu for one."""
    import urllib.request

    from tests.environment import configured
    from worker.app import app, enqueue

    port = free_port()
    worker = start_worker("kinded", "generate", "threads", 4, IMPROBABLE_METRICS_PORT=str(port)).wait_ready()
    active = app.control.inspect(destination=[worker.hostname], timeout=2).active_queues()
    assert {q["name"] for q in active[worker.hostname]} == {"generate", "generate.cpu"}
    with configured({"IMPROBABLE_GENERATE_QUEUE": "generate.gpu"}, celery=True):
        waiting = enqueue("improbable.generate", generate_request(checkpoint_id, seed=2, max_tokens=20))
    with configured({"IMPROBABLE_GENERATE_QUEUE": "generate.cpu"}, celery=True):
        done = enqueue("improbable.generate", generate_request(checkpoint_id, seed=1, max_tokens=20)).get(timeout=60)
    try:
        assert done["tokens"] == 20 and waiting.state == "PENDING"
        with app.connection_for_read() as conn:
            assert conn.default_channel.queue_declare("generate.gpu", passive=True).message_count == 1
    finally:
        waiting.revoke()
        with app.connection_for_write() as conn:
            conn.default_channel.queue_purge("generate.gpu")
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert re.search(r'improbable_worker_info\{[^}]*kind="cpu"[^}]*queues="generate,generate.cpu"', text), text[-800:]
    assert re.search(r'improbable_generate_latency_seconds_count\{host="[^"]+",kind="cpu"\} [1-9]', text)
    # the bot asks whether any worker consumes the queue its jobs go to: with only this CPU worker, a job routed
    # to GPU workers is refused at once instead of waiting for the bot's timeout
    from bot.jobs import GENERATE, Jobs, Unavailable
    from core.settings import get_settings

    async def routed_to_gpu() -> None:
        jobs = Jobs(get_settings(), app=app)
        job = await jobs.submit(GENERATE, generate_request(checkpoint_id, seed=3, max_tokens=20), user_id=5)
        with pytest.raises(Unavailable):
            await jobs.wait(job, timeout=within(30))

    with configured({"IMPROBABLE_GENERATE_QUEUE": "generate.gpu", "IMPROBABLE_BOT_WORKER_CHECK_AFTER": "0.3"},
                    celery=True):
        asyncio.run(routed_to_gpu())
