"""Generate jobs survive the death of their worker: a lease per running job in Redis, kept alive by its
worker process's heartbeat, and a reaper in every generate worker that re-publishes the jobs of a dead
worker under the same task id. The bot follows the task id, so its answer simply comes from another worker.

    improbable:generate:leases  hash  task id → "<owner>\\n" + {"task": name, "args": [...]}
    improbable:generate:owners  hash  owner (host:pid) → Redis time of its last heartbeat

Why a lease and not a shorter visibility timeout (Redis's own redelivery of unacknowledged messages):
- A dead worker's job must be answered within a minute, but a generate job may legitimately run for
  `generate_timeout` (120 s). A visibility timeout short enough for the first would redeliver every long
  job while it still runs, doubling the work exactly when the workers are busiest. A heartbeat proves the
  worker alive whatever its jobs' length, so the lease can be short (settings.generate_lease_seconds, 10 s).
- The visibility timeout is per connection, but kombu keeps one `unacked` hash per broker database and any
  consumer's restore sweep redelivers what is older than *its* timeout: a generate worker with a short one
  would redeliver the training jobs (which keep 2 h and their own lease in the database, worker/training.py).
- No Celery internals: the reaper only publishes a task, and the lease keys are ours.
- A generate task hands its job to the engine and returns (worker/serve/delivery.py), which acknowledges its
  message: from then on the lease is all that brings the job back. So the lease is taken when the message
  is received, the task returns only once it is written (`written`), and it is released when the engine's
  side has stored the job's answer, not when the task returns.
Redis's redelivery stays as the backstop while a message is unacknowledged (a job received but not yet
handed over, a post_scheduled job, a reaper that died between taking a lease and publishing): after
`visibility_timeout` the dead worker's message runs again, finds its request's row (generations.request_id)
and answers with it without generating again.

Outages: a reaper trusts staleness only after its own connection has been up for a whole lease, so after a
Redis restart every live worker has renewed its heartbeat before anyone's jobs are taken away.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time

from worker.app import GENERATE_LEASES

log = logging.getLogger(__name__)
LEASES, OWNERS = GENERATE_LEASES, "improbable:generate:owners"
FORGET_OWNERS_AFTER = 3600.0  # heartbeats of workers gone this long (and holding nothing) are dropped

# take/release only what is still as we saw it (a lease renewed, re-taken or released meanwhile is not ours)
_TAKE = "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end " \
        "return 0"
_RELEASE = "local v = redis.call('HGET', KEYS[1], ARGV[1]) " \
           "if v and string.sub(v, 1, string.len(ARGV[2])) == ARGV[2] then return redis.call('HDEL', KEYS[1], " \
           "ARGV[1]) end return 0"
_BEAT = "local t = redis.call('TIME') redis.call('HSET', KEYS[1], ARGV[1], t[1] + t[2] / 1e6) return 1"


def owner_id() -> str:
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


class Leases:
    """The leases of this worker process, its heartbeat, and the reaper (one daemon thread)."""

    def __init__(self, client, republish, lease: float, owner: str | None = None):
        # client: redis.Redis (decode_responses); republish(task, args, task_id) publishes a job again;
        # lease: seconds without a heartbeat after which a worker is taken to be dead (Liveness.lease)
        self.client, self.republish = client, republish
        self.lease = lease
        self.owner = owner or owner_id()
        self._unreleased: set[str] = set()  # releases that failed while Redis was away: retried by the thread
        self._holding: dict[str, str] = {}  # leases received and not yet written (task id -> value)
        self._writing: set[str] = set()  # being written right now
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._written = threading.Condition(self._lock)
        self._connected_since: float | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Leases:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="generate-leases", daemon=True)
                self._thread.start()
        return self

    def hold(self, task_id: str, task: str, args: list) -> None:
        """Lease a job this worker has just received. Written by the lease thread within milliseconds, in
        one round trip for all jobs received meanwhile: the worker's consumer thread, which calls this for
        every message, never waits on Redis (a round trip per message spread out the start of jobs that
        arrive together, and so the batches they share)."""
        self.start()
        with self._lock:
            self._holding[task_id] = f"{self.owner}\n" + json.dumps({"task": task, "args": args})
        self._wake.set()

    def written(self, task_id: str, timeout: float = 2.0) -> bool:
        """Wait until the lease of `task_id` is in Redis (False: not within `timeout`, e.g. Redis away). A
        generate task that hands its job to the engine acknowledges its message when it returns: from then
        on only the lease brings the job back if this worker dies."""
        with self._written:
            return self._written.wait_for(lambda: task_id not in self._holding and task_id not in self._writing,
                                          timeout)

    def release(self, *task_ids: str) -> None:
        """The leases of jobs that ended, in one round trip."""
        with self._lock:  # (a lease never written needs nothing in Redis)
            written = [task_id for task_id in task_ids if self._holding.pop(task_id, None) is None]
        if not written:
            return
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for task_id in written:
                    pipe.eval(_RELEASE, 1, LEASES, task_id, f"{self.owner}\n")
                pipe.execute()
        except Exception:  # noqa: BLE001 - retried by the heartbeat thread
            with self._lock:
                self._unreleased.update(written)

    def _write_holds(self) -> None:
        with self._lock:
            holding, self._holding = self._holding, {}
            self._writing = set(holding)
        if not holding:
            return
        try:
            with self.client.pipeline(transaction=False) as pipe:
                pipe.eval(_BEAT, 1, OWNERS, self.owner)  # a lease is never older than its owner's heartbeat
                pipe.hset(LEASES, mapping=holding)
                pipe.execute()
        except Exception:
            with self._lock:  # Redis away: written when it is back (unless the jobs ended meanwhile)
                self._holding = {**holding, **self._holding}
            raise
        finally:
            with self._written:
                self._writing = set()
                self._written.notify_all()

    def beat(self) -> None:
        self.client.eval(_BEAT, 1, OWNERS, self.owner)
        with self._lock:
            pending, self._unreleased = self._unreleased, set()
        self.release(*pending)

    def reap(self) -> list[str]:
        """Re-publish the jobs whose owner's heartbeat is older than a lease; returns their task ids."""
        seconds, micros = self.client.time()
        now = seconds + micros / 1e6
        owners = {k: float(v) for k, v in self.client.hgetall(OWNERS).items()}
        taken = []
        holders = set()
        for task_id, value in self.client.hgetall(LEASES).items():
            owner, _, job = value.partition("\n")
            holders.add(owner)
            if now - owners.get(owner, 0.0) < self.lease:
                continue
            if self.client.eval(_TAKE, 1, LEASES, task_id, value) != 1:
                continue  # renewed, released or taken by another reaper meanwhile
            job = json.loads(job)
            log.warning("job %s: its worker %s stopped (no heartbeat for %.0f s); re-publishing it",
                        task_id, owner, now - owners.get(owner, 0.0))
            try:
                self.republish(job["task"], job["args"], task_id)
            except Exception:
                self.client.hset(LEASES, task_id, value)  # give it back: the next sweep tries again
                raise
            taken.append(task_id)
        gone = [o for o, t in owners.items() if now - t > FORGET_OWNERS_AFTER and o not in holders]
        if gone:
            self.client.hdel(OWNERS, *gone)
        return taken

    def _run(self) -> None:
        interval = max(0.2, self.lease / 5)
        next_beat = 0.0
        while True:
            self._wake.wait(timeout=max(0.0, next_beat - time.monotonic()))
            self._wake.clear()
            try:
                self._write_holds()
                now = time.monotonic()
                if now < next_beat:
                    continue
                next_beat = now + interval
                self.beat()
                if self._connected_since is None:
                    self._connected_since = now
                if now - self._connected_since >= self.lease:
                    self.reap()
            except Exception as e:  # noqa: BLE001 - Redis away: keep beating; don't trust staleness for a lease
                if self._connected_since is not None:
                    log.warning("generate leases: Redis unreachable (%s)", e)
                self._connected_since = None
                next_beat = time.monotonic() + interval
                time.sleep(min(interval, 0.5))  # (not spinning on a hold that cannot be written)
