"""The Celery tasks, by stable name. The bot enqueues by name (`worker.app.enqueue(name, *args)` or
`app.send_task(name, args=[...])`) and never imports this module. Payloads and results are JSON.

improbable.generate(request: GenerateRequest) -> GenerateResult — queue `generate`
    Both types are core.contracts'; Celery's `pydantic=True` validates the argument and dumps the result.
    The request's checkpoint_id is resolved by the service (the persona's active checkpoint); its params
    are core.contracts.SamplingParams (a missing seed is drawn here; max_tokens is capped by
    IMPROBABLE_MAX_GENERATE_TOKENS).
    partial text: while it runs, the task is in state PROGRESS with meta {"text": completion so far,
              "beat": the time it was written}, every Liveness.partial_interval while it grows and every
              Liveness.partial_heartbeat regardless. Short jobs finish before any PROGRESS.
    errors:  an unknown checkpoint or an invalid request fail at once (not retried).
    On a worker the task hands the request to the serving runtime (worker/serve/) and returns without
    storing a state (handed_to_engine); the runtime stores PROGRESS, SUCCESS and FAILURE under the task's
    id. In eager mode the result is returned directly.

improbable.train(run_id: int) — queue `train`
    Trains the run's persona on the run's corpus (or, for bundled personas, the recipe's corpus by name)
    with the recipe `run.recipe` + overrides `run.config` (TrainConfig fields, e.g. {"minutes": 5}).
    Progress: core.contracts.RunProgress, in the `training_runs.progress` JSON and the task's PROGRESS
              meta, every few seconds:
              {"step", "total", "epoch", "loss", "val_loss", "best_val_loss", "tokens_per_s", "eta" (s),
               "fraction" (0..1), "elapsed", "sample" (when the recipe samples), "resumed_from" (step),
               "first_step", "attempt", "owner", "heartbeat"}.
    Cancel:   db.queries.request_cancel(run) — the trainer stops within ~1 s, keeps its last checkpoint,
              and the run becomes `cancelled`.
    result:   {"run_id", "status", "error", and on success the run's metrics: "checkpoint_id", "promoted",
               "val_loss", "val_bpc", "val_ppl", "steps", "elapsed", "stop_reason", "resumed_from",
               "loss_png" (storage key of the loss curve), "sample"}.
    A redelivered job (trainer killed) resumes from the run's last checkpoint in storage.

improbable.dispatch_schedules(now_iso: str | None = None) — run by beat every minute
    Claims every due (schedule, slot) exactly once and enqueues improbable.post_scheduled for each, spread
    out at IMPROBABLE_SCHEDULE_POSTS_PER_SECOND (Celery countdowns). Past 500 due slots, the rest go out as
    improbable.dispatch_batch jobs of 500. Then posts the weekly boards that are due (worker/board.py).
    result: [[schedule_id, slot_iso], ...] claimed by this call.

improbable.dispatch_batch(due: [[schedule_id, slot_iso], ...]) — queue `generate`
    Claims these slots (those still unclaimed) and enqueues their posts, as dispatch_schedules does.
    result: [[schedule_id, slot_iso], ...] claimed by this call.

improbable.requeue_orphaned_runs() — run by beat every minute
    Re-enqueues improbable.train for running runs whose trainer stopped reporting (it died) for more than
    3 × IMPROBABLE_TRAIN_LEASE_SECONDS, so they resume without waiting for Redis's visibility timeout.

improbable.sweep_retention(now_iso: str | None = None) — run by beat every IMPROBABLE_SWEEP_SECONDS
    Deletes generations older than IMPROBABLE_RETENTION_DAYS and the data of servers the bot left more than
    IMPROBABLE_GUILD_GRACE_DAYS ago (db/retention.py), and forgets their jobs' results in the backend.
    result: {"generations": rows deleted, "guilds": [purged ids], "results_forgotten": n}.

improbable.post_scheduled(schedule_id: int, slot_iso: str) — queue `generate`
    Generates with the persona's active checkpoint and POSTs to the channel through Discord's REST API.
    result: {"status": "posted"|"failed", "message_id", "generation_id", "error"}.
"""

from __future__ import annotations

import logging
import socket
import threading
from functools import cached_property

from celery import Task
from celery.exceptions import Ignore
from celery.signals import celeryd_after_setup, task_postrun, task_received, worker_ready, worker_shutdown
from kombu.exceptions import OperationalError as KombuOperationalError
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import OperationalError as SQLOperationalError

from core import metrics
from core.contracts import GenerateRequest, GenerateResult
from core.settings import get_settings

