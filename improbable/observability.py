"""Logs, Prometheus metrics and the health endpoint of every Improbable process.

- `setup_logging()`: one handler on the root logger, plain text or one JSON object per line
  (IMPROBABLE_LOG_FORMAT=json), at IMPROBABLE_LOG_LEVEL.
- Metrics: defined here, once. Workers fill theirs from Celery signals connected when this module is
  imported (worker/app.py imports it), so the task code needs no metric calls: jobs by task and final
  state, jobs in progress, job duration, generate latency, tokens generated and tokens/s, checkpoint-cache
  hits. The bot adds interaction counts and request latency through the helpers below.
- Cluster gauges that no single worker knows: queue depth (Redis LLEN of each Celery queue, all
  priorities), jobs reserved by workers, training runs by status and the progress of running runs (from
  the `training_runs` rows). They are computed when scraped, by the one process that serves them with
  `cluster=True` (the bot), so they are not duplicated per worker.
- `start_metrics_server(port)`: a daemon thread serving `/metrics`, `/healthz` (the process is alive) and
  `/readyz` (every component that registered with `set_ready` says it is ready) on IMPROBABLE_METRICS_PORT.
  Celery workers start it in the main process when the worker starts (`worker_init`), beat when it starts.
  The compose file runs generate workers with the threads pool and trainers with the solo pool, so tasks
  run in that same process. With the prefork pool, set PROMETHEUS_MULTIPROC_DIR to an empty folder so that
  the children's metrics are aggregated (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from datetime import UTC, datetime
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

from improbable.settings import Settings, get_settings, mask_url

log = logging.getLogger(__name__)

# -- logging ------------------------------------------------------------------------------------------

_service: str | None = None
# attributes every LogRecord has; anything else on a record came from `extra=` and goes into the JSON
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime",
                                                                                  "taskName"}
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def _current_task() -> tuple[str | None, str | None]:
    """(task id, task name) of the Celery task running in this thread, if any."""
    if "celery" not in sys.modules:
        return None, None
    from celery._state import get_current_task

    task = get_current_task()
    if task is None or task.request.id is None:
        return None, None
    return task.request.id, task.name


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601), level, logger, message, service, task_id/task_name
    inside a Celery task, exception text, and every `extra=` field."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if _service:
            out["service"] = _service
        out["pid"] = record.process
        task_id, task_name = _current_task()
        if task_id:
            out["task_id"], out["task_name"] = task_id, task_name
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and not key.startswith("_") and key not in out:
                out[key] = value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        return f"[{_service}] {line}" if _service else line


def setup_logging(settings: Settings | None = None, *, service: str | None = None, fmt: str | None = None,
                  level: str | None = None, stream=None) -> logging.Handler:
    """Send every log record to `stream` (stderr) as text or JSON. Idempotent: calling it again replaces
    the handler it installed before and leaves other handlers (pytest's, for instance) alone."""
    global _service
    settings = settings or get_settings()
    if service is not None:
        _service = service
    fmt = fmt or settings.log_format
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_improbable", False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler._improbable = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel((level or settings.log_level).upper())
    logging.captureWarnings(True)
    return handler


def set_service(name: str) -> None:
    """The `service` field of JSON log lines (bot, generate@host, beat, ...)."""
    global _service
    _service = name


# -- metrics ------------------------------------------------------------------------------------------

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600, 7200)
RATE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)

BUILD = Info("improbable_build", "Version of the running Improbable code.")
JOBS = Counter("improbable_jobs", "Celery jobs finished by this process, by task and final state "
               "(success, failure, retry, revoked).", ["task", "state"])
JOBS_ENQUEUED = Counter("improbable_jobs_enqueued", "Celery jobs this process sent to the broker (the bot: "
                        "user requests; beat: schedule dispatches), by task.", ["task"])
JOBS_IN_PROGRESS = Gauge("improbable_jobs_in_progress", "Celery jobs running in this process.", ["task"],
                         multiprocess_mode="livesum")
