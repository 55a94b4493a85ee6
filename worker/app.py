"""The Celery app: broker, queues, routes, reliability settings. Imports only celery, kombu and core (and
worker.signals, the logs and metrics of workers), so the bot can enqueue without importing torch (a test
checks).

    celery -A worker.app worker -Q generate --pool threads -c 16 -n generate@%h   # one per GPU / machine
                                      # (and generate.gpu or generate.cpu, by its kind: worker/tasks.py)
    celery -A worker.app worker -Q train --pool solo -n train@%h                  # one per training GPU
    celery -A worker.app beat                                                     # exactly one

Enqueue by name with `enqueue("improbable.generate", request)` (or `app.send_task`); the task names and
their JSON payloads are documented in worker/tasks.py. With no broker configured (IMPROBABLE_BROKER_URL
empty) `enqueue` runs the task in-process through the same code (Celery's eager mode): the embedded default.

Why these settings:
- JSON only: a message can never run code on the worker.
- acks_late + reject_on_worker_lost: a job is acknowledged only when it is done, so a worker killed mid-job
  gives it back. Safe here because a generate job records one row per request id (generations.request_id)
  and train resumes from its last checkpoint. On Redis, a message of a dead worker comes back after
  `visibility_timeout` (2 h), which must exceed the longest job (a train run guards against the duplicate an
  overrun would cause; see worker/training.py). Generate jobs do not wait for it: they hold a lease renewed by
  their worker's heartbeat, and any generate worker re-publishes the jobs of a dead one (worker/leases.py).
  A generate task hands its job to the engine and returns (no state stored; its message is acknowledged), and
  the engine's side stores its states and releases the lease (worker/delivery.py), so the Celery threads
  (`-c`) do not bound the batch: they only validate, load checkpoints and hand over (16 is plenty).
- Routing by capability: every generate worker consumes `generate` and the queue of its kind,
  `generate.gpu` or `generate.cpu` (IMPROBABLE_WORKER_KIND, auto-detected from its device). Generate jobs
  and scheduled posts go to IMPROBABLE_GENERATE_QUEUE (`generate`: any worker); an operator with GPU hosts
  sends them to `generate.gpu` so that CPU workers never take one (docs/deploy.md). Beat's own jobs stay
  on `generate`: any worker will do.
- prefetch multiplier 1: a trainer takes one run at a time; a generate worker reserves one message per
  thread and holds up to `generate_max_streams` jobs in its engine.
- Time limits are set per task; note that Celery enforces them only in the prefork pool, so the generate
  task also enforces its own deadline and training its own time budget.
"""

from __future__ import annotations

import logging

from celery import Celery
from celery.signals import celeryd_init
from kombu import Queue
from kombu.utils.url import maybe_sanitize_url

from core.settings import Settings, get_settings
from worker import signals

signals.connect()  # JSON logs and Prometheus metrics of workers (and of what the bot enqueues)

log = logging.getLogger(__name__)
GENERATE_QUEUE, TRAIN_QUEUE = "generate", "train"
WORKER_KINDS = ("gpu", "cpu")
GENERATE_QUEUES = (GENERATE_QUEUE, *(f"{GENERATE_QUEUE}.{kind}" for kind in WORKER_KINDS))
TASK_NAMES = ("improbable.generate", "improbable.train", "improbable.dispatch_schedules", "improbable.dispatch_batch",
              "improbable.post_scheduled", "improbable.requeue_orphaned_runs", "improbable.sweep_retention")


def kind_queue(kind: str) -> str:
    """The generate queue that only workers of this kind (gpu, cpu) consume."""
    return f"{GENERATE_QUEUE}.{kind}"


def routes(generate_queue: str = GENERATE_QUEUE) -> dict:
    """Each task's queue; generate jobs and scheduled posts to `generate_queue` (IMPROBABLE_GENERATE_QUEUE)."""
    return {
        "improbable.generate": {"queue": generate_queue},
        "improbable.post_scheduled": {"queue": generate_queue},  # it generates, so it runs where the models are
        "improbable.dispatch_schedules": {"queue": GENERATE_QUEUE},  # cheap SQL; any generate worker will do
        "improbable.dispatch_batch": {"queue": GENERATE_QUEUE},  # (a share of a big tick, claimed in parallel)
        "improbable.requeue_orphaned_runs": {"queue": GENERATE_QUEUE},  # (a busy trainer could not take it)
        "improbable.sweep_retention": {"queue": GENERATE_QUEUE},  # SQL, storage and the result backend
        "improbable.train": {"queue": TRAIN_QUEUE},
    }
