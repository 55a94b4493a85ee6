"""Logs and metrics of workers and beat, through Celery's signals, so the task code needs no metric calls.

Connected once by worker/app.py (so a process that enqueues, the bot included, counts what it sends):
logging set up as the settings say, the metrics endpoint started when a worker (`worker_init`, in the
main process) or beat starts, readiness while the worker consumes, and per task: jobs in progress,
duration, final state, generate latency and tokens, checkpoint-cache hits. The compose file runs generate
workers with the threads pool and trainers with the solo pool, so tasks run in that same process.
"""

from __future__ import annotations

import logging
import time

from celery import current_task, signals

from core import logs, metrics

log = logging.getLogger(__name__)
GENERATE_TASK = "improbable.generate"

STARTED = "improbable_started"  # the attribute of a task's request (its Context) holding its perf_counter start
HANDED_OFF = "improbable_handed_off"  # set on a generate task's request when its job went to the engine


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
    if task is not None:
        setattr(task.request, STARTED, time.perf_counter())
    metrics.JOBS_IN_PROGRESS.labels(name).inc()
    if name == GENERATE_TASK and args and isinstance(args[0], dict):
        try:
            checkpoint_id = int(args[0].get("checkpoint_id"))
        except (TypeError, ValueError):
            return
        # a runtime this process has not made yet holds no checkpoint (and must not be made here)
        runtime = task.__dict__.get("runtime")
        hit = runtime is not None and runtime.loaded(checkpoint_id)
        metrics.CHECKPOINT_CACHE.labels(result="hit" if hit else "miss", **metrics.worker_labels()).inc()


def _on_task_postrun(task_id=None, task=None, retval=None, state=None, **_kwargs) -> None:
    name = _task_name(task)
    if name == GENERATE_TASK and task is not None and getattr(task.request, HANDED_OFF, False):
        return  # handed to the engine: worker/serve/delivery.py calls job_finished when it answers
    started = getattr(task.request, STARTED, None) if task is not None else None
    job_finished(task_id, name, state, retval, started)


def job_finished(task_id: str, name: str, state: str | None, retval=None, started: float | None = None) -> None:
    """A job's end: its duration (from `started`, a perf_counter), final state and (generate) latency and tokens."""
    if started is not None:
        metrics.JOB_DURATION.labels(name).observe(time.perf_counter() - started)
        metrics.JOBS_IN_PROGRESS.labels(name).dec()
    metrics.JOBS.labels(name, (state or "unknown").lower()).inc()
    if hasattr(retval, "model_dump"):
        retval = retval.model_dump()
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


def connect() -> None:
    """Connect the handlers above (once per process: each has a dispatch_uid, Celery's own de-duplication)."""
    logs.set_task_context(running_task)
    results = logging.getLogger("celery.app.trace")
    if not any(isinstance(f, TaskResultsAtDebug) for f in results.filters):  # workers and eager mode alike
        results.addFilter(TaskResultsAtDebug())
    handlers = {
        signals.setup_logging: _on_setup_logging, signals.worker_init: _on_worker_init,
        signals.celeryd_after_setup: _on_after_setup, signals.worker_ready: _on_worker_ready,
        signals.worker_shutting_down: _on_worker_shutting_down, signals.beat_init: _on_beat_init,
        signals.task_prerun: _on_task_prerun, signals.task_postrun: _on_task_postrun,
        signals.task_revoked: _on_task_revoked, signals.after_task_publish: _on_after_task_publish,
    }
    for signal, handler in handlers.items():
        signal.connect(handler, weak=False, dispatch_uid=f"improbable.{handler.__name__}")