JOB_DURATION = Histogram("improbable_job_duration_seconds", "Time a worker spent on a job, by task.",
                         ["task"], buckets=DURATION_BUCKETS)
GENERATE_LATENCY = Histogram("improbable_generate_latency_seconds", "Generate jobs: time from the start of "
                             "the job to its last token (checkpoint load included).", buckets=LATENCY_BUCKETS)
GENERATED_TOKENS = Counter("improbable_generated_tokens", "Tokens (characters or words) generated.")
GENERATE_TOKENS_PER_SECOND = Histogram("improbable_generate_tokens_per_second", "Generate jobs: tokens per "
                                       "second of generation (checkpoint load excluded).",
                                       buckets=RATE_BUCKETS)
CHECKPOINT_CACHE = Counter("improbable_checkpoint_cache_requests", "Generate jobs whose checkpoint was "
                           "already loaded in the worker (hit) or had to be read from storage (miss).",
                           ["result"])
BOT_INTERACTIONS = Counter("improbable_bot_interactions", "Discord interactions and mentions handled by "
                           "the bot, by command and outcome.", ["command", "outcome"])
BOT_REQUEST_LATENCY = Histogram("improbable_bot_request_latency_seconds", "From a user's command to the "
                                "finished answer (enqueue, queue wait, generation, reply), by kind.",
                                ["kind"], buckets=LATENCY_BUCKETS)
BOT_GUILDS = Gauge("improbable_bot_guilds", "Guilds the bot is in.", multiprocess_mode="max")

METRIC_NAMES = (  # what /metrics shows (tests and the README list them)
    "improbable_build_info", "improbable_jobs_enqueued_total", "improbable_jobs_total", "improbable_jobs_in_progress",
    "improbable_job_duration_seconds", "improbable_generate_latency_seconds", "improbable_generated_tokens_total",
    "improbable_generate_tokens_per_second", "improbable_checkpoint_cache_requests_total",
    "improbable_checkpoint_cache_entries", "improbable_bot_interactions_total",
    "improbable_bot_request_latency_seconds", "improbable_bot_guilds",
)
CLUSTER_METRIC_NAMES = (
    "improbable_queue_depth", "improbable_jobs_reserved", "improbable_broker_up", "improbable_training_runs",
    "improbable_training_progress_ratio", "improbable_training_step", "improbable_training_loss",
    "improbable_training_val_loss", "improbable_training_tokens_per_second", "improbable_training_eta_seconds",
    "improbable_database_up",
)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("improbable")
    except Exception:  # noqa: BLE001 - not installed (a source checkout)
        return "unknown"


BUILD.info({"version": _version(), "python": sys.version.split()[0]})


def record_interaction(command: str, outcome: str = "ok", seconds: float | None = None,
                       kind: str | None = None) -> None:
    """Bot: one handled interaction; with `seconds`, also the time until the user had the answer."""
    BOT_INTERACTIONS.labels(command, outcome).inc()
    if seconds is not None:
        BOT_REQUEST_LATENCY.labels(kind or command).observe(seconds)


def record_generation(result: dict) -> None:
    """Worker: latency, tokens and tokens/s of one finished generate job (its result dict)."""
    tokens = result.get("tokens")
    latency_ms = result.get("latency_ms")
    if isinstance(tokens, int):
        GENERATED_TOKENS.inc(tokens)
    if isinstance(latency_ms, (int, float)):
        GENERATE_LATENCY.observe(latency_ms / 1000)
        seconds = (latency_ms - (result.get("load_ms") or 0)) / 1000
        if isinstance(tokens, int) and tokens and seconds > 0:
            GENERATE_TOKENS_PER_SECOND.observe(tokens / seconds)


