"""Structured logs (core.logs), Prometheus metrics (core.metrics, filled by worker/signals.py, and the cluster
collectors of the broker and the database) and the HTTP endpoint."""

from __future__ import annotations

import io
import json
import logging
import urllib.error
import urllib.request
import uuid

import pytest
from celery import Celery
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from core import logs, metrics
from service.training import TrainingCollector
from worker.app import QueueDepthCollector

from .conftest import closed_port, free_port


@pytest.fixture
def log_stream(clean_env):
    stream = io.StringIO()
    yield stream
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_improbable", False)]:
        root.removeHandler(handler)
    logs.set_service(None)


def test_json_log_lines_parse_as_json(log_stream):
    logs.setup_logging(fmt="json", level="DEBUG", service="bot", stream=log_stream)
    log = logging.getLogger("improbable.test")
    log.info("generated %d tokens", 42, extra={"persona": "alice", "latency_ms": 87})
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        log.exception("generation failed")
    lines = log_stream.getvalue().splitlines()
    assert len(lines) == 2  # a multi-line traceback stays inside one JSON line
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "generated 42 tokens"
    assert (first["level"], first["logger"], first["service"]) == ("info", "improbable.test", "bot")
    assert first["persona"] == "alice" and first["latency_ms"] == 87
    assert first["ts"].endswith("+00:00")
    assert second["level"] == "error" and "RuntimeError: boom" in second["exc_info"]


def test_log_format_and_level_come_from_the_settings(log_stream, clean_env):
    clean_env.setenv("IMPROBABLE_LOG_FORMAT", "json")
    clean_env.setenv("IMPROBABLE_LOG_LEVEL", "warning")
    logs.setup_logging(stream=log_stream)
    logging.getLogger("x").info("not shown")
    logging.getLogger("x").warning("shown")
    assert [json.loads(line)["message"] for line in log_stream.getvalue().splitlines()] == ["shown"]

    text = io.StringIO()
    logs.setup_logging(fmt="text", level="INFO", service="beat", stream=text)  # replaces the JSON handler
    logging.getLogger("x").info("plain")
    assert log_stream.getvalue().count("\n") == 1
    assert text.getvalue().startswith("[beat] ") and "INFO    x: plain" in text.getvalue()
    assert sum(getattr(h, "_improbable", False) for h in logging.getLogger().handlers) == 1


def test_metrics_render():
    text = generate_latest(REGISTRY).decode()
    for name in metrics.METRIC_NAMES:
        assert f"# TYPE {name.removesuffix('_total')}" in text or name in text, name
    assert 'improbable_build_info{' in text