DISPATCH_EVERY_SECONDS = 60.0
RESULT_EXPIRES_SECONDS = 3600
RESULT_KEY_PREFIX = "celery-task-meta-"  # Celery's key-value result backends (Redis)
# the generate leases (worker/serve/leases.py) in the broker's Redis: task id -> the worker holding the job
GENERATE_LEASES = "improbable:generate:leases"


def celery_config(settings: Settings) -> dict:
    broker = settings.broker_url
    connect_timeout = settings.broker_connect_timeout
    transport_options = {
        "visibility_timeout": settings.visibility_timeout,
        # sweep for messages of dead workers often enough for a short visibility timeout
        "unacked_restore_interval": max(1, min(10, settings.visibility_timeout // 4)),
        "unacked_restore_throttle": 1,
        "socket_connect_timeout": connect_timeout,
    }
    conf = {
        "broker_url": broker or None,
        "result_backend": (settings.result_backend or broker) or None,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_queues": [*(Queue(q) for q in GENERATE_QUEUES), Queue(TRAIN_QUEUE)],
        "task_default_queue": GENERATE_QUEUE,
        "task_routes": routes(settings.generate_queue),
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_track_started": True,  # STARTED carries the worker's hostname and pid
        "worker_prefetch_multiplier": 1,
        "worker_hijack_root_logger": False,
        # a result is read while its job runs (and by a restarted bot soon after): an hour covers every job's
        # deadline, and the texts do not linger in Redis (the retention of generations is the SQL rows')
        "result_expires": RESULT_EXPIRES_SECONDS,
        "result_extended": True,
        "broker_connection_timeout": connect_timeout,
        "broker_connection_retry_on_startup": True,  # a worker waits for Redis; a publisher does not (below)
        "broker_transport_options": transport_options,
        # The result store gives up after ~2 s too (Celery's default retries for 20 s).
        "result_backend_transport_options": {"retry_policy": {"max_retries": 3, "interval_start": 0,
                                                              "interval_step": 0.3, "interval_max": 1}},
        "redis_socket_connect_timeout": connect_timeout,
        "redis_retry_on_timeout": True,
        "task_publish_retry_policy": {"max_retries": 1, "interval_start": 0, "interval_step": 0.2,
                                      "interval_max": 0.5},
        "beat_schedule": {
            "dispatch-schedules": {"task": "improbable.dispatch_schedules", "schedule": DISPATCH_EVERY_SECONDS,
                                   "options": {"expires": DISPATCH_EVERY_SECONDS}},
            "requeue-orphaned-runs": {"task": "improbable.requeue_orphaned_runs", "schedule": DISPATCH_EVERY_SECONDS,
                                      "options": {"expires": DISPATCH_EVERY_SECONDS}},
            "sweep-retention": {"task": "improbable.sweep_retention", "schedule": settings.sweep_seconds,
                                "options": {"expires": settings.sweep_seconds}},
        },
        "timezone": "UTC",
        "enable_utc": True,
        "task_always_eager": not broker,
        "task_eager_propagates": True,
        "task_store_eager_result": False,
    }
    return conf


# Workers, unlike the bot, wait out a result store that is away for up to ~35 s (a Redis restart): a finished
# job whose result cannot be stored is a lost answer. (The bot keeps the short policy above: it must fail
# fast when it enqueues, and it rides out outages while following a job itself, bot/jobs.py.)
def worker_result_retry(liveness) -> dict:
    """Kombu's retry policy for storing a result: pauses growing by 0.5 s up to 2 s, for about
    `liveness.result_retry` seconds (which the bot's `liveness.outage` covers)."""
    return {"max_retries": max(1, round(liveness.result_retry / 2)), "interval_start": 0.5, "interval_step": 0.5,
            "interval_max": 2}


@celeryd_init.connect
def _workers_wait_out_outages(conf=None, **_) -> None:
    if conf is not None:
        conf.result_backend_transport_options = {"retry_policy": worker_result_retry(get_settings().liveness)}
        # storing a result first reads the stored state (a plain GET, outside the retry policy above): retry
        # the whole store on connection errors, 10 times with random pauses (full jitter) up to 8 s: 20-32 s in
        # all with Redis down (~26 s on average). The generate jobs' final states, which must outlive a 30 s
        # restart, wait out `liveness.result_retry` themselves (worker/serve/states.py).
        conf.result_backend_always_retry = True
        conf.result_backend_max_retries = 10
        conf.result_backend_base_sleep_between_retries_ms = 200
        conf.result_backend_max_sleep_between_retries_ms = 8000


def make_app(settings: Settings | None = None) -> Celery:
    app = Celery("improbable", include=["worker.tasks"], set_as_current=False)
    app.conf.update(celery_config(settings or get_settings()))
    return app


app = make_app()


def configure(settings: Settings | None = None) -> Celery:
    """Re-read the settings into the shared app (tests and CLIs that change the environment late)."""
    app.conf.update(celery_config(settings or get_settings()))
    # drop everything built from the old URLs: the connection pool, the producer pool made from it, and this
    # thread's result backend (a test that stopped its own Redis otherwise leaves later publishers on it)
    app._pool = None
    app.amqp._producer_pool = None
    app._local.__dict__.pop("backend", None)
    return app


class BrokerUnavailable(ConnectionError):
    """The job queue (Redis) cannot be reached: say so to the user instead of waiting."""


def is_eager() -> bool:
    return bool(app.conf.task_always_eager)


def enqueue(name: str, *args, **options):
    """Send task `name` with positional JSON arguments; returns its AsyncResult (EagerResult in-process).

    With a broker this is `app.send_task`; a dead broker raises BrokerUnavailable within a few seconds.
    Without one, the task runs here and now."""
    if is_eager():
        # registers the tasks (the app's `include`, worker.tasks): by name, so that importing this module,
        # as the bot does, never pulls in the tasks and what they import
        app.loader.import_default_modules()
        return app.tasks[name].apply(args=args, **options)
    try:
        return app.send_task(name, args=args, **options)
    except Exception as e:
        if _is_connection_error(e):
            where = maybe_sanitize_url(app.conf.broker_url)
            raise BrokerUnavailable(f"the job queue at {where} is unreachable; is Redis running?") from e
        raise


def _is_connection_error(error: BaseException | None) -> bool:
    """kombu's OperationalError from the broker, or the result store's give-up (a RuntimeError caused by a
    redis ConnectionError): anything along the cause chain that is a connection failure."""
    from kombu.exceptions import OperationalError

    while error is not None:
        if isinstance(error, OperationalError | ConnectionError | TimeoutError) \
                or type(error).__name__ in ("ConnectionError", "TimeoutError"):
            return True
        error = error.__cause__ or error.__context__
    return False


def _names_user(meta: dict, user_id: int) -> bool:
    """Whether a stored result (its request's arguments, or the result's routing ids) belongs to the user."""
    values = [meta.get("result"), *(meta.get("args") or ()), *(meta.get("kwargs") or {}).values()]
    return any(isinstance(v, dict) and user_id in (v.get("user_id"), v.get("quoted_user_id")) for v in values)


def forget_results(task_ids, user_id: int | None = None) -> int:
    """Delete the stored results of these tasks from the result backend (Celery's `AsyncResult.forget`), and
    with `user_id` every other stored result whose request names that user. Returns how many were looked at;
    nothing to do in eager mode (results are not stored)."""
    if is_eager() or not app.conf.result_backend:
        return 0
    backend = app.backend
    task_ids = set(filter(None, task_ids))
    client = getattr(backend, "client", None)
    if user_id is not None and client is not None:
        import json

        for key in client.scan_iter(match=f"{RESULT_KEY_PREFIX}*", count=500):
            raw = client.get(key)
            try:
                meta = json.loads(raw) if raw else {}
            except ValueError:
                continue
            if isinstance(meta, dict) and _names_user(meta, user_id):
                task_ids.add((key.decode() if isinstance(key, bytes) else key).removeprefix(RESULT_KEY_PREFIX))
    for task_id in task_ids:
        backend.forget(task_id)
    return len(task_ids)


def whereabouts(task_id: str, name: str) -> tuple[bool, int] | None:
    """(whether a generate worker holds the job's lease, how many messages wait in the queue its task goes
    to), or None when the broker cannot tell (not Redis, eager, unreachable). A worker leases a job the
    moment it receives it (worker/serve/leases.py); a job with no lease, no state and nothing ahead of it
    in its queue was lost on its way: Redis hands a message over when a worker's BRPOP asks for it, and a
    worker killed before reading it (or before leasing it) takes it along (bot/jobs.py sends it again)."""
    if is_eager() or not str(app.conf.broker_url).startswith(("redis://", "rediss://", "unix://")):
        return None
    from kombu.exceptions import ChannelError

    queue = (app.conf.task_routes or {}).get(name, {}).get("queue", GENERATE_QUEUE)
    try:
        with app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, timeout=1.0)
            channel = conn.default_channel
            leased = bool(channel.client.hexists(GENERATE_LEASES, task_id))
            try:
                waiting = channel.queue_declare(queue=queue, passive=True).message_count
            except ChannelError:  # a Redis queue is its non-empty lists: none, none waiting
                waiting = 0
            return leased, waiting
    except Exception as e:  # noqa: BLE001 - cannot tell: the caller assumes nothing was lost
        log.debug("whereabouts of %s: %s", task_id, e)
        return None


def broker_available(timeout: float = 1.0) -> bool:
    """True when the broker answers within `timeout` seconds (always True in eager mode)."""
    if is_eager():
        return True
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not available"
        return False


class QueueDepthCollector:
    """Cluster gauges from the broker, through kombu's and Celery's public API: jobs waiting in each queue
    (a passive queue declare; on Redis kombu sums the queue's priority lists) and jobs reserved by workers
    but not yet acknowledged (running or prefetched, as the workers report them to `inspect`)."""

    def __init__(self, celery_app: Celery | None = None, queues: tuple[str, ...] = (*GENERATE_QUEUES, TRAIN_QUEUE),
                 timeout: float = 1.0):
        self.app, self.queues, self.timeout = celery_app or app, queues, timeout

    def _depth(self, conn, queue: str) -> int:
        from amqp.exceptions import NotFound
        from kombu.exceptions import ChannelError

        channel = conn.channel()  # one per queue: on AMQP a refused passive declare closes its channel
        try:
            return channel.queue_declare(queue=queue, passive=True).message_count
        except (ChannelError, NotFound):  # never declared, or empty (a Redis queue is its non-empty lists)
            return 0
        finally:
            channel.close()

    def _reserved(self) -> int:
        inspect = self.app.control.inspect(timeout=self.timeout)
        replies = [inspect.active() or {}, inspect.reserved() or {}]
        return sum(len(jobs or ()) for answer in replies for jobs in answer.values())

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        depth = GaugeMetricFamily("improbable_queue_depth", "Jobs waiting in a Celery queue.", labels=["queue"])
        reserved = GaugeMetricFamily("improbable_jobs_reserved", "Jobs taken by workers and not yet "
                                     "acknowledged (running or prefetched).")
        up = GaugeMetricFamily("improbable_broker_up", "1 if the broker answered this scrape.")
        try:
            with self.app.connection_for_read() as conn:
                conn.ensure_connection(max_retries=1, timeout=self.timeout)
                for queue in self.queues:
                    depth.add_metric([queue], self._depth(conn, queue))
            reserved.add_metric([], self._reserved())
            up.add_metric([], 1)
            yield depth
            yield reserved
        except Exception as e:  # noqa: BLE001 - a scrape must not fail because the broker is away
            log.warning("queue depth: broker %s unreachable: %s", maybe_sanitize_url(self.app.conf.broker_url), e)
            up.add_metric([], 0)
        yield up
