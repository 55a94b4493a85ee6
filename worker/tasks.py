"""The Celery tasks, by stable name. The bot enqueues by name (`worker.app.enqueue(name, *args)` or
`app.send_task(name, args=[...])`) and never imports this module. Payloads and results are JSON.

improbable.generate(request) — queue `generate`
    request: core.contracts.GenerateRequest: {"checkpoint_id": int (resolved by the bot: the persona's
              active checkpoint), "persona": slug, "prompt": str,
              "params": core.contracts.SamplingParams values (seed set by the caller; None values and
                        missing keys mean the defaults; max_tokens is capped by IMPROBABLE_MAX_GENERATE_TOKENS),
              "guild_id", "channel_id", "user_id": ints or null,
              optional "interaction_id", "reply_to" (echoed back), "parent_generation_id" (regenerate)}
    result:  {"text": the completion, "full_text": prompt + completion as the tokenizer joins them,
              "seed", "tokens", "finish_reason" (length|stop|sentence), "unknown": prompt characters/words
              outside the vocabulary, "latency_ms", "load_ms", "batch_peak": the largest batch this request
              was stepped in, "generation_id" (row in `generations`), "checkpoint_id",
              "worker": hostname, and the echoed persona/guild_id/channel_id/user_id/interaction_id/reply_to}
    partial text: while it runs, the task is in state PROGRESS with meta {"text": completion so far,
              "beat": the time it was written}, updated at most every IMPROBABLE_PARTIAL_INTERVAL seconds
              (0.5) while it grows, and every 2 s regardless (a heartbeat). Read it with
              `AsyncResult(id).get(on_message=callback)` (the Redis backend pushes every state) or by
              polling `AsyncResult(id).state/.info`. Short jobs finish before any PROGRESS.
    errors:  an unknown checkpoint or invalid params fail at once (BadRequest, not retried).
    On a worker the task hands the request to the engine and returns without a state (Ignore); the
    engine's side stores PROGRESS, SUCCESS and FAILURE under the task's id (worker/delivery.py). In eager
    mode the result is returned directly.

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
    Claims every due (schedule, slot) exactly once and enqueues improbable.post_scheduled for each.
    result: [[schedule_id, slot_iso], ...] claimed by this call.

improbable.requeue_orphaned_runs() — run by beat every minute
    Re-enqueues improbable.train for running runs whose trainer stopped reporting (it died) for more than
    3 × IMPROBABLE_TRAIN_LEASE_SECONDS, so they resume without waiting for Redis's visibility timeout.

improbable.post_scheduled(schedule_id: int, slot_iso: str) — queue `generate`
    Generates with the persona's active checkpoint and POSTs to the channel through Discord's REST API.
    result: {"status": "posted"|"failed", "message_id", "generation_id", "error"}.
"""

from __future__ import annotations

import logging
import socket
import threading

from celery.exceptions import Ignore
from celery.signals import task_postrun, task_received, worker_ready, worker_shutdown
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import OperationalError as SQLOperationalError

from core.settings import get_settings

from .app import GENERATE_QUEUE, app
from .schedules import DiscordUnavailable

log = logging.getLogger(__name__)
# Only errors that a retry can fix: the broker, the database or Discord briefly unreachable.
TRANSIENT_ERRORS = (RedisConnectionError, RedisTimeoutError, KombuOperationalError, SQLOperationalError,
                    DiscordUnavailable)
RETRY = {"autoretry_for": TRANSIENT_ERRORS, "retry_backoff": True, "retry_backoff_max": 60,
         "retry_jitter": True, "max_retries": 3}


@app.task(name="improbable.generate", bind=True, acks_late=True, reject_on_worker_lost=True,
          soft_time_limit=150, time_limit=180, **RETRY)
def generate_task(self, request: dict) -> dict:
    from .generation import begin, serve_request

    remote = not self.request.called_directly and not self.request.is_eager
    if isinstance(request, dict) and self.request.id and not isinstance(request.get("request_id"), str):
        # the idempotency key of the `generations` row: a redelivered or re-published job keeps its task id
        request = {**request, "request_id": self.request.id}
    # a message Redis restored, a job the lease reaper re-published, or a retry may have been answered already
    maybe_done = bool((self.request.delivery_info or {}).get("redelivered") or self.request.retries
                      or getattr(self.request, "republished", False))
    hostname = socket.gethostname() if self.request.hostname is None else self.request.hostname
    if not remote:  # eager (the bot's own process, no broker): the answer is returned here
        return {**serve_request(request, maybe_done=maybe_done), "worker": hostname}
    if maybe_done:  # a run of this very task that finished: its stored answer, whole
        try:
            earlier = self.backend.get_task_meta(self.request.id)
        except Exception:  # noqa: BLE001 - the row check below still applies
            earlier = {}
        if earlier.get("status") == "SUCCESS" and isinstance(earlier.get("result"), dict):
            return earlier["result"]
    recorded = _hand_off(self, hostname, lambda: begin(request, maybe_done=maybe_done))
    if recorded is not None:  # answered from its recorded row
        return {**recorded, "worker": hostname}
    raise Ignore()  # no state stored, message acknowledged: worker/delivery.py answers from the engine's side


