"""The one place where the bot talks to Celery: enqueue by task name, follow a job, cancel it.

Everything blocking (the broker, the result backend) runs in a thread, so the event loop never waits on
Redis. A broker that does not take a job within `bot_enqueue_timeout` seconds, or a generate job that no
worker is listening for, raises `Unavailable` quickly instead of leaving a user waiting.

With no broker configured (the embedded default) `worker.app.enqueue` runs the task in-process (Celery's
eager mode, which imports the worker's tasks and torch lazily, in that thread); there is no partial text
and no queue then.

The bot keeps the generate jobs it submitted in memory (`Jobs.of_user`, positions, cancel); their messages are
also kept in the database until shown, so a restarted bot `adopt`s them again (bot/resume.py). Training runs
live in the database (see service/training.py).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from core.settings import Settings, get_settings

log = logging.getLogger(__name__)

GENERATE, TRAIN = "improbable.generate", "improbable.train"
READY_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
# How often a followed job's state is read: often while a short job may be about to finish (a 280-char job
# takes ~55 ms on a worker; polling every 0.25 s added 125 ms on average), then calmly (one read ~150 us of CPU).
FAST_POLL_SECONDS, FAST_POLL_FOR = 0.05, 1.0
POLL_SECONDS = 0.25
BATCH_SECONDS = 0.01  # followed jobs asking for their state within this long share one read (TaskStates)
DECODED_KEPT = 10_000  # unfinished jobs' decoded states kept (TaskStates): more than are ever followed at once
LOCAL = "local-"  # the id prefix of jobs run inside the bot process (no broker)
WORKER_CHECK_TTL = 15.0  # seconds a "workers are listening" answer is trusted
# A generate job still PENDING is looked for this often (worker.app.whereabouts); found nowhere twice in a row,
# its message was lost on the way to a worker that died, and it is sent again (at most RESENDS times).
LOST_CHECK_SECONDS, RESENDS = 5.0, 3


class JobError(Exception):
    """A job that did not produce a result; the message is for the user."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class Unavailable(JobError):
    pass


class JobTimeout(JobError):
    pass


class JobFailed(JobError):
    pass


class JobCancelled(JobError):
    pass


class JobStalled(JobError):
    pass


UNAVAILABLE = "The generator is unavailable right now (its queue or workers are down). Try again in a minute."
STALLED = ("The generator working on this stopped answering (its worker probably died) and no other one took "
           "it over. Nothing more is coming: press Regenerate or try again.")
# How long a silent job, an unreachable result store or a missing consumer is tolerated: core.contracts.Liveness
# (settings.liveness), the timings the workers keep too. A job silent for `stall_notice` is reported to the
# caller (state STALLED); a dead worker's job is re-published by another within `takeover`, which shows as a
# new state; silence for `stall` means nobody took it over, and the user is told so instead of waiting.


@dataclass
class Job:
    """A job this bot submitted."""

    id: str
    name: str
    user_id: int | None
    guild_id: int | None
    label: str
    number: int  # order of submission (for queue positions)
    submitted: float = field(default_factory=time.monotonic)
    state: str = "PENDING"
    cancelled: bool = False
    result: Any = None  # Celery AsyncResult, or an asyncio task in eager mode
    args: tuple = ()  # what was sent (to send it again if its message is lost; empty for an adopted job)
    sending: float = 0.0  # when its sending began (monotonic)
    looked_at: float = field(default_factory=time.monotonic)  # when it was last looked for (a lost message)
    missing: int = 0  # looks in a row that found it nowhere
    resent: int = 0

    @property
    def done(self) -> bool:
        return self.state in READY_STATES or self.cancelled


ProgressCallback = Callable[[str, dict], Awaitable[None]]