class CheckpointCacheCollector:
    """Checkpoints resident in this worker's cache (read from worker.generation without importing it)."""

    def collect(self):
        entries = GaugeMetricFamily("improbable_checkpoint_cache_entries",
                                    "Checkpoints loaded in this worker's memory.")
        loads = GaugeMetricFamily("improbable_checkpoint_cache_loads",
                                  "Checkpoints read from storage by this worker since it started.")
        cache = getattr(sys.modules.get("worker.generation"), "_cache", None)
        entries.add_metric([], len(cache) if cache is not None else 0)
        loads.add_metric([], getattr(cache, "loads", 0) if cache is not None else 0)
        yield entries
        yield loads


# Redis transport: a queue with priorities is one list per priority step; kombu's default steps.
PRIORITY_SEP, PRIORITY_STEPS = "\x06\x16", (0, 3, 6, 9)


def queue_keys(queue: str) -> list[str]:
    return [queue if p == 0 else f"{queue}{PRIORITY_SEP}{p}" for p in PRIORITY_STEPS]


class QueueDepthCollector:
    """Jobs waiting in each Celery queue (LLEN over its priority lists) and jobs reserved by workers but
    not yet acknowledged (the transport's `unacked` hash: running or prefetched). Redis brokers only."""

    def __init__(self, broker_url: str, queues: tuple[str, ...] = ("generate", "train"), timeout: float = 2.0):
        self.broker_url, self.queues, self.timeout = broker_url, queues, timeout
        self._client = None

    def _redis(self):
        if self._client is None:
            import redis

            self._client = redis.Redis.from_url(self.broker_url, socket_timeout=self.timeout,
                                                socket_connect_timeout=self.timeout)
        return self._client

    def collect(self):
        depth = GaugeMetricFamily("improbable_queue_depth", "Jobs waiting in a Celery queue.", labels=["queue"])
        reserved = GaugeMetricFamily("improbable_jobs_reserved", "Jobs taken by workers and not yet "
                                     "acknowledged (running or prefetched).")
        up = GaugeMetricFamily("improbable_broker_up", "1 if the broker answered this scrape.")
        try:
            client = self._redis()
            with client.pipeline(transaction=False) as pipe:
                for queue in self.queues:
                    for key in queue_keys(queue):
                        pipe.llen(key)
                pipe.hlen("unacked")
                counts = pipe.execute()
            n = len(PRIORITY_STEPS)
            for i, queue in enumerate(self.queues):
                depth.add_metric([queue], sum(counts[i * n:(i + 1) * n]))
            reserved.add_metric([], counts[-1])
            up.add_metric([], 1)
            yield depth
            yield reserved
        except Exception as e:  # noqa: BLE001 - a scrape must not fail because Redis is away
            log.warning("queue depth: broker %s unreachable: %s", mask_url(self.broker_url), e)
            up.add_metric([], 0)
        yield up


PROGRESS_FIELDS = {  # gauge → keys of training_runs.progress that may hold it (first found wins)
    "step": ("step",),
    "loss": ("loss",),
    "val_loss": ("val_loss",),
    "tokens_per_second": ("tokens_per_s", "tokens_per_second"),
    "eta_seconds": ("eta_s", "eta_seconds", "eta"),
}