from . import signals
from .app import GENERATE_QUEUE, GENERATE_QUEUES, app, kind_queue
from .schedules import DiscordUnavailable
from .serve.runtime import BadRequest, Runtime

log = logging.getLogger(__name__)
# Only errors that a retry can fix: the broker, the database or Discord briefly unreachable.
TRANSIENT_ERRORS = (RedisConnectionError, RedisTimeoutError, KombuOperationalError, SQLOperationalError,
                    DiscordUnavailable)
RETRY = {"autoretry_for": TRANSIENT_ERRORS, "retry_backoff": True, "retry_backoff_max": 60,
         "retry_jitter": True, "max_retries": 3}


class ServingTask(Task):
    """The generate task's class: its one instance per process owns that process's serving runtime (Celery
    registers one instance of each task per process and keeps it: the place for per-process resources)."""

    @cached_property
    def runtime(self) -> Runtime:
        return Runtime(self.app)

    def __call__(self, *args, **kwargs):
        # Celery's pydantic=True validates the argument before the task runs; its ValidationError does not
        # survive the result backend (it arrives as an empty "ValidationError([])"), a BadRequest does
        try:
            return super().__call__(*args, **kwargs)
        except ValidationError as e:
            raise BadRequest(f"invalid generate request: {e}") from None


@app.task(name="improbable.generate", base=ServingTask, bind=True, pydantic=True, acks_late=True,
          reject_on_worker_lost=True, soft_time_limit=150, time_limit=180, **RETRY)
def generate_task(self, request: GenerateRequest) -> GenerateResult:
    remote = not self.request.called_directly and not self.request.is_eager
    if self.request.id and request.request_id is None:
        # the idempotency key of the `generations` row: a redelivered or re-published job keeps its task id
        request = request.model_copy(update={"request_id": self.request.id})
    # a message Redis restored, a job the lease reaper re-published, or a retry may have been answered already
    maybe_done = bool((self.request.delivery_info or {}).get("redelivered") or self.request.retries
                      or getattr(self.request, "republished", False))
    hostname = socket.gethostname() if self.request.hostname is None else self.request.hostname
    runtime = self.runtime
    if not remote:  # eager (the bot's own process, no broker): the answer is returned here
        return runtime.serve(request, maybe_done=maybe_done).model_copy(update={"worker": hostname})
    if maybe_done:  # a run of this very task that finished: its stored answer, whole
        try:
            earlier = self.backend.get_task_meta(self.request.id)
        except Exception:  # noqa: BLE001 - the row check below still applies
            earlier = {}
        if earlier.get("status") == "SUCCESS" and isinstance(earlier.get("result"), dict):
            return GenerateResult.model_validate(earlier["result"])
    # the message is acknowledged when the task returns: from then on only the lease covers the job
    if runtime.leases is not None and not runtime.leases.written(self.request.id):
        log.warning("job %s: its lease is not written yet (Redis away?); handing it over anyway", self.request.id)
    recorded = runtime.delivery.hand_off(self.request.id, self.request, hostname,
                                         lambda: runtime.begin(request, maybe_done=maybe_done))
    if recorded is not None:  # answered from its recorded row
        return recorded.model_copy(update={"worker": hostname})
    handed_to_engine(self.request)
    return None


def handed_to_engine(request) -> None:
    """The running task's job is the engine's now: Celery stores no state when the task returns (the
    runtime's delivery stores them), its message is acknowledged, and the postrun handlers leave its lease
    and metrics to delivery (signals.HANDED_OFF). Cheaper than raising Ignore, for which Celery formats the
    traceback twice per job: ~15 % of a busy generate worker's CPU besides the engine's (py-spy,
    bench/speed/queue_load.py --side-by-side)."""
    request.ignore_result = True  # read by the result backend's mark_as_done
    setattr(request, signals.HANDED_OFF, True)


# Jobs that hold a lease from the moment their worker receives them until they end (worker/leases.py): if
# the worker dies, another generate worker re-publishes them under the same id within a lease plus a sweep.
# From receipt, not from the start of the task: a job taken (prefetched) but not started yet is covered too.
LEASED_TASKS = frozenset({"improbable.generate", "improbable.post_scheduled"})


@task_received.connect
def _lease_on_receipt(request=None, **_) -> None:
    if request is None or request.name not in LEASED_TASKS:
        return
    leases = generate_task.runtime.leases
    if leases is not None:
        leases.hold(request.id, request.name, list(request.args or ()))


