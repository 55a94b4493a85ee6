"""Logs and metrics of workers and beat, through Celery's signals, so the task code needs no metric calls.

Connected once by worker/app.py (so a process that enqueues, the bot included, counts what it sends):
logging set up as the settings say, the metrics endpoint started when a worker (`worker_init`, in the
main process) or beat starts, readiness while the worker consumes, and per task: jobs in progress,
duration, final state, generate latency and tokens, checkpoint-cache hits. The compose file runs generate
workers with the threads pool and trainers with the solo pool, so tasks run in that same process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from celery import current_task, signals

from core import logs, metrics

log = logging.getLogger(__name__)
GENERATE_TASK = "improbable.generate"

# whether a checkpoint is loaded in this process: set by worker.generation when it creates its cache (this
# module, imported with worker.app by the bot, must not import the generation code)
cache_probe: Callable[[int], bool] | None = None
_started: dict[str, float] = {}  # task id → perf_counter at start
_started_lock = threading.Lock()


def _task_name(task) -> str:
    return getattr(task, "name", None) or "unknown"


def running_task() -> tuple[str | None, str | None]:
    """(id, name) of the Celery task running in this thread (for JSON log lines)."""
    task = current_task
    if not task or task.request.id is None:
        return None, None
    return task.request.id, task.name


def _start_metrics() -> None:
    try:
        metrics.start_metrics_server()
    except OSError as e:  # port taken: the process still works, without metrics
        log.error("metrics server not started: %s", e)


def _on_setup_logging(**_kwargs) -> None:
    logs.setup_logging()


def _on_worker_init(sender=None, **_kwargs) -> None:
    metrics.set_ready("celery", False)
    _start_metrics()


def _on_after_setup(sender=None, **_kwargs) -> None:
    if sender:
        logs.set_service(str(sender))  # the worker's node name, e.g. generate@host


def _on_worker_ready(**_kwargs) -> None:
    metrics.set_ready("celery", True)


def _on_worker_shutting_down(**_kwargs) -> None:
    metrics.set_ready("celery", False)


def _on_beat_init(**_kwargs) -> None:
    logs.set_service("beat")
    _start_metrics()


def _on_task_prerun(task_id=None, task=None, args=None, **_kwargs) -> None:
    name = _task_name(task)
    with _started_lock:
        _started[task_id] = time.perf_counter()
    metrics.JOBS_IN_PROGRESS.labels(name).inc()
    if name == GENERATE_TASK and args and isinstance(args[0], dict):
        try:
            checkpoint_id = int(args[0].get("checkpoint_id"))
        except (TypeError, ValueError):
            return
        hit = cache_probe is not None and cache_probe(checkpoint_id)
        metrics.CHECKPOINT_CACHE.labels("hit" if hit else "miss").inc()


def _on_task_postrun(task_id=None, task=None, retval=None, state=None, **_kwargs) -> None:
    name = _task_name(task)
    if name == GENERATE_TASK and state == "IGNORED":
        return  # handed to the engine: worker/delivery.py calls job_finished when it answers
    job_finished(task_id, name, state, retval)


def job_finished(task_id: str, name: str, state: str | None, retval=None) -> None:
    """A job's end: its duration, final state and (generate) latency and tokens."""
    with _started_lock:
        started = _started.pop(task_id, None)
    if started is not None:
        metrics.JOB_DURATION.labels(name).observe(time.perf_counter() - started)
        metrics.JOBS_IN_PROGRESS.labels(name).dec()
    metrics.JOBS.labels(name, (state or "unknown").lower()).inc()
    if name == GENERATE_TASK and state == "SUCCESS" and isinstance(retval, dict):
        metrics.observe_generation(retval)


def _on_after_task_publish(sender=None, **_kwargs) -> None:
    metrics.JOBS_ENQUEUED.labels(str(sender or "unknown")).inc()


def _on_task_revoked(sender=None, request=None, **_kwargs) -> None:
    name = _task_name(sender) if sender is not None else getattr(request, "task", None) or "unknown"
    metrics.JOBS.labels(name, "revoked").inc()


class TaskResultsAtDebug(logging.Filter):
    """Celery's own INFO line "Task ... succeeded in ...s: <return value>" would carry a generation's prompt
    and text into the logs: the line stays, its value shows only when the logger is at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, dict) and "return_value" in args and not logging.getLogger(record.name).isEnabledFor(
                logging.DEBUG):
            record.args = {**args, "return_value": "(the result is logged at DEBUG)"}
        return True


_connected = False


def connect() -> None:
    """Connect the handlers above (once)."""
    global _connected
    if _connected:
        return
    logs.set_task_context(running_task)
    logging.getLogger("celery.app.trace").addFilter(TaskResultsAtDebug())  # workers and eager mode alike
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
    _connected = True