class TaskStates:
    """The states of the jobs being followed, read for many at once. Every followed job asks for its own every
    50-250 ms; a thread (and a Redis round trip) each would, with hundreds in flight, keep busy the threads that
    the bot's database calls share, and slow every command (the load benchmark). Asks made within
    BATCH_SECONDS are answered by one MGET in one thread. A job's stored meta that has not changed since the
    last read (a queued job's, or a running one's between two partial texts) is not decoded again."""

    def __init__(self, backend):
        self.backend = backend
        self._waiting: dict[str, list[asyncio.Future]] = {}
        self._reading: asyncio.Task | None = None
        # task id -> (stored value, its meta) of unfinished jobs, oldest read first (reads run one at a time)
        self._decoded: collections.OrderedDict[str, tuple[bytes, dict]] = collections.OrderedDict()

    async def get(self, task_id: str) -> dict:
        """The job's meta (status, result), as the backend's get_task_meta gives it; raises what reading raised."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(task_id, []).append(future)
        if self._reading is None or self._reading.done():
            self._reading = asyncio.create_task(self._read_soon())
        return await future

    async def _read_soon(self) -> None:
        await asyncio.sleep(BATCH_SECONDS)
        batch, self._waiting = self._waiting, {}
        metas: list[dict] | None = None
        failure: Exception | None = None
        try:
            metas = await asyncio.to_thread(self.read, list(batch))
        except Exception as e:  # noqa: BLE001 - each caller handles the backend's failure as before
            failure = e
        for i, futures in enumerate(batch.values()):
            for future in futures:
                if future.done():  # its caller gave up
                    continue
                if metas is None:
                    future.set_exception(failure)
                else:
                    future.set_result(metas[i])

    def read(self, task_ids: list[str]) -> list[dict]:
        mget = getattr(self.backend, "mget", None)
        if mget is None:  # not a key-value store
            return [self.backend.get_task_meta(task_id) for task_id in task_ids]
        values = mget([self.backend.get_key_for_task(task_id) for task_id in task_ids])
        return [self._decode(task_id, v) for task_id, v in zip(task_ids, values)]

    def _decode(self, task_id: str, value: bytes | None) -> dict:
        if not value:
            return {"status": "PENDING", "result": None}
        seen = self._decoded.pop(task_id, None)
        meta = seen[1] if seen is not None and seen[0] == value else self.backend.decode_result(value)
        if meta.get("status") not in READY_STATES:  # a final meta is read once, and goes to its caller to keep
            self._decoded[task_id] = (value, meta)
            while len(self._decoded) > DECODED_KEPT:
                self._decoded.popitem(last=False)
        return meta


class Jobs:
    """Submit and follow jobs. One instance per bot process (or console)."""

    def __init__(self, settings: Settings | None = None, app=None):
        from worker import app as worker_app

        self.settings = settings or get_settings()
        self.liveness = self.settings.liveness
        self._module = worker_app
        self.app = app or worker_app.app
        self._jobs: dict[str, Job] = {}
        self._numbers = itertools.count(1)
        self._workers_seen: dict[str, float] = {}
        self._redis_away_at = -float("inf")  # when the result store last failed to answer (monotonic)
        self._states: TaskStates | None = None
        self._received_upto: dict[str, float] = {}  # task name -> latest `sending` of a job a worker took
        self.lost_check = LOST_CHECK_SECONDS

    @property
    def states(self) -> TaskStates:
        if self._states is None:
            self._states = TaskStates(self.app.backend)
        return self._states

    @property
    def eager(self) -> bool:
        return bool(self.app.conf.task_always_eager)

    # -- submitting ----------------------------------------------------------------------------------------

    async def submit(self, name: str, *args: Any, user_id: int | None = None, guild_id: int | None = None,
                     label: str = "", track: bool = True, task_id: str | None = None) -> Job:
        """Enqueue task `name` (under `task_id`, or a new id); raises Unavailable when the broker does not take
        it in time. `track=False`: nobody will wait for this job here (training runs are followed through the
        database)."""
        number = next(self._numbers)
        if self.eager:
            job = Job(f"{LOCAL}{number}", name, user_id, guild_id, label, number)
            job.result = asyncio.create_task(asyncio.to_thread(self._module.enqueue, name, *args))
            job.result.add_done_callback(_log_failure)
            if track:
                self._jobs[job.id] = job
            return job
        loop, sending = asyncio.get_running_loop(), time.monotonic()
        future = loop.run_in_executor(None, lambda: self._send(name, args, task_id))
        try:
            result = await asyncio.wait_for(asyncio.shield(future), self.settings.bot_enqueue_timeout)
        except TimeoutError:
            future.add_done_callback(self._revoke_late)
            raise Unavailable(UNAVAILABLE) from None
        except Exception as e:  # noqa: BLE001 - BrokerUnavailable, and any other failure to enqueue
            log.warning("enqueue %s failed: %s", name, e)
            raise Unavailable(UNAVAILABLE) from None
        job = Job(result.id, name, user_id, guild_id, label, number, result=result, args=args, sending=sending)
        if track:
            self._jobs[job.id] = job
        return job

    def adopt(self, task_id: str, name: str, *, user_id: int | None, guild_id: int | None,
              label: str = "") -> Job | None:
        """Follow a job that an earlier run of this bot submitted (its id kept in the database); None when it
        ran inside that bot process (no broker), so it stopped with it."""
        if self.eager or task_id.startswith(LOCAL):
            return None
        job = Job(task_id, name, user_id, guild_id, label, next(self._numbers),
                  result=self.app.AsyncResult(task_id))
        self._jobs[job.id] = job
        return job

    def _send(self, name: str, args: tuple, task_id: str | None = None):
        if self.app is self._module.app:
            result = self._module.enqueue(name, *args, task_id=task_id)  # BrokerUnavailable with a clear message
        else:
            result = self.app.send_task(name, args=list(args), task_id=task_id)
        # Celery's Redis backend subscribes this thread to the job's state messages, which only .get() would
        # read; the bot polls the stored state instead, so unsubscribe before unread messages pile up.
        consumer = getattr(result.backend, "result_consumer", None)
        if consumer is not None:
            try:
                consumer.cancel_for(result.id)
            except Exception:  # noqa: BLE001 - best effort; polling works either way
                log.debug("could not unsubscribe from %s", result.id, exc_info=True)
        return result

    def _send_again_if_lost(self, job: Job) -> None:
        """Send a PENDING job again under its id when its message is nowhere: no worker leased it, and its queue
        is empty or a job sent after it was taken (a Redis queue is first in, first out). Twice in a row, a
        look apart (a worker leases a message within milliseconds of taking it). A job that was not lost after
        all runs twice and is answered once (its `generations` row is keyed by the task id)."""
        job.looked_at = time.monotonic()
        where = self._module.whereabouts(job.id, job.name) if self.app is self._module.app else None
        passed = self._received_upto.get(job.name, 0.0) > job.submitted
        lost = where is not None and not where[0] and (where[1] == 0 or passed)
        job.missing = job.missing + 1 if lost else 0
        if job.missing < 2 or job.resent >= RESENDS:
            return
        log.warning("job %s: no worker has it and its queue has moved past it (its message was lost); sending "
                    "it again", job.id)
        sending = time.monotonic()
        try:
            self._send(job.name, job.args, job.id)
        except Exception as e:  # noqa: BLE001 - the broker went away meanwhile: looked for again later
            log.warning("could not send job %s again: %s", job.id, e)
            return
        job.resent, job.missing, job.sending, job.submitted = job.resent + 1, 0, sending, time.monotonic()

    def _revoke_late(self, future: asyncio.Future) -> None:
        """A job whose enqueue timed out but went through later: nobody waits for it any more."""
        if not future.cancelled() and future.exception() is None:
            try:
                future.result().revoke()
            except Exception:  # noqa: BLE001
                log.warning("could not revoke a late job", exc_info=True)

    # -- following -----------------------------------------------------------------------------------------

    async def wait(self, job: Job, on_progress: ProgressCallback | None = None,
                   timeout: float | None = None) -> dict:
        """The job's result. `on_progress(state, meta)` is awaited whenever the state or its meta changes
        (PENDING with {"position": n}, STARTED, PROGRESS with the task's meta)."""
        timeout = self.settings.bot_job_timeout if timeout is None else timeout
        try:
            if self.eager:
                return await self._wait_eager(job, timeout)
            return await self._wait_remote(job, on_progress, timeout)
        finally:
            self._jobs.pop(job.id, None)

    async def _wait_eager(self, job: Job, timeout: float) -> dict:
        try:
            result = await asyncio.wait_for(asyncio.shield(job.result), timeout)
        except TimeoutError:
            raise JobTimeout(f"Timed out: no result after {timeout:.0f} s.") from None
        except Exception as e:  # noqa: BLE001 - the task's own error, raised in-process
            raise JobFailed(_describe(e)) from None
        if job.cancelled:
            raise JobCancelled("Cancelled.")
        job.state = "SUCCESS"
        return result.get() if hasattr(result, "get") else result

    async def _wait_remote(self, job: Job, on_progress: ProgressCallback | None, timeout: float) -> dict:
        start = time.monotonic()
        checked_workers = False
        last: tuple | None = None
        liveness = self.liveness
        unreachable_since: float | None = None
        heard, heard_at, stall_told = None, start, False
        while True:
            if job.cancelled:
                raise JobCancelled("Cancelled.")
            try:
                meta = await self.states.get(job.id)
                unreachable_since = None
            except Exception as e:  # noqa: BLE001 - the result backend (Redis) went away
                now = time.monotonic()
                unreachable_since = unreachable_since or now
                self._redis_away_at = now
                if now - unreachable_since > liveness.outage:
                    log.warning("result backend failed for %s: %s", job.id, e)
                    raise Unavailable(UNAVAILABLE) from None
                await asyncio.sleep(1.0)  # the job keeps running on its worker: wait for Redis to return
                continue
            state, info = meta.get("status", "PENDING"), meta.get("result")
            job.state = state
            if state != "PENDING":
                self._received_upto[job.name] = max(self._received_upto.get(job.name, 0.0), job.sending)
            elif job.name == GENERATE and job.args and time.monotonic() - job.looked_at >= self.lost_check:
                await asyncio.to_thread(self._send_again_if_lost, job)
            if (state, repr(info)) != heard:  # any change, a heartbeat included, proves the job alive
                heard, heard_at, stall_told = (state, repr(info)), time.monotonic(), False
            elif job.name == GENERATE and state in ("STARTED", "PROGRESS"):
                # a job beats only once its text flows; before that it may be loading its checkpoint
                silent = time.monotonic() - heard_at - (0 if state == "PROGRESS" else liveness.started_grace)
                if silent > liveness.stall:
                    await asyncio.to_thread(self._revoke, job)
                    raise JobStalled(STALLED)
                if silent > liveness.stall_notice and not stall_told and on_progress is not None:
                    stall_told = True
                    await on_progress("STALLED", {"silent": round(silent)})
            if state == "SUCCESS":
                return info if isinstance(info, dict) else {"result": info}
            if state in ("FAILURE", "REVOKED"):
                raise JobFailed(_describe(info) if state == "FAILURE" else "The job was cancelled.")
            elapsed = time.monotonic() - start
            if state == "PENDING" and not checked_workers and job.name == GENERATE \
                    and elapsed >= self.settings.bot_worker_check_after:
                checked_workers = True
                if not await self.workers_listening(self.settings.generate_queue):
                    reconnecting = time.monotonic() - self._redis_away_at < liveness.reconnect
                    if not reconnecting and await asyncio.to_thread(self._broker_reachable):
                        await asyncio.to_thread(self._revoke, job)  # up a while, and truly nobody listening
                        raise Unavailable(UNAVAILABLE)
                    # the broker is away, or just back and its workers not yet: the queue keeps the job; ask later
                    checked_workers = False
            if elapsed > timeout:
                await asyncio.to_thread(self._revoke, job)
                raise JobTimeout(f"Timed out: no result after {timeout:.0f} s. Try again, perhaps shorter.")
            if on_progress is not None:
                payload = dict(info) if isinstance(info, dict) else {}
                payload.pop("beat", None)  # a heartbeat alone is no news for the user
                if state == "PENDING":
                    payload["position"] = self.position(job)
                key = (state, repr(sorted(payload.items())))
                if key != last:
                    last = key
                    await on_progress(state, payload)
            await asyncio.sleep(FAST_POLL_SECONDS if elapsed < FAST_POLL_FOR else POLL_SECONDS)

    async def workers_listening(self, queue: str) -> bool:
        """Whether any worker consumes `queue` (asked over the broker, ~1 s; a yes is cached)."""
        if self.eager:
            return True
        seen = self._workers_seen.get(queue)
        if seen is not None and time.monotonic() - seen < WORKER_CHECK_TTL:
            return True

        def ask() -> bool:
            replies = self.app.control.inspect(timeout=1.0).active_queues() or {}
            return any(q.get("name") == queue for queues in replies.values() for q in queues or ())

        try:
            ok = await asyncio.to_thread(ask)
        except Exception as e:  # noqa: BLE001
            log.warning("cannot ask the workers: %s", e)
            ok = False
        if ok:
            self._workers_seen[queue] = time.monotonic()
        return ok

    def _broker_reachable(self) -> bool:
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=1.0)
            return True
        except Exception:  # noqa: BLE001 - any failure means "not reachable"
            return False

    # -- the queue -----------------------------------------------------------------------------------------

    def position(self, job: Job) -> int:
        """1 + the number of this bot's jobs of the same kind submitted earlier and not started yet."""
        return 1 + sum(1 for j in self._jobs.values()
                       if j.name == job.name and j.number < job.number and j.state == "PENDING" and not j.done)

    def of_user(self, user_id: int) -> list[Job]:
        return sorted((j for j in self._jobs.values() if j.user_id == user_id and not j.done),
                      key=lambda j: j.number)

    def in_flight(self, user_id: int, name: str = GENERATE) -> int:
        return sum(1 for j in self.of_user(user_id) if j.name == name)

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    async def cancel(self, job: Job) -> None:
        """Stop following the job and revoke it (a job already running finishes, unseen)."""
        job.cancelled = True
        if not self.eager:
            await asyncio.to_thread(self._revoke, job)

    def _revoke(self, job: Job) -> None:
        try:
            self.app.control.revoke(job.id)
        except Exception:  # noqa: BLE001 - best effort
            log.warning("could not revoke %s", job.id, exc_info=True)


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("in-process job failed: %s", task.exception())


def _describe(error: Any) -> str:
    """A worker's exception as one line for users."""
    if isinstance(error, BaseException):
        name = type(error).__name__
        text = str(error) or name
        if "Timeout" in name or "TimeLimit" in name:
            return f"Timed out: {text}"
        return text
    if isinstance(error, dict):
        return str(error.get("exc_message") or error.get("exc_type") or error)
    return str(error or "the job failed")