class TrainingCollector:
    """Training runs by status, and step / loss / validation loss / tokens/s / ETA / fraction done of each
    running run, from the `training_runs` rows the trainers keep up to date."""

    def collect(self):
        runs = GaugeMetricFamily("improbable_training_runs", "Training runs by status.", labels=["status"])
        ratio = GaugeMetricFamily("improbable_training_progress_ratio", "Fraction of a running training "
                                  "run done (0-1).", labels=["run", "persona"])
        gauges = {name: GaugeMetricFamily(f"improbable_training_{name}", f"Running training run: {name}.",
                                          labels=["run", "persona"]) for name in PROGRESS_FIELDS}
        up = GaugeMetricFamily("improbable_database_up", "1 if the database answered this scrape.")
        try:
            from sqlalchemy import func, select

            from db import Persona, RunStatus, TrainingRun, session_scope

            with session_scope() as session:
                by_status = dict(session.execute(
                    select(TrainingRun.status, func.count()).group_by(TrainingRun.status)).all())
                running = session.execute(
                    select(TrainingRun.id, Persona.slug, TrainingRun.progress)
                    .join(Persona, Persona.id == TrainingRun.persona_id)
                    .where(TrainingRun.status == RunStatus.RUNNING)).all()
            for status in RunStatus:
                runs.add_metric([status.value], by_status.get(status, 0))
            for run_id, slug, progress in running:
                progress = progress or {}
                labels = [str(run_id), slug]
                fraction = progress.get("fraction")
                if fraction is None and progress.get("step") is not None and progress.get("total"):
                    fraction = progress["step"] / progress["total"]
                if isinstance(fraction, (int, float)):
                    ratio.add_metric(labels, float(fraction))
                for name, keys in PROGRESS_FIELDS.items():
                    value = next((progress[k] for k in keys if isinstance(progress.get(k), (int, float))), None)
                    if value is not None:
                        gauges[name].add_metric(labels, float(value))
            up.add_metric([], 1)
            yield runs
            yield ratio
            yield from gauges.values()
        except Exception as e:  # noqa: BLE001 - a scrape must not fail because the database is away
            log.warning("training metrics: database unreachable: %s", e)
            up.add_metric([], 0)
        yield up


_cluster_registered: set[int] = set()


def register_cluster_collectors(registry: CollectorRegistry = REGISTRY, settings: Settings | None = None) -> None:
    """Add the cluster-wide gauges (queue depth, training runs) to `registry`, once."""
    if id(registry) in _cluster_registered:
        return
    settings = settings or get_settings()
    if settings.broker_url.startswith(("redis://", "rediss://", "unix://")):
        registry.register(QueueDepthCollector(settings.broker_url))
    registry.register(TrainingCollector())
    _cluster_registered.add(id(registry))


REGISTRY.register(CheckpointCacheCollector())

# -- readiness and the HTTP endpoint ------------------------------------------------------------------

_ready: dict[str, bool] = {}
_ready_lock = threading.Lock()


def set_ready(component: str, ready: bool = True) -> None:
    """Readiness of a part of this process (`/readyz` answers 200 only when every part is ready)."""
    with _ready_lock:
        _ready[component] = ready


def readiness() -> dict[str, bool]:
    with _ready_lock:
        return dict(_ready)


def _metrics_registry() -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


def make_wsgi_app(registry: CollectorRegistry | None = None):
    """WSGI app: /healthz, /readyz, and the metrics on every other path (Prometheus asks for /metrics)."""
    registry = registry or _metrics_registry()

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "/")
        if path == "/healthz":
            body, status = b"ok\n", "200 OK"
        elif path == "/readyz":
            parts = readiness()
            waiting = sorted(name for name, ok in parts.items() if not ok)
            status = "503 Service Unavailable" if waiting else "200 OK"
            body = (f"not ready: {', '.join(waiting)}\n" if waiting else "ready\n").encode()
        else:
            body, status = generate_latest(registry), "200 OK"
            start_response(status, [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))])
            return [body]
        start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
        return [body]

    return app


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's signature
        pass


_server: WSGIServer | None = None