@task_postrun.connect
def _release_lease(task_id=None, task=None, state=None, **_) -> None:
    # a retry is a new message under the same id: its receipt leases it again; a job handed to the engine
    # keeps its lease until the runtime's delivery answers it
    if task is None or task.name not in LEASED_TASKS or state in ("RETRY", "IGNORED") or task.request.is_eager \
            or getattr(task.request, signals.HANDED_OFF, False):
        return
    leases = generate_task.runtime.leases
    if leases is not None:
        leases.release(task_id)


# The run's own time budget (capped by IMPROBABLE_TRAIN_MAX_MINUTES) ends it; this is the backstop.
TRAIN_TIME_LIMIT = get_settings().train_max_minutes * 60 + 900


# A run outlives a database or broker outage: it trains on through one (worker/training.py) and otherwise
# retries for ~2 minutes (1, 2, 4, 8, 16, 30, 30, 30 s) before failing, resuming from its last checkpoint.
TRAIN_RETRY = {**RETRY, "max_retries": 8, "retry_backoff_max": 30}


@app.task(name="improbable.train", bind=True, acks_late=True, reject_on_worker_lost=True,
          soft_time_limit=TRAIN_TIME_LIMIT, time_limit=TRAIN_TIME_LIMIT + 60, **TRAIN_RETRY)
def train_task(self, run_id: int, resume: bool = False) -> dict:
    """A claim ticket: train the fairest queued run (worker/training.py), which need not be `run_id`. With
    `resume` (an orphaned run re-enqueued by beat), or in-process (eager: every run trains at once, in the
    thread that asked for it, so there is no queue to order), train run `run_id` itself."""
    from .training import Busy, train_run

    def publish(progress: dict) -> None:
        if not self.request.is_eager:
            self.update_state(state="PROGRESS", meta=progress)

    try:
        return train_run(int(run_id), task_id=self.request.id, on_progress=publish, transient=TRANSIENT_ERRORS,
                         ticket=not (resume or self.request.is_eager))
    except Busy:
        # A duplicate delivery while another trainer works. Look again after a lease (the run may be
        # orphaned by then), as a fresh message under the same id: a Celery retry would overwrite the
        # task's state, which the live trainer is reporting progress into.
        if self.request.is_eager:
            return {"run_id": int(run_id), "status": "running", "duplicate": True}
        self.apply_async(args=(run_id,), kwargs={"resume": resume}, countdown=get_settings().train_lease_seconds,
                         task_id=self.request.id)
        raise Ignore() from None


@app.task(name="improbable.dispatch_schedules", acks_late=False, soft_time_limit=50, time_limit=55,
          **RETRY)
def dispatch_schedules(now_iso: str | None = None) -> list:
    from datetime import datetime

    from .board import dispatch_boards
    from .schedules import dispatch

    now = datetime.fromisoformat(now_iso) if now_iso else None
    claimed = dispatch(now, fan_out=True)
    try:
        dispatch_boards(now)  # the servers' weekly boards (worker/board.py)
    except Exception:  # noqa: BLE001 - the scheduled posts are dispatched: the boards are due again next tick
        log.exception("posting the weekly boards failed")
    return claimed


@app.task(name="improbable.dispatch_batch", acks_late=False, soft_time_limit=50, time_limit=55, **RETRY)
def dispatch_batch(due: list) -> list:
    from .schedules import dispatch_batch as claim_and_enqueue

    return claim_and_enqueue([(int(s), slot) for s, slot in due])


@app.task(name="improbable.requeue_orphaned_runs", acks_late=False, soft_time_limit=50, time_limit=55, **RETRY)
def requeue_orphaned_runs() -> list[int]:
    """Beat, every minute: resume runs whose trainer died, without waiting for Redis's visibility timeout."""

    from kombu.exceptions import ChannelError

    from .app import TRAIN_QUEUE, enqueue
    from .training import orphaned_runs, unticketed_runs

    runs = orphaned_runs()
    for run_id in runs:
        enqueue("improbable.train", run_id, kwargs={"resume": True})  # this run, not a ticket for the fairest
    try:
        with app.connection_for_read() as conn:
            waiting = conn.default_channel.queue_declare(TRAIN_QUEUE, passive=True).message_count
    except ChannelError:  # (Redis drops an empty queue's key)
        waiting = 0
    if not waiting:  # queued runs and no ticket in the queue: tickets for them (worker/training.py)
        for run_id in unticketed_runs():
            enqueue("improbable.train", run_id)
    return runs


