"""Generate jobs answered from the engine's side, so that a job does not hold a Celery thread while it runs.

A worker's `improbable.generate` task validates its request, hands it to the engine (Runtime.begin)
and returns with its request's `ignore_result` set (worker/tasks.py, handed_to_engine): the worker stores no
state for it, acknowledges its message, and the thread takes the next job. The batch is then bounded by the
engine, not by `-c` (a worker with 4 threads batches hundreds of streams; tests/worker/test_generate.py).
From there this module's one thread follows the job and has its states written to the result backend, as
the task would have (bot/jobs.py):
- PROGRESS {"text": completion so far, "beat": time} every `Liveness.partial_interval` while the text grows
  (less often when many jobs run: `partial_spacing`),
  and the same again every `Liveness.partial_heartbeat` (the bot takes a silent job for a dead one);
- SUCCESS with the task's GenerateResult once its row is recorded (recording.py: one row per request id,
  written many per transaction);
- FAILURE with what failed: the sampler step, the deadline (`generate_timeout`), the database. A bad request
  never gets here: it fails in the task.
They are written as Celery's backend writes them, never over a SUCCESS, the partial texts of a sweep many in
one round trip, and a final state retried through a result store that is away for `Liveness.result_retry`
(states.py).
Then it releases the job's lease (leases.py). Until then a worker that dies has its jobs re-published under
the same task id by another worker's reaper (the message itself is acknowledged when the task
returns, so Redis's visibility timeout no longer backs up a generate job; the task waits until its lease
is written before it returns). One thread follows the jobs; a few write their states, each job's through the
same one, so a PROGRESS never lands after its SUCCESS (Celery's Redis backend also keeps a SUCCESS).

`generate_max_streams` bounds what one process takes: past it, a task waits for a slot before its request
goes into the engine (holding its thread, so the worker stops taking messages and other workers get them).

Why this and not a Celery thread waiting per job: up to a few hundred concurrent jobs on 2 cores both are
bound by the engine's steps, but past that a thread per job convoys on the GIL and caps the batch at `-c`
(bench/speed/queue_load.py; figures in bench/results/queue_load.json). A gevent/eventlet pool was not an
option: the engine must step on a real OS thread, and redis-py, psycopg and every CPU-bound piece of the hub
would stall every job.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from core.contracts import GenerateResult
from worker import signals

from .states import States

if TYPE_CHECKING:  # the runtime makes this module's Delivery; a Serving is what it hands over
    from .runtime import Serving

log = logging.getLogger(__name__)
# Threads writing states to the result backend: a job's states all go through one of them, in order (so a
# PROGRESS never lands after its SUCCESS), and 256 jobs that finish together are stored 4 at a time.
WRITERS = 4


@dataclass
class Handed:
    """A job handed over by its task: what answering it needs."""

    task_id: str
    context: object  # the task's request (celery.app.task.Context): result_extended stores its name, args, worker
    serving: Serving
    hostname: str
    sent: str = ""
    sent_at: float = field(default_factory=time.perf_counter)
    recording: bool = False  # its row is being written: no more partial text
    publishing: bool = False  # a partial text is waiting for its writer


def partial_spacing(jobs: int, liveness) -> float:
    """Seconds between two partial texts of one job while `jobs` run in this process: every
    `partial_interval` while they are few, spread so that all of them together make at most `partial_rate`
    writes a second when they are many, and never less often than the heartbeat. Each write costs the worker's
    threads (beside the engine's, under one GIL), Redis and the bot; at 128 jobs every 0.5 s they took about a
    tenth of the whole queue's throughput (bench/speed/queue_load.py)."""
    return min(max(liveness.partial_interval, jobs / liveness.partial_rate), liveness.partial_heartbeat)


class Delivery:
    def __init__(self, runtime, max_streams: int):
        self.runtime = runtime  # worker.serve.runtime.Runtime: its app's result backend, engine, recorder, leases
        self.app = runtime.app
        self._inbox: queue.SimpleQueue[tuple[str, object]] = queue.SimpleQueue()
        self._jobs: dict[str, Handed] = {}  # the thread's own
        self._slots = threading.Semaphore(max_streams)
        self._held = 0  # jobs handed over and not yet answered
        self._idle = threading.Condition()
        self.states = States(self.app.backend, runtime.liveness.result_retry)
        self._partial_away = False  # the last partial texts could not be stored (logged once per outage)
        self._writers = [queue.SimpleQueue() for _ in range(WRITERS)]
        for i, inbox in enumerate(self._writers):
            threading.Thread(target=self._write_loop, args=(inbox,), name=f"generate-writer-{i}", daemon=True).start()
        self._thread = threading.Thread(target=self._run, name="generate-delivery", daemon=True)
        self._thread.start()

    def hand_off(self, task_id: str, context, hostname: str,
                 start: Callable[[], Serving | GenerateResult]) -> GenerateResult | None:
        """Once this process holds fewer than `generate_max_streams` jobs (blocking till then), `start()` the
        job (it puts the request in the engine: Runtime.begin) and answer it as task `task_id`. Returns
        None, or what `start()` returned instead of a Serving: a recorded answer, no engine needed."""
        self._slots.acquire()
        try:
            serving = start()
        except BaseException:
            self._slots.release()
            raise
        if isinstance(serving, GenerateResult):
            self._slots.release()
            return serving
        with self._idle:
            self._held += 1
        handed = Handed(task_id, context, serving, hostname)
        self._inbox.put(("new", handed))
        serving.job.future.add_done_callback(lambda _: self._inbox.put(("finished", handed)))
        return None

    def drain(self, timeout: float) -> bool:
        """Wait until every job handed over is answered (a worker shutting down warmly)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._held == 0, timeout)

    def __len__(self) -> int:
        return self._held

    # -- the delivery thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        interval = self.runtime.liveness.partial_interval
        next_sweep = time.monotonic() + interval
        while True:
            try:
                kind, item = self._inbox.get(timeout=max(0.0, next_sweep - time.monotonic()))
            except queue.Empty:
                self._sweep()
                next_sweep = time.monotonic() + interval
                continue
            try:
                if kind == "new":
                    self._jobs[item.task_id] = item
                elif kind == "finished":
                    self._finished(item)
                else:
                    self._recorded(*item)
            except Exception:  # noqa: BLE001 - a bug in one answer must not stop the others
                log.exception("generate delivery: %s of a job failed", kind)

    def _finished(self, handed: Handed) -> None:
        self.runtime.release(handed.serving.held)
        if self._jobs.get(handed.task_id) is not handed:
            return  # answered already (its deadline passed)
        try:
            result, row = self.runtime.finish(handed.serving)
        except Exception as e:  # noqa: BLE001 - what the engine raised for this stream
            self._fail(handed, e)
            return
        if row is None:
            self._succeed(handed, result)
            return
        handed.recording = True
        recorded = self.runtime.recorder.submit(row)
        recorded.add_done_callback(lambda done: self._inbox.put(("recorded", (handed, result, done))))

    def _recorded(self, handed: Handed, result: GenerateResult, done) -> None:
        try:
            final = self.runtime.answer(handed.serving, result, done.result())
        except Exception as e:  # noqa: BLE001 - the database stayed away
            self._fail(handed, e)
            return
        self._succeed(handed, final)

    def _succeed(self, handed: Handed, result: GenerateResult) -> None:
        self._jobs.pop(handed.task_id, None)
        self._write(handed, self._store_finals,
                    [(handed, "SUCCESS", result.model_copy(update={"worker": handed.hostname}), time.monotonic())])

    def _fail(self, handed: Handed, error: BaseException) -> None:
        self._jobs.pop(handed.task_id, None)
        log.error("generate %s failed: %s: %s", handed.task_id, type(error).__name__, error)
        self._write(handed, self._store_finals, [(handed, "FAILURE", error, time.monotonic())])

    def _sweep(self) -> None:
        """Partial text and heartbeats of the running jobs; jobs past their deadline fail."""
        liveness, timeout = self.runtime.liveness, self.runtime.settings.generate_timeout
        spacing = partial_spacing(len(self._jobs), liveness)
        due: dict[int, list[tuple[Handed, str, float]]] = {}  # writer -> (job, text, as of)
        for handed in list(self._jobs.values()):
            if handed.recording or handed.publishing:
                continue
            now = time.perf_counter()
            if now > handed.serving.deadline:
                self.runtime.engine.abandon(handed.serving.job)  # the engine stops computing it
                self._fail(handed, TimeoutError(f"generation took more than {timeout:.0f} s"))
                continue
            text, since = handed.serving.job.partial, now - handed.sent_at
            # (half a sweep early: sweeps come every partial_interval, give or take; the first text goes at once)
            grown = text != handed.sent and (since >= spacing - liveness.partial_interval / 2 or not handed.sent)
            if not grown and since <= liveness.partial_heartbeat:
                continue
            handed.publishing = True
            due.setdefault(self._writer_of(handed), []).append((handed, text, now))
        for index, items in due.items():  # each writer stores its share in one round trip
            self._writers[index].put((self._store_progress, (items,)))

    # -- the writer threads: every state of one job goes through the same one, in order ----------------

    def _writer_of(self, handed: Handed) -> int:
        return hash(handed.task_id) % len(self._writers)

    def _write(self, handed: Handed, fn, *args) -> None:
        self._writers[self._writer_of(handed)].put((fn, args))

    def _write_loop(self, inbox: queue.SimpleQueue) -> None:
        waiting = None
        while True:
            fn, args = waiting or inbox.get()
            waiting = None
            if fn == self._store_finals:  # the final states queued behind it go in the same round trip
                finals = list(args[0])
                while waiting is None:
                    try:
                        waiting = inbox.get_nowait()
                    except queue.Empty:
                        break
                    if waiting[0] == self._store_finals:
                        finals += waiting[1][0]
                        waiting = None
                args = (finals,)
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - a bug in one write must not stop the others
                log.exception("generate delivery: %s failed", fn.__name__)

    def _store_progress(self, items: list[tuple[Handed, str, float]]) -> None:
        # Partial text is a courtesy, and its timestamp the job's heartbeat for the bot: a result store that
        # is briefly away (Redis restarting) must not fail the job itself; the next sweep sends newer text.
        try:
            self.states.partial([(handed.task_id, {"text": text, "beat": time.time()}, handed.context)
                                 for handed, text, _ in items])
            for handed, text, at in items:
                handed.sent, handed.sent_at = text, at
            self._partial_away = False
        except Exception as e:  # noqa: BLE001
            if not self._partial_away:
                log.warning("partial texts not published (until the result store is back): %s", e)
            self._partial_away = True
        finally:
            for handed, _, _ in items:
                handed.publishing = False

    def _store_finals(self, finals: list[tuple[Handed, str, GenerateResult | BaseException, float]]) -> None:
        """SUCCESS (with the result) or FAILURE (with the error) of jobs that were ready at `due`
        (time.monotonic()), in one round trip (retried through an outage for Liveness.result_retry); then
        their leases released in one."""
        try:
            self.states.final([(handed.task_id, state, value.model_dump(mode="json") if state == "SUCCESS" else value,
                                handed.context) for handed, state, value, _ in finals], min(due for *_, due in finals))
        except Exception:  # noqa: BLE001 - the store retried through an outage (Liveness.result_retry) and gave up
            log.exception("generate: the answers of %d jobs could not be stored (%s)", len(finals),
                          ", ".join(handed.task_id for handed, *_ in finals))
        if self.runtime.leases is not None:
            self.runtime.leases.release(*(handed.task_id for handed, *_ in finals))
        for handed, state, value, _ in finals:
            result = value if state == "SUCCESS" else None
            if result is not None:
                log.info("generate %s answered in %.2f s (%s tokens, batch peak %s)", handed.task_id,
                         time.perf_counter() - handed.serving.started, result.tokens, result.batch_peak)
            signals.job_finished(handed.task_id, signals.GENERATE_TASK, state, result, handed.serving.started)
            self._slots.release()
            with self._idle:
                self._held -= 1
                self._idle.notify_all()
