"""One REST budget for Discord, shared by every process that calls it (the bot, the generate workers' scheduled
posts), so that together they stay under Discord's limits: about 50 requests a second per bot in all, plus a
limit per route that Discord announces in its answers' headers.

    budget = budget_for(get_settings())
    budget.acquire(route_key("POST", "/channels/1/messages"))      # blocks until the request may go
    ... send it ...
    budget.observe(route, status, headers)                          # learns 429s and exhausted routes

- The global bucket is a token bucket (IMPROBABLE_DISCORD_REST_RATE tokens a second, at most
  IMPROBABLE_DISCORD_REST_BURST saved up): in any one second the deployment sends at most rate + burst.
- A route (discord.py's bucket: method, path template and its major parameter, the channel, guild or webhook
  id) is paused when Discord says it is exhausted (X-RateLimit-Remaining: 0) or answers 429, for its
  X-RateLimit-Reset-After / Retry-After. A 429 with `global` (X-RateLimit-Global / X-RateLimit-Scope: global)
  pauses every request of every process.
- With Redis (the broker's) the bucket and the pauses are keys there, taken and set atomically by Lua scripts
  on Redis's clock; without Redis (embedded mode, one process) the same arithmetic runs in the process. While
  the Redis is unreachable each process falls back to a bucket of its own at
  IMPROBABLE_DISCORD_REST_FALLBACK_SHARE of the rate and burst, so that several processes together stay
  within the budget.
- Interaction endpoints (callbacks, and the interaction's webhook: edits and follow-ups) are outside the budget, as
  they are outside Discord's global limit.
- Every process counts what it sees in its metrics (core/metrics.py): the requests the budget held back and
  for how long (improbable_discord_rest_wait_seconds), the 429s by scope and route kind
  (improbable_discord_rate_limited_total).
- `reserve(n)` hands out start times on a shared timeline (at IMPROBABLE_SCHEDULE_POSTS_PER_SECOND), so that a
  burst of due scheduled posts is spread out instead of queueing on the bucket (worker/schedules.py).
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import threading
import time
from dataclasses import dataclass
from functools import lru_cache

from core.metrics import DISCORD_RATE_LIMITED, DISCORD_REST_WAIT

log = logging.getLogger(__name__)
PREFIX = "improbable:rest:"
MAJOR = ("channels", "guilds", "webhooks")  # the path's first id that Discord buckets a route by
_ID = re.compile(r"^\d+$")  # a snowflake or another number: one bucket for all
ASYNC_CONNECTIONS = 4  # Redis connections of a process's event loop (the bot's)

# KEYS: bucket, global pause, route pause. ARGV: rate (tokens/s, 0: no bucket), burst. Returns the ms to wait:
# 0 taken, > 0 the bucket is empty, < 0 (minus the ms) a pause that Discord asked for holds the route back.
_TAKE = """
local wait = math.max(redis.call('PTTL', KEYS[2]), redis.call('PTTL', KEYS[3]), 0)
if wait > 0 then return -wait end
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
if rate <= 0 then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local saved = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = math.min(burst, (tonumber(saved[1]) or burst) + (now - (tonumber(saved[2]) or now)) * rate / 1000)
if tokens < 1 then return math.max(1, math.ceil((1 - tokens) * 1000 / rate)) end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - 1), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return 0
"""
# KEYS: pause. ARGV: ms. A pause only grows (a shorter one never cuts a longer one short).
_PAUSE = """
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], '1', 'PX', ARGV[1]) end
return 0
"""
# KEYS: cursor. ARGV: n, rate. Reserves n starts at `rate` a second after the last reservation (or now);
# returns the ms from now to the first.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local start = math.max(now, tonumber(redis.call('GET', KEYS[1]) or 0))
local span = tonumber(ARGV[1]) * 1000 / tonumber(ARGV[2])
redis.call('SET', KEYS[1], tostring(start + span), 'PX', math.ceil(start + span - now) + 60000)
return math.floor(start - now)
"""


