"""Prometheus metrics of every Improbable process, defined once, and the endpoint that serves them.

- Workers fill theirs from Celery signals (worker/signals.py), so the task code needs no metric calls:
  jobs by task and final state, jobs in progress, job duration, generate latency, tokens generated and
  tokens/s, checkpoint-cache hits. The bot adds interaction counts, request latency, gateway events by
  type and its event loop's lag (`watch_event_loop`: how late a fixed sleep wakes; a handler that blocks
  the loop shows here long before Discord's 3 s to acknowledge an interaction runs out).
- Cluster gauges that no single worker knows (queue depth, jobs reserved, training runs and their
  progress) are collectors that the one process serving them registers when it starts the endpoint
  (the bot: `worker.app.QueueDepthCollector`, `service.training.TrainingCollector`), so they are not
  duplicated per worker. They are computed when scraped.
- `start_metrics_server(port)`: a daemon thread serving prometheus_client's own WSGI app on `/metrics`,
  plus `/healthz` (the process is alive) and `/readyz` (every component that registered with `set_ready`
  says it is ready), on IMPROBABLE_METRICS_PORT. With the prefork pool, set PROMETHEUS_MULTIPROC_DIR to an
  empty folder so that the children's metrics are aggregated (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import threading
from collections.abc import Iterable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Info, make_wsgi_app

from core.settings import Settings, get_settings

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600, 7200)
RATE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10)
LAG_INTERVAL = 0.1  # seconds between two samples of the event loop's lag

BUILD = Info("improbable_build", "Version of the running Improbable code.")
JOBS = Counter("improbable_jobs", "Celery jobs finished by this process, by task and final state "
               "(success, failure, retry, revoked).", ["task", "state"])
JOBS_ENQUEUED = Counter("improbable_jobs_enqueued", "Celery jobs this process sent to the broker (the bot: "
                        "user requests; beat: schedule dispatches), by task.", ["task"])
JOBS_IN_PROGRESS = Gauge("improbable_jobs_in_progress", "Celery jobs running in this process.", ["task"],
                         multiprocess_mode="livesum")
JOB_DURATION = Histogram("improbable_job_duration_seconds", "Time a worker spent on a job, by task.",
                         ["task"], buckets=DURATION_BUCKETS)
# The generate side is labelled with the worker's host and kind (gpu, cpu; empty outside a generate worker),
# so that GPU and CPU workers are told apart without a join (worker_labels below).
WORKER_LABELS = ["host", "kind"]
WORKER = Info("improbable_worker", "A generate worker: its node name, host, kind (gpu or cpu) and the queues "
              "it consumes.")
GENERATE_LATENCY = Histogram("improbable_generate_latency_seconds", "Generate jobs: time from the start of "
                             "the job to its last token (checkpoint load included).", WORKER_LABELS,
                             buckets=LATENCY_BUCKETS)
GENERATED_TOKENS = Counter("improbable_generated_tokens", "Tokens (characters or words) generated.", WORKER_LABELS)
GENERATE_TOKENS_PER_SECOND = Histogram("improbable_generate_tokens_per_second", "Generate jobs: tokens per "
                                       "second of generation (checkpoint load excluded).", WORKER_LABELS,
                                       buckets=RATE_BUCKETS)
CHECKPOINT_CACHE = Counter("improbable_checkpoint_cache_requests", "Generate jobs whose checkpoint was "
                           "already loaded in the worker (hit) or had to be read from storage (miss).",
                           ["result", *WORKER_LABELS])
# set_function()-ed by the worker's checkpoint cache when it is created (0 in processes without one)
CHECKPOINT_CACHE_ENTRIES = Gauge("improbable_checkpoint_cache_entries", "Checkpoints loaded in this "
                                 "worker's memory.", multiprocess_mode="livesum")
CHECKPOINT_CACHE_LOADS = Gauge("improbable_checkpoint_cache_loads", "Checkpoints read from storage by this "
                               "worker since it started.", multiprocess_mode="livesum")
BOT_INTERACTIONS = Counter("improbable_bot_interactions", "Discord interactions and mentions handled by "
                           "the bot, by command and outcome.", ["command", "outcome"])
BOT_REQUEST_LATENCY = Histogram("improbable_bot_request_latency_seconds", "From a user's command to the "
                                "finished answer (enqueue, queue wait, generation, reply), by kind.",
                                ["kind"], buckets=LATENCY_BUCKETS)
BOT_GUILDS = Gauge("improbable_bot_guilds", "Guilds the bot is in.", multiprocess_mode="max")
BOT_MESSAGES = Counter("improbable_bot_messages", "Messages the bot has finished handling, by what it did: "
                       "answered, conversation (answered in a window), ambient (left to the ambient chance), "
                       "refused, not_allowed (the author may not post there), system (pins, joins...), bot "
                       "(a bot's, a webhook's or its own), failed.", ["outcome"])
BOT_GATEWAY_EVENTS = Counter("improbable_bot_gateway_events", "Gateway events the bot received, by type "
                             "(MESSAGE_CREATE, INTERACTION_CREATE, GUILD_CREATE...).", ["event"])
EVENT_LOOP_LAG = Histogram("improbable_event_loop_lag_seconds", f"How late the process's asyncio event loop "
                           f"woke from a {LAG_INTERVAL} s sleep (sampled every {LAG_INTERVAL} s): time its "
                           "handlers held the loop.", buckets=LAG_BUCKETS)
# Discord's REST budget (core/ratelimit.py), in every process that calls Discord: the bot, generate workers, beat
REST_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
DISCORD_REST_WAIT = Histogram("improbable_discord_rest_wait_seconds", "Discord REST requests held back by the "
                              "deployment's shared budget before they went (count), and how long they waited "
                              "(sum); requests that went at once are not counted.", buckets=REST_WAIT_BUCKETS)
DISCORD_RATE_LIMITED = Counter("improbable_discord_rate_limited", "Answers of 429 from Discord, by scope (global: "
                               "every request held back; route: one route's bucket) and route kind (method and "
                               "path template, e.g. POST /channels/{id}/messages).", ["scope", "route"])

METRIC_NAMES = (  # what /metrics shows (tests and the README list them)
    "improbable_build_info", "improbable_worker_info", "improbable_jobs_enqueued_total", "improbable_jobs_total",
    "improbable_jobs_in_progress",
    "improbable_job_duration_seconds", "improbable_generate_latency_seconds", "improbable_generated_tokens_total",
    "improbable_generate_tokens_per_second", "improbable_checkpoint_cache_requests_total",
    "improbable_checkpoint_cache_entries", "improbable_bot_interactions_total",
    "improbable_bot_request_latency_seconds", "improbable_bot_guilds", "improbable_bot_gateway_events_total",
    "improbable_bot_messages_total",
    "improbable_event_loop_lag_seconds", "improbable_discord_rest_wait_seconds",
    "improbable_discord_rate_limited_total",
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


def record_message(outcome: str) -> None:
    """Bot: one message handled (a text answered, or why not)."""
    BOT_MESSAGES.labels(outcome).inc()


_worker = {"host": socket.gethostname(), "kind": ""}  # this process's labels, set once a generate worker starts


def set_worker(kind: str, node: str, queues) -> None:
    """A generate worker's kind (gpu, cpu), node name and queues, for its labels and improbable_worker_info."""
    _worker["kind"] = kind
    WORKER.info({"node": node, "host": _worker["host"], "kind": kind, "queues": ",".join(sorted(queues))})


