"""The states of the generate jobs that the engine's side answers (delivery.py), stored in the result backend.

On Celery's Redis backend a state is written as Celery's own `store_result` writes it (the same JSON meta,
expiry and message to whoever waits on the job: bot/jobs.py reads the key, `AsyncResult.get` listens) and,
as there, never over a stored SUCCESS (another run of the job finished first). What differs:
- Round trips: a state is one Lua call (SET with expiry and PUBLISH unless the stored state is SUCCESS,
  atomically) instead of Celery's GET and then a SET+PUBLISH transaction, and the partial texts of a sweep go
  many in one pipeline (`partial`).
- Outages: a final state (SUCCESS, FAILURE) is retried through a result store that is away until
  `Liveness.result_retry` seconds after it was due (`until`: redis-py's Retry, pauses doubling from 0.5 s to
  2 s, stopped by the deadline). Celery's own retry of a store (result_backend_always_retry) counts attempts
  with random pauses, ~26 s in all on average, which a 30 s Redis restart outlasts. A partial text is not
  retried: the next sweep sends a newer one (and its heartbeat) a `Liveness.partial_interval` later.
Other result backends get Celery's store_result (and mark_as_failure), retried the same way.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable
from typing import TypeVar

from celery import states as celery_states

T = TypeVar("T")

# A state as Celery's Redis backend stores one (SET with expiry + PUBLISH), unless the job's stored state is
# SUCCESS already (Celery's own store checks that with a GET first). KEYS[1]: the job's key; ARGV: the encoded
# meta, its expiry in seconds (0: none).
_STORE = """
local current = redis.call('GET', KEYS[1])
if current then
    local ok, meta = pcall(cjson.decode, current)
    if ok and type(meta) == 'table' and meta['status'] == 'SUCCESS' then return 0 end
end
if tonumber(ARGV[2]) > 0 then
    redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
else
    redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""


def until(deadline: float, do: Callable[[], T], errors: tuple[type[BaseException], ...]) -> T:
    """do(), and again after each of `errors` (a connection lost) until time.monotonic() passes `deadline`;
    then that error. redis-py's Retry, pauses doubling from 0.5 s up to 2 s."""
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    def give_up_past_deadline(error: BaseException) -> None:
        if time.monotonic() >= deadline:
            raise error

    return Retry(ExponentialBackoff(cap=2.0, base=0.25), -1, errors).call_with_retry(do, give_up_past_deadline)


class States:
    """Writes the jobs' states to `backend` (the app's result backend); `retry` seconds through an outage."""

    def __init__(self, backend, retry: float):
        from celery.backends.redis import RedisBackend

        self.backend, self.retry = backend, retry
        self._redis = isinstance(backend, RedisBackend)
        self._sha = hashlib.sha1(_STORE.encode()).hexdigest()

    def partial(self, states: list[tuple[str, dict, object]]) -> None:
        """PROGRESS states (task id, meta, the task's request) of many jobs, once: on Redis in one round trip.
        Raises what the store raised (the caller skips them: the next sweep has newer text)."""
        if not self._redis:
            for task_id, meta, request in states:
                self.backend.store_result(task_id, meta, "PROGRESS", request=request)
            return
        self._execute([self._command(task_id, "PROGRESS", meta, request) for task_id, meta, request in states])

    def final(self, states: list[tuple[str, str, object, object]], due: float) -> None:
        """Final states (task id, SUCCESS or FAILURE, the result or the exception, the task's request) of
        one or more jobs, on Redis in one round trip; retried until `retry` seconds after `due`
        (time.monotonic() when the first of them was ready) while the result store is away."""
        deadline, errors = due + self.retry, self.backend.connection_errors
        if self._redis:
            commands = [self._command(*state) for state in states]
            until(deadline, lambda: self._execute(commands), errors)
            return
        for state in states:
            until(deadline, functools.partial(self._store_with_celery, *state), errors)

    def _store_with_celery(self, task_id: str, state: str, value, request) -> None:
        if state == celery_states.FAILURE:
            self.backend.mark_as_failure(task_id, value, request=request)
        else:
            self.backend.store_result(task_id, value, state, request=request)

    def _command(self, task_id: str, state: str, value, request) -> tuple[str, str, int]:
        """(key, encoded meta, expiry) of a state, as Celery's store_result makes them (tests/worker/test_states.py)."""
        backend = self.backend
        meta = backend._get_result_meta(result=backend.encode_result(value, state), state=state, traceback=None,
                                        request=request)
        meta["task_id"] = task_id
        expires = backend.failure_expires if state == celery_states.FAILURE else backend.expires
        return backend.get_key_for_task(task_id), backend.encode(meta), int(expires or 0)

    def _execute(self, commands: list[tuple[str, str, int]]) -> None:
        """The commands' Lua calls in one pipeline, by the script's hash (a SCRIPT LOAD only after Redis forgot
        it: a restart), not redis-py's Script in a pipeline, which asks SCRIPT EXISTS first every time."""
        from redis.exceptions import NoScriptError

        client = self.backend.client
        for attempt in (1, 2):
            with client.pipeline(transaction=False) as pipe:
                for key, meta, expires in commands:
                    pipe.evalsha(self._sha, 1, key, meta, expires)
                try:
                    pipe.execute()
                    return
                except NoScriptError:
                    if attempt == 2:
                        raise
            client.script_load(_STORE)