def _hand_off(task, hostname: str, start) -> dict | None:
    from .delivery import delivery
    from .leases import leases

    holder = leases()
    # the message is acknowledged when the task returns: from then on only the lease covers the job
    if holder is not None and not holder.written(task.request.id):
        log.warning("job %s: its lease is not written yet (Redis away?); handing it over anyway", task.request.id)
    return delivery().hand_off(task.request.id, task.request, hostname, start)


# Jobs that hold a lease from the moment their worker receives them until they end (worker/leases.py): if
# the worker dies, another generate worker re-publishes them under the same id within a lease plus a sweep.
# From receipt, not from the start of the task: a job taken (prefetched) but not started yet is covered too.
LEASED_TASKS = frozenset({"improbable.generate", "improbable.post_scheduled"})


@task_received.connect
def _lease_on_receipt(request=None, **_) -> None:
    if request is None or request.name not in LEASED_TASKS:
        return
    from .leases import leases

    holder = leases()
    if holder is not None:
        holder.hold(request.id, request.name, list(request.args or ()))


@task_postrun.connect
def _release_lease(task_id=None, task=None, state=None, **_) -> None:
    # a retry is a new message under the same id: its receipt leases it again; a job handed to the engine
    # (IGNORED) keeps its lease until worker/delivery.py answers it
    if task is None or task.name not in LEASED_TASKS or state in ("RETRY", "IGNORED") or task.request.is_eager:
        return
    from .leases import leases

    holder = leases()
    if holder is not None:
        holder.release(task_id)


# The run's own time budget (capped by IMPROBABLE_TRAIN_MAX_MINUTES) ends it; this is the backstop.
TRAIN_TIME_LIMIT = get_settings().train_max_minutes * 60 + 900


# A run outlives a database or broker outage: it trains on through one (worker/training.py) and otherwise
# retries for ~2 minutes (1, 2, 4, 8, 16, 30, 30, 30 s) before failing, resuming from its last checkpoint.
TRAIN_RETRY = {**RETRY, "max_retries": 8, "retry_backoff_max": 30}


@app.task(name="improbable.train", bind=True, acks_late=True, reject_on_worker_lost=True,
          soft_time_limit=TRAIN_TIME_LIMIT, time_limit=TRAIN_TIME_LIMIT + 60, **TRAIN_RETRY)
def train_task(self, run_id: int) -> dict:
    from .training import Busy, train_run

    def publish(progress: dict) -> None:
        if not self.request.is_eager:
            self.update_state(state="PROGRESS", meta=progress)

    try:
        return train_run(int(run_id), task_id=self.request.id, on_progress=publish, transient=TRANSIENT_ERRORS)
    except Busy:
        # A duplicate delivery while another trainer works. Look again after a lease (the run may be
        # orphaned by then), as a fresh message under the same id: a Celery retry would overwrite the
        # task's state, which the live trainer is reporting progress into.
        if self.request.is_eager:
            return {"run_id": int(run_id), "status": "running", "duplicate": True}
        self.apply_async(args=(run_id,), countdown=get_settings().train_lease_seconds, task_id=self.request.id)
        raise Ignore() from None


@app.task(name="improbable.dispatch_schedules", acks_late=False, soft_time_limit=50, time_limit=55,
          **RETRY)
def dispatch_schedules(now_iso: str | None = None) -> list:
    from datetime import datetime

    from .schedules import dispatch

    return dispatch(datetime.fromisoformat(now_iso) if now_iso else None)


@app.task(name="improbable.requeue_orphaned_runs", acks_late=False, soft_time_limit=50, time_limit=55, **RETRY)
def requeue_orphaned_runs() -> list[int]:
    """Beat, every minute: resume runs whose trainer died, without waiting for Redis's visibility timeout."""
    from .app import enqueue
    from .training import orphaned_runs

    runs = orphaned_runs()
    for run_id in runs:
        enqueue("improbable.train", run_id)
    return runs


@app.task(name="improbable.post_scheduled", acks_late=True, reject_on_worker_lost=True,
          soft_time_limit=150, time_limit=180, **RETRY)
def post_scheduled(schedule_id: int, slot_iso: str) -> dict:
    from .schedules import post

    return post(int(schedule_id), slot_iso)


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
    if GENERATE_QUEUE in queues and sender.app.conf.broker_url.startswith(("redis", "unix")):
        # When the broker connection drops (Redis restarting), kombu's Redis channel tries to put the running
        # jobs back on the queue as it closes; with the connection gone that raises AttributeError inside
        # kombu (5.7), which Celery treats as unrecoverable: the worker exits, and its jobs with it (seen in
        # tests/faults). Without that restore the running jobs simply finish, and stay covered by their
        # lease and the visibility timeout (a late redelivery answers from its recorded row).
        from kombu.transport.redis import Channel

        Channel.do_restore = False
    if GENERATE_QUEUE in queues and not prefork:
        from .generation import engine
        from .leases import leases

        threading.Thread(target=engine, name="warm-up", daemon=True).start()
        holder = leases()
        if holder is not None:  # the reaper runs in every generate worker, busy or idle
            holder.start()


@worker_shutdown.connect
def answer_before_exit(**_) -> None:
    """A warm shutdown answers the jobs already handed to the engine (their tasks have returned, so Celery
    does not wait for them); what is left after 50 s is re-published by another worker (its lease)."""
    from .delivery import drain

    if not drain(50.0):
        log.warning("shutting down with generate jobs unanswered: another worker takes them over (leases)")