def worker_labels() -> dict[str, str]:
    """{"host", "kind"} of this process (kind empty outside a generate worker)."""
    return dict(_worker)


def observe_generation(result: dict) -> None:
    """Worker: latency, tokens and tokens/s of one finished generate job (its result dict)."""
    tokens = result.get("tokens")
    latency_ms = result.get("latency_ms")
    labels = worker_labels()
    if isinstance(tokens, int):
        GENERATED_TOKENS.labels(**labels).inc(tokens)
    if isinstance(latency_ms, (int, float)):
        GENERATE_LATENCY.labels(**labels).observe(latency_ms / 1000)
        seconds = (latency_ms - (result.get("load_ms") or 0)) / 1000
        if isinstance(tokens, int) and tokens and seconds > 0:
            GENERATE_TOKENS_PER_SECOND.labels(**labels).observe(tokens / seconds)


async def watch_event_loop(interval: float = LAG_INTERVAL) -> None:
    """Until cancelled: sleep `interval` on the running loop and record how late it woke (EVENT_LOOP_LAG).
    Lateness is the time other callbacks held the loop (CPU work, a blocking call), whatever its cause."""
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(interval)
        EVENT_LOOP_LAG.observe(max(0.0, loop.time() - start - interval))


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


def clear_readiness() -> None:
    with _ready_lock:
        _ready.clear()


def _metrics_registry() -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


def _plain(start_response, status: str, body: bytes) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
    return [body]


def health_app(registry: CollectorRegistry | None = None):
    """WSGI app: /healthz, /readyz, and prometheus_client's metrics app on every other path."""
    metrics = make_wsgi_app(registry or _metrics_registry())

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "/")
        if path == "/healthz":
            return _plain(start_response, "200 OK", b"ok\n")
        if path == "/readyz":
            waiting = sorted(name for name, ok in readiness().items() if not ok)
            if waiting:
                return _plain(start_response, "503 Service Unavailable",
                              f"not ready: {', '.join(waiting)}\n".encode())
            return _plain(start_response, "200 OK", b"ready\n")
        return metrics(environ, start_response)

    return app


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's signature
        pass


_server: WSGIServer | None = None
_registered: set[int] = set()  # ids of collectors already added to REGISTRY


def register_collectors(collectors: Iterable, registry: CollectorRegistry = REGISTRY) -> None:
    """Add cluster-wide collectors to `registry`, each once."""
    for collector in collectors:
        if id(collector) not in _registered:
            registry.register(collector)
            _registered.add(id(collector))


def start_metrics_server(port: int | None = None, addr: str | None = None, *, collectors: Iterable = (),
                         settings: Settings | None = None) -> WSGIServer | None:
    """Serve /metrics, /healthz and /readyz on `port` (default IMPROBABLE_METRICS_PORT; 0 = off) in a
    daemon thread; `collectors` (the cluster-wide gauges) are registered first. Returns the server, or
    None when off. One server per process: a second call returns the first server."""
    global _server
    settings = settings or get_settings()
    port = settings.metrics_port if port is None else port
    if not port:
        return None
    if _server is not None:
        return _server
    register_collectors(collectors)
    server = make_server(addr or settings.metrics_addr, port, health_app(), _Server, _QuietHandler)
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