def route_key(method: str, path: str, application_id: int | None = None) -> str | None:
    """Discord's rate-limit bucket of a request: 'POST /channels/123/messages' for POST
    /channels/123/messages?x, 'PATCH /channels/123/messages/{id}' for an edit, 'POST /webhooks/9' for a webhook's
    execute (its token is never part of a key). None for interaction endpoints, outside the budget as they are
    outside Discord's global limit: callbacks, and an interaction's own webhook (the application's id: edits of
    the original response and follow-ups)."""
    parts = [p for p in path.split("?", 1)[0].split("/") if p]
    if not parts or parts[0] == "interactions":
        return None
    if parts[0] == "webhooks" and application_id is not None and parts[1:2] == [str(application_id)]:
        return None
    out = []
    for i, part in enumerate(parts):
        if i == 1 and parts[0] in MAJOR:
            out.append(part)
        elif i == 2 and parts[0] == "webhooks":
            break  # the token (and what follows it shares the webhook's bucket)
        elif i > 0 and parts[i - 1] == "reactions":
            out.append("{emoji}")
        else:
            out.append("{id}" if _ID.match(part) else part)
    return f"{method.upper()} /{'/'.join(out)}"


def route_kind(route: str | None) -> str:
    """A route without its major id, as metrics label it: 'POST /channels/{id}/messages' ('-': none)."""
    if route is None:
        return "-"
    method, _, path = route.partition(" ")
    parts = path.split("/")
    if len(parts) > 2 and parts[1] in MAJOR:
        parts[2] = "{id}"
    return f"{method} {'/'.join(parts)}"


@dataclass
class _Local:
    """The bucket and pauses of one process (no Redis), on its monotonic clock."""

    tokens: float
    at: float
    pauses: dict[str, float]
    cursor: float = 0.0