def start_metrics_server(port: int | None = None, addr: str | None = None, *, cluster: bool = False,
                         settings: Settings | None = None) -> WSGIServer | None:
    """Serve /metrics, /healthz and /readyz on `port` (default IMPROBABLE_METRICS_PORT; 0 = off) in a
    daemon thread; `cluster=True` adds the cluster-wide gauges. Returns the server, or None when off.
    One server per process: a second call returns the first server."""
    global _server
    settings = settings or get_settings()
    port = settings.metrics_port if port is None else port
    if not port:
        return None
    if _server is not None:
        return _server
    if cluster:
        register_cluster_collectors(settings=settings)
    server = make_server(addr or settings.metrics_addr, port, make_wsgi_app(), _Server, _QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    _server = server
    log.info("metrics on http://%s:%d/metrics (health: /healthz, /readyz)", addr or settings.metrics_addr, port)
    return server


def stop_metrics_server() -> None:
    global _server
    if _server is not None:
        _server.shutdown()
        _server.server_close()
        _server = None


# -- Celery: logging and metrics of workers and beat, through signals ----------------------------------

_started: dict[str, float] = {}  # task id → perf_counter at start
_started_lock = threading.Lock()


def _task_name(task) -> str:
    return getattr(task, "name", None) or "unknown"


def _on_setup_logging(**_kwargs) -> None:
    setup_logging()


def _on_worker_init(sender=None, **_kwargs) -> None:
    set_ready("celery", False)
    try:
        start_metrics_server()
    except OSError as e:  # port taken: the worker still works, without metrics
        log.error("metrics server not started: %s", e)


def _on_after_setup(sender=None, **_kwargs) -> None:
    if sender:
        set_service(str(sender))  # the worker's node name, e.g. generate@host


def _on_worker_ready(**_kwargs) -> None:
    set_ready("celery", True)


def _on_worker_shutting_down(**_kwargs) -> None:
    set_ready("celery", False)


def _on_beat_init(**_kwargs) -> None:
    set_service("beat")
    try:
        start_metrics_server()
    except OSError as e:
        log.error("metrics server not started: %s", e)


def _on_task_prerun(task_id=None, task=None, args=None, **_kwargs) -> None:
    name = _task_name(task)
    with _started_lock:
        _started[task_id] = time.perf_counter()
    JOBS_IN_PROGRESS.labels(name).inc()
    if name == "improbable.generate" and args and isinstance(args[0], dict):
        cache = getattr(sys.modules.get("worker.generation"), "_cache", None)
        try:
            hit = cache is not None and int(args[0].get("checkpoint_id")) in cache
        except (TypeError, ValueError):
            return
        CHECKPOINT_CACHE.labels("hit" if hit else "miss").inc()


def _on_task_postrun(task_id=None, task=None, retval=None, state=None, **_kwargs) -> None:
    name = _task_name(task)
    with _started_lock:
        started = _started.pop(task_id, None)
    if started is not None:
        JOB_DURATION.labels(name).observe(time.perf_counter() - started)
        JOBS_IN_PROGRESS.labels(name).dec()
    JOBS.labels(name, (state or "unknown").lower()).inc()
    if name == "improbable.generate" and state == "SUCCESS" and isinstance(retval, dict):
        record_generation(retval)


def _on_after_task_publish(sender=None, **_kwargs) -> None:
    JOBS_ENQUEUED.labels(str(sender or "unknown")).inc()


def _on_task_revoked(sender=None, request=None, **_kwargs) -> None:
    name = _task_name(sender) if sender is not None else getattr(request, "task", None) or "unknown"
    JOBS.labels(name, "revoked").inc()


_celery_connected = False


def connect_celery_signals() -> None:
    """Connect the handlers above (once). Importing this module does it."""
    global _celery_connected
    if _celery_connected:
        return
    from celery import signals

    signals.setup_logging.connect(_on_setup_logging, weak=False)
    signals.worker_init.connect(_on_worker_init, weak=False)
    signals.celeryd_after_setup.connect(_on_after_setup, weak=False)
    signals.worker_ready.connect(_on_worker_ready, weak=False)
    signals.worker_shutting_down.connect(_on_worker_shutting_down, weak=False)
    signals.beat_init.connect(_on_beat_init, weak=False)
    signals.task_prerun.connect(_on_task_prerun, weak=False)
    signals.task_postrun.connect(_on_task_postrun, weak=False)
    signals.task_revoked.connect(_on_task_revoked, weak=False)
    signals.after_task_publish.connect(_on_after_task_publish, weak=False)
    _celery_connected = True


connect_celery_signals()