def _value(name: str, labels: dict | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def test_celery_signals_count_jobs_latency_tokens_and_cache_hits():
    app = Celery("obs-test", set_as_current=False)
    app.conf.task_always_eager = True

    @app.task(name="improbable.generate", shared=False)  # not shared: the real app must not see it
    def generate(request):
        return {"text": "x" * 40, "tokens": 40, "latency_ms": 500, "load_ms": 100}

    @app.task(name="improbable.train", shared=False)
    def train(request):
        raise RuntimeError("diverged")

    gen, worker = {"task": "improbable.generate"}, metrics.worker_labels()  # (host, kind) of this process
    before = {"ok": _value("improbable_jobs_total", {**gen, "state": "success"}),
              "tokens": _value("improbable_generated_tokens_total", worker),
              "miss": _value("improbable_checkpoint_cache_requests_total", {"result": "miss", **worker}),
              "count": _value("improbable_job_duration_seconds_count", gen),
              "latency": _value("improbable_generate_latency_seconds_sum", worker),
              "failed": _value("improbable_jobs_total", {"task": "improbable.train", "state": "failure"})}
    generate.apply(args=({"checkpoint_id": 7, "prompt": "Alice"},))
    train.apply(args=({},))
    assert _value("improbable_jobs_total", {**gen, "state": "success"}) == before["ok"] + 1
    assert _value("improbable_generated_tokens_total", worker) == before["tokens"] + 40
    assert _value("improbable_checkpoint_cache_requests_total", {"result": "miss", **worker}) == before["miss"] + 1
    assert _value("improbable_job_duration_seconds_count", gen) == before["count"] + 1
    assert _value("improbable_generate_latency_seconds_sum", worker) == pytest.approx(before["latency"] + 0.5)
    assert _value("improbable_jobs_in_progress", gen) == 0
    assert _value("improbable_jobs_total", {"task": "improbable.train", "state": "failure"}) == before["failed"] + 1


def _purge(app: Celery, queue: str) -> None:
    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(queue)
        conn.default_channel.queue_delete(queue)


def test_publishing_a_job_counts_it(redis_url):
    app = Celery("obs-publish", broker=redis_url, set_as_current=False)
    queue = f"test-publish-{uuid.uuid4().hex[:8]}"
    before = _value("improbable_jobs_enqueued_total", {"task": "improbable.test_publish"})
    try:
        app.send_task("improbable.test_publish", args=(1,), queue=queue)
        assert _value("improbable_jobs_enqueued_total", {"task": "improbable.test_publish"}) == before + 1
    finally:
        _purge(app, queue)


def test_queue_depth_from_the_broker(redis_url):
    """Real messages published through Celery (two of them with a priority, which the Redis transport keeps
    in another list) are counted through kombu's public API."""
    app = Celery("obs-depth", broker=redis_url, set_as_current=False)
    queue = f"test-queue-{uuid.uuid4().hex[:8]}"
    try:
        for i in range(3):
            app.send_task("improbable.test_depth", args=(i,), queue=queue)
        for i in range(2):
            app.send_task("improbable.test_depth", args=(i,), queue=queue, priority=6)
        registry = CollectorRegistry()
        registry.register(QueueDepthCollector(app, queues=(queue, "absent-queue"), timeout=0.5))
        assert registry.get_sample_value("improbable_queue_depth", {"queue": queue}) == 5
        assert registry.get_sample_value("improbable_queue_depth", {"queue": "absent-queue"}) == 0
        assert registry.get_sample_value("improbable_broker_up") == 1
        assert registry.get_sample_value("improbable_jobs_reserved") == 0  # no worker consumes these queues
    finally:
        _purge(app, queue)


def test_an_unreachable_broker_is_a_gauge_not_a_failed_scrape():
    app = Celery("obs-dead", broker=f"redis://127.0.0.1:{closed_port()}/0", set_as_current=False)
    app.conf.broker_connection_timeout = 0.5
    registry = CollectorRegistry()
    registry.register(QueueDepthCollector(app, timeout=0.5))
    assert registry.get_sample_value("improbable_broker_up") == 0
    assert registry.get_sample_value("improbable_queue_depth", {"queue": "generate"}) is None


def test_training_progress_from_the_database(clean_env, tmp_path):
    import db
    from db import Persona, RunStatus, TrainingRun, session_scope

    url = f"sqlite:///{tmp_path / 'metrics.db'}"
    clean_env.setenv("IMPROBABLE_DATABASE_URL", url)
    db.upgrade(url)
    with session_scope(url) as session:
        persona = session.query(Persona).first()
        session.add(TrainingRun(persona_id=persona.id, status=RunStatus.RUNNING,
                                progress={"step": 250, "total": 1000, "loss": 1.5, "val_loss": 1.7,
                                          "tokens_per_s": 12000.0, "eta": 90}))
        session.add(TrainingRun(persona_id=persona.id, status=RunStatus.QUEUED))
        session.flush()
        run_id, slug = session.query(TrainingRun.id).filter_by(status=RunStatus.RUNNING).scalar(), persona.slug
    registry = CollectorRegistry()
    registry.register(TrainingCollector())
    labels = {"run": str(run_id), "persona": slug}
    assert registry.get_sample_value("improbable_training_progress_ratio", labels) == 0.25
    assert registry.get_sample_value("improbable_training_step", labels) == 250
    assert registry.get_sample_value("improbable_training_val_loss", labels) == 1.7
    assert registry.get_sample_value("improbable_training_tokens_per_second", labels) == 12000
    assert registry.get_sample_value("improbable_training_eta_seconds", labels) == 90
    assert registry.get_sample_value("improbable_training_runs", {"status": RunStatus.QUEUED.value}) == 1
    assert registry.get_sample_value("improbable_database_up") == 1


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_metrics_health_and_readiness_endpoint(clean_env):
    port = free_port()
    server = metrics.start_metrics_server(port, "127.0.0.1")
    try:
        assert metrics.start_metrics_server(port, "127.0.0.1") is server  # once per process
        status, body = _get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and "improbable_jobs_total" in body and "improbable_build_info" in body
        assert _get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
        assert _get(f"http://127.0.0.1:{port}/readyz")[0] == 200
        metrics.set_ready("discord", False)
        assert _get(f"http://127.0.0.1:{port}/readyz") == (503, "not ready: discord\n")
        metrics.set_ready("discord", True)
        assert _get(f"http://127.0.0.1:{port}/readyz") == (200, "ready\n")
    finally:
        metrics.stop_metrics_server()
        metrics.clear_readiness()


def test_metrics_server_is_off_by_default(clean_env):
    assert metrics.start_metrics_server() is None