class RestBudget:
    """The shared budget; `redis_url` None keeps it in this process. Rate 0: no bucket, only the pauses that
    Discord's answers ask for. `fallback_share`: the share of rate and burst this process keeps to itself while
    the Redis is unreachable."""

    def __init__(self, rate: float, burst: int, redis_url: str | None = None, prefix: str = PREFIX,
                 fallback_share: float = 1.0):
        self.rate, self.burst, self.prefix = float(rate), max(1, int(burst)), prefix
        self.redis_url = redis_url or None
        share = fallback_share if self.redis_url else 1.0  # without Redis the whole budget is this process's
        self._local_rate, self._local_burst = self.rate * share, max(1, int(self.burst * share))
        self._lock = threading.Lock()
        self._local = _Local(tokens=float(self._local_burst), at=time.monotonic(), pauses={})
        self._client = self._scripts = None
        self._async: tuple | None = None  # (event loop, client, scripts) of the bot's asyncio side
        self._queue: tuple | None = None  # (event loop, asyncio.Lock): this process's waiters, one at a time
        self._redis_down_until = 0.0

    def _keys(self, route: str | None) -> list[str]:
        return [f"{self.prefix}bucket", f"{self.prefix}pause:global", f"{self.prefix}pause:{route or '-'}"]

    # -- in this process -----------------------------------------------------------------------------------

    def _take_local(self, route: str | None) -> float:
        """As _TAKE, in seconds: 0 taken, > 0 the bucket is empty, < 0 a pause holds the route back."""
        now = time.monotonic()
        with self._lock:
            local = self._local
            wait = max(local.pauses.get("global", 0.0), local.pauses.get(route or "-", 0.0)) - now
            if wait > 0 or self._local_rate <= 0:
                return -max(0.0, wait)
            local.tokens = min(self._local_burst, local.tokens + (now - local.at) * self._local_rate)
            local.at = now
            if local.tokens < 1:
                return (1 - local.tokens) / self._local_rate
            local.tokens -= 1
            return 0.0

    def _pause_local(self, key: str, seconds: float) -> None:
        with self._lock:
            until = time.monotonic() + seconds
            self._local.pauses[key] = max(self._local.pauses.get(key, 0.0), until)

    # -- in Redis ------------------------------------------------------------------------------------------

    def _redis(self):
        """(client, scripts), or None without Redis or for a few seconds after it failed (the process's own
        bucket stands in meanwhile)."""
        if self.redis_url is None or time.monotonic() < self._redis_down_until:
            return None
        if self._client is None:
            import redis

            client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=1, socket_timeout=2)
            self._client, self._scripts = client, {name: client.register_script(lua) for name, lua in
                                                   (("take", _TAKE), ("pause", _PAUSE), ("reserve", _RESERVE))}
        return self._client, self._scripts

    def _failed(self, error: Exception) -> None:
        log.warning("REST budget: Redis unreachable (%s); this process keeps its own bucket (%.3g requests a "
                    "second) for 5 s", error, self._local_rate)
        self._redis_down_until = time.monotonic() + 5.0

    def _call(self, name: str, keys: list[str], args: list) -> int | None:
        connected = self._redis()
        if connected is None:
            return None
        from redis.exceptions import RedisError

        try:
            return int(connected[1][name](keys=keys, args=args))
        except RedisError as e:
            self._failed(e)
            return None

    async def _acall(self, name: str, keys: list[str], args: list) -> int | None:
        if self.redis_url is None or time.monotonic() < self._redis_down_until:
            return None
        from redis.exceptions import RedisError

        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            import redis.asyncio

            # a few connections, waited for when all are busy: the waiters' queue (acquire_async) keeps one
            # take in flight at a time, and a pause now and then may go beside it
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                self.redis_url, max_connections=ASYNC_CONNECTIONS, timeout=2, socket_connect_timeout=1,
                socket_timeout=2)
            client = redis.asyncio.Redis(connection_pool=pool)
            self._async = (loop, client, {"take": client.register_script(_TAKE),
                                          "pause": client.register_script(_PAUSE)})
        # shielded: a caller cancelled meanwhile (an edit superseded by the final text) leaves the call to end
        # normally, where a cancelled redis-py command closes its connection and the next one opens another
        call = asyncio.ensure_future(self._async[2][name](keys=keys, args=args))
        call.add_done_callback(_retrieved)
        try:
            return int(await asyncio.shield(call))
        except RedisError as e:
            self._failed(e)
            return None

    # -- the API -------------------------------------------------------------------------------------------

    def try_take(self, route: str | None) -> float:
        """Take a token for the route if it may go now: 0.0; else the seconds to wait before asking again."""
        return abs(self._take(route))

    def _take(self, route: str | None) -> float:
        """As _TAKE, in seconds (0 taken, > 0 the bucket is empty, < 0 paused), from Redis or this process."""
        ms = self._call("take", self._keys(route), [self.rate, self.burst])
        return self._take_local(route) if ms is None else ms / 1000

    async def _take_async(self, route: str | None) -> float:
        ms = await self._acall("take", self._keys(route), [self.rate, self.burst])
        return self._take_local(route) if ms is None else ms / 1000

    def acquire(self, route: str | None, timeout: float | None = None) -> float:
        """Block until the request may go (a token taken); returns the seconds waited. With `timeout`, raises
        TimeoutError when it would wait longer."""
        started = time.monotonic()
        if (wait := self.try_take(route)) <= 0:
            return 0.0
        try:
            while wait > 0:
                if timeout is not None and time.monotonic() - started + wait > timeout:
                    raise TimeoutError(f"Discord's REST budget has no room for {route} within {timeout} s")
                time.sleep(_jittered(wait))
                wait = self.try_take(route)
            return time.monotonic() - started
        finally:
            DISCORD_REST_WAIT.observe(time.monotonic() - started)

    async def acquire_async(self, route: str | None) -> float:
        """`acquire` for an event loop (the bot): waits without blocking it. The process's requests queue for
        the bucket, first come first served: the one at the head takes a token, or waits for the bucket to
        refill and asks again, while the others wait their turn in the process, so that a burst of requests
        costs one Redis round trip per token, not one per waiting request every few milliseconds. A request
        whose route (or every route) Discord paused leaves the queue for the pause, then queues again."""
        started, waited = time.monotonic(), False
        while True:
            async with self._turn():
                while (wait := await self._take_async(route)) > 0:
                    waited = True
                    await asyncio.sleep(_jittered(wait))
            if wait == 0:
                break
            waited = True
            await asyncio.sleep(_jittered(-wait))
        if waited:
            DISCORD_REST_WAIT.observe(time.monotonic() - started)
        return time.monotonic() - started

    def _turn(self) -> asyncio.Lock:
        """The queue of this process's requests on the running event loop (asyncio.Lock is first come, first
        served)."""
        loop = asyncio.get_running_loop()
        if self._queue is None or self._queue[0] is not loop:
            self._queue = (loop, asyncio.Lock())
        return self._queue[1]

    def pause(self, route: str | None, seconds: float) -> None:
        """Hold back one route (route None: every request) for `seconds`, in every process."""
        key = self._keys(route)[1 if route is None else 2]
        if self._call("pause", [key], [max(1, round(seconds * 1000))]) is None:
            self._pause_local("global" if route is None else route, seconds)

    async def pause_async(self, route: str | None, seconds: float) -> None:
        key = self._keys(route)[1 if route is None else 2]
        if await self._acall("pause", [key], [max(1, round(seconds * 1000))]) is None:
            self._pause_local("global" if route is None else route, seconds)

    def observe(self, route: str | None, status: int, headers) -> tuple[str | None, float] | None:
        """Learn from an answer: a 429 (global or the route's) or an exhausted route pauses it for as long
        as Discord says. Returns (route or None for global, seconds) of the pause to set, else None."""
        found = _learned(route, status, headers)
        if found is not None:
            self.pause(*found)
        return found

    async def observe_async(self, route: str | None, status: int, headers) -> tuple[str | None, float] | None:
        found = _learned(route, status, headers)
        if found is not None:
            await self.pause_async(*found)
        return found

    def reserve(self, n: int, rate: float, name: str = "schedules") -> float:
        """Reserve n consecutive starts at `rate` a second on the shared timeline `name`; returns the seconds
        from now to the first (0 when the timeline is free). Later callers queue after these."""
        if n <= 0 or rate <= 0:
            return 0.0
        ms = self._call("reserve", [f"{self.prefix}cursor:{name}"], [n, rate])
        if ms is not None:
            return ms / 1000
        with self._lock:
            now = time.monotonic()
            start = max(now, self._local.cursor)
            self._local.cursor = start + n / rate
            return start - now