@app.task(name="improbable.sweep_retention", acks_late=False, soft_time_limit=600, time_limit=660, **RETRY)
def sweep_retention(now_iso: str | None = None) -> dict:
    """Beat, every IMPROBABLE_SWEEP_SECONDS: delete generations past the retention and purge the servers the
    bot left more than the grace period ago (db/retention.py), then forget their jobs' stored results."""
    from datetime import datetime

    from db.retention import sweep

    from .app import forget_results

    result = sweep(datetime.fromisoformat(now_iso) if now_iso else None)
    forget_results(result.task_ids)
    return {"generations": result.generations, "guilds": result.guilds, "results_forgotten": len(result.task_ids)}


@app.task(name="improbable.post_scheduled", acks_late=True, reject_on_worker_lost=True,
          soft_time_limit=150, time_limit=180, **RETRY)
def post_scheduled(schedule_id: int, slot_iso: str) -> dict:
    from .schedules import post

    return post(int(schedule_id), slot_iso, generate_task.runtime)


def worker_kind(prefork: bool) -> str:
    """This generate worker's kind: IMPROBABLE_WORKER_KIND, or with auto its device's (IMPROBABLE_DEVICE, or
    with auto too the device its engine picks, made here: CUDA is only touched by the engine's thread, and
    never in a prefork parent, which is then taken for cpu)."""
    settings = get_settings()
    if settings.worker_kind != "auto":
        return settings.worker_kind
    if settings.device != "auto":
        return "gpu" if settings.device.startswith("cuda") else "cpu"
    if prefork:
        log.warning("a prefork generate worker cannot look for a GPU before it forks: kind cpu "
                    "(set IMPROBABLE_WORKER_KIND)")
        return "cpu"
    return "gpu" if generate_task.runtime.engine.device.type == "cuda" else "cpu"


@celeryd_after_setup.connect
def consume_by_kind(sender=None, instance=None, **_) -> None:
    """A worker that consumes `generate` also consumes its kind's queue (generate.gpu, generate.cpu), and
    labels its metrics with its host and kind. Before the worker consumes anything: its queues are final."""
    from celery.concurrency.prefork import TaskPool as PreforkPool

    queues = instance.app.amqp.queues
    consumed = set(queues.consume_from)  # (without -Q: every queue)
    if not consumed & set(GENERATE_QUEUES):
        return
    kind = worker_kind(issubclass(instance.pool_cls, PreforkPool))
    if GENERATE_QUEUE in consumed and kind_queue(kind) not in consumed:
        queues.select_add(kind_queue(kind))
        consumed.add(kind_queue(kind))
    metrics.set_worker(kind, str(sender), consumed)
    log.info("generate worker %s: kind %s, queues %s", sender, kind, ", ".join(sorted(consumed)))


@worker_ready.connect
def warm_up(sender, **_) -> None:
    """A generate worker imports torch and starts its engine as soon as it is up, not on the first request.
    Never in a prefork parent: CUDA must not be initialised before the fork (the children start it lazily)."""
    try:
        from celery.concurrency.prefork import TaskPool as PreforkPool

        prefork = issubclass(sender.controller.pool_cls, PreforkPool)
        queues = {q.name for q in sender.task_consumer.queues}
    except Exception:  # noqa: BLE001 - warming up is an optimisation; never break the worker over it
        return
    if not queues & set(GENERATE_QUEUES):
        return
    if sender.app.conf.broker_url.startswith(("redis", "unix")):
        patch_kombu_restore()
    if not prefork:
        runtime = generate_task.runtime
        threading.Thread(target=lambda: runtime.engine, name="warm-up", daemon=True).start()
        if runtime.leases is not None:  # the reaper runs in every generate worker, busy or idle
            runtime.leases.start()


def patch_kombu_restore() -> None:
    """When the broker connection drops (Redis restarting), kombu's Redis channel tries to put the running
    jobs back on the queue as it closes; with the connection gone that raises AttributeError inside kombu
    (5.7), which Celery treats as unrecoverable: the worker exits, and its jobs with it. Without that restore
    the running jobs simply finish, and stay covered by their lease and the visibility timeout (a late
    redelivery answers from its recorded row). Only generate workers turn it off: their jobs have leases."""
    from kombu.transport.redis import Channel

    Channel.do_restore = False


@worker_shutdown.connect
def answer_before_exit(**_) -> None:
    """A warm shutdown answers the jobs already handed to the engine (their tasks have returned, so Celery
    does not wait for them); what is left after 50 s is re-published by another worker (its lease)."""
    runtime = generate_task.__dict__.get("runtime")
    if runtime is not None and not runtime.drain(50.0):
        log.warning("shutting down with generate jobs unanswered: another worker takes them over (leases)")