def pause_of(route: str | None, status: int, headers) -> tuple[str | None, float] | None:
    """(None for every route, or the route; seconds) that an answer asks to hold back, or None."""
    def number(name: str) -> float | None:
        try:
            return float(headers.get(name))
        except (TypeError, ValueError):
            return None

    reset = number("X-RateLimit-Reset-After")
    if status == 429:
        seconds = max(reset or 0.0, number("Retry-After") or 0.0) or 1.0
        scope = str(headers.get("X-RateLimit-Scope") or "").lower()
        is_global = str(headers.get("X-RateLimit-Global") or "").lower() == "true" or scope == "global"
        return (None if is_global or route is None else route), seconds
    if route is not None and headers.get("X-RateLimit-Remaining") == "0" and reset:
        return route, reset
    return None


def _learned(route: str | None, status: int, headers) -> tuple[str | None, float] | None:
    """pause_of, with a 429 counted by its scope and route kind (improbable_discord_rate_limited_total)."""
    found = pause_of(route, status, headers)
    if status == 429:
        DISCORD_RATE_LIMITED.labels("global" if found[0] is None else "route", route_kind(route)).inc()
    return found


def _retrieved(task: asyncio.Future) -> None:
    """Mark the outcome of a call whose caller may have gone as seen (asyncio warns of an unseen exception)."""
    if not task.cancelled():
        task.exception()


def _jittered(wait: float) -> float:
    """A waiter sleeps a little past its turn, at random, so that many do not all ask again at once."""
    return wait * (1 + random.random() * 0.25) + 0.001


@lru_cache(maxsize=8)
def _budget(rate: float, burst: int, redis_url: str | None, fallback_share: float) -> RestBudget:
    return RestBudget(rate, burst, redis_url, fallback_share=fallback_share)


def budget_for(settings) -> RestBudget:
    """This process's budget for these settings: in the broker's Redis when there is one, else in-process."""
    url = settings.broker_url if settings.broker_url.startswith(("redis://", "rediss://", "unix://")) else None
    return _budget(settings.discord_rest_rate, settings.discord_rest_burst, url,
                   settings.discord_rest_fallback_share)
