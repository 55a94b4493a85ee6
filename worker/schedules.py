"""Scheduled posts: which (schedule, slot) is due, claiming it exactly once, posting it to Discord.

Slots are instants in UTC. An interval schedule's slots are aligned to the Unix epoch
(db.schedules.interval_slot); a cron schedule's are the minutes its 5-field expression matches (minute hour
day-of-month month day-of-week, parsed by core.cron.parse_cron, all fields must match, Sunday = 0).
A slot is due when it is the latest slot at or before now and later than the last claimed slot (or the
schedule's creation). So after any downtime only that latest slot is due: at most one catch-up post.
The claim is a unique row (db.schedules.claim_slots, a batch a statement), so two dispatchers racing post each
slot once. Posts due together are spread out from their dispatch at IMPROBABLE_SCHEDULE_POSTS_PER_SECOND
(`dispatch`), and every request waits for the deployment's REST budget (core/ratelimit.py).

A post goes out as the persona, through the channel webhook the bot uses for it (bot/webhooks.py explains
the design; db/webhooks.py keeps them), created here when there is none; where Discord refuses a webhook
(no Manage Webhooks: 403) or it was deleted, the post goes out as the bot with the persona named, as before;
after a refusal no post asks for a webhook in that channel again for an hour (db.webhooks.REFUSED_SECONDS).
A webhook's execute takes no nonce: the slot's locked row keeps overlapping runs to one post, and only a run
that dies between posting and recording could post its slot twice through a webhook.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import urllib.error
import urllib.request
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import event, select
from sqlalchemy.exc import IntegrityError

from core.avatar import avatar_png, digest, webhook_name
from core.contracts import GenerateRequest, merge_sampling
from core.cron import parse_cron
from core.markdown import escape
from core.ratelimit import budget_for, route_key
from core.settings import get_settings
from db import PostStatus, Schedule, SchedulePost, get_sessionmaker, open_storage, session_scope
from db.schedules import claim_slots, enabled_schedules, finish_post, interval_slot
from db.types import as_utc, utcnow
from db.webhooks import Hook, chosen_avatar, creation_refused, find, forget, note_refused, remember, to_evict

log = logging.getLogger(__name__)
MAX_CONTENT = 2000  # Discord's limit on a message's content
CRON_LOOKBACK_DAYS = 4 * 366 + 1  # a "29 2 *" schedule fires every four years
DISPATCH_BATCH = 500  # due slots claimed in one statement, then enqueued
REST_WAIT = 60.0  # seconds a request waits for the REST budget before its job is retried later


class DiscordError(RuntimeError):
    """Discord refused the post (missing access, unknown channel...): retrying will not help."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status  # the HTTP status Discord answered, None when nothing was sent


# Discord's answers that mean the bot cannot post in the channel at all (403 Missing Access or Permissions,
# 404 Unknown Channel): the schedule is paused, instead of failing the same way at every slot forever.
PAUSE_ON_STATUS = frozenset({403, 404})


# Discord's JSON error codes of a refused post, in words (the schedule's list and its creator read them)
REFUSALS = {
    50001: "the bot cannot see the channel (it needs View Channel there)",
    50013: "the bot may not post in the channel (it needs View Channel and Send Messages there)",
    10003: "the channel no longer exists",
}


def refusal(status: int, detail: str) -> str:
    """Discord's refusal as a sentence, e.g. 'Discord answered 403 (Missing Permissions): the bot may not post
    in the channel (...)', never its raw JSON."""
    try:
        body = json.loads(detail)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return f"Discord answered {status}: {detail.strip()[:200]}"
    what, code = str(body.get("message") or "refused"), body.get("code")
    words = REFUSALS.get(code)
    return f"Discord answered {status} ({what}): {words}" if words else \
        f"Discord answered {status} ({what}, code {code})"


def tell_creator_when_committed(session, schedule: Schedule, slug: str, reason: str) -> None:
    """Once the pause is committed, a direct message to the schedule's creator saying why (best effort: a
    member whose DMs are closed is only logged). Sent once: a paused schedule posts no more."""
    user_id, schedule_id = schedule.created_by, schedule.id
    if not user_id:
        return
    text = (f"⏸ Your scheduled post {schedule.id} (`{slug}` in <#{schedule.channel_id}>) is paused: {reason}. "
            "Fix the channel's permissions, then remove it with `/schedule remove` and add it again.")

    def send(_session) -> None:
        try:
            channel = _call("POST", "/users/@me/channels", {"recipient_id": str(user_id)})
            post_message(int(channel["id"]), text)
        except (DiscordError, DiscordUnavailable, KeyError, ValueError) as e:
            log.warning("could not tell user %s that schedule %s is paused: %s", user_id, schedule_id, e)

    event.listen(session, "after_commit", send, once=True)


class DiscordUnavailable(RuntimeError):
    """Discord or the network failed transiently (5xx, 429, timeout): retry with backoff."""


def latest_cron_slot(expr: str, now: datetime, after: datetime) -> datetime | None:
    """The latest minute at or before `now` that the expression matches, if it is after `after`."""
    cron = parse_cron(expr)
    now = as_utc(now).replace(second=0, microsecond=0)
    for back in range(CRON_LOOKBACK_DAYS):
        day: date = now.date() - timedelta(days=back)
        if day < as_utc(after).date():
            return None
        if day.month not in cron.month_of_year or day.day not in cron.day_of_month \
                or day.isoweekday() % 7 not in cron.day_of_week:
            continue
        for hour in sorted(cron.hour, reverse=True):
            for minute in sorted(cron.minute, reverse=True):
                slot = datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)
                if slot <= now:
                    return slot if slot > as_utc(after) else None
    return None


def due_slot(schedule: Schedule, now: datetime) -> datetime | None:
    after = as_utc(schedule.last_slot or schedule.created_at)
    if schedule.interval_seconds:
        slot = interval_slot(schedule.interval_seconds, now)
        return slot if slot > after else None
    return latest_cron_slot(schedule.cron, now, after)


def due_slots(session, now: datetime) -> list[tuple[int, datetime]]:
    """(schedule id, slot) of every enabled schedule with a slot due at `now`, by schedule id."""
    due = []
    for schedule in enabled_schedules(session):
        try:
            slot = due_slot(schedule, now)
        except ValueError as e:  # a bad cron expression must not stop the other schedules
            log.warning("schedule %s: %s", schedule.id, e)
            continue
        if slot is not None:
            due.append((schedule.id, slot))
    return due


def dispatch(now: datetime | None = None, batch: int = DISPATCH_BATCH, fan_out: bool = False) -> list[tuple[int, str]]:
    """Claim every due slot and enqueue its post. Returns the (schedule id, slot) pairs this call claimed.

    Claims go `batch` at a time (one statement each, db.schedules.claim_slots), and each batch's posts are
    enqueued before the next is claimed. With `fan_out` (beat's task) only the first batch is claimed here:
    the others go to the generate workers as improbable.dispatch_batch jobs, claimed and enqueued in parallel,
    so that thousands of due slots never hold one beat tick. A batch that is lost before its claim is simply
    due again at the next tick."""
    from .app import enqueue, is_eager

    with get_sessionmaker()() as session:
        due = due_slots(session, as_utc(now or utcnow()))
    if fan_out and not is_eager():
        for start in range(batch, len(due), batch):
            enqueue("improbable.dispatch_batch", [[s, slot.isoformat()] for s, slot in due[start:start + batch]])
        due = due[:batch]
    return [claimed for start in range(0, len(due), batch) for claimed in dispatch_batch(due[start:start + batch])]


def dispatch_batch(due: list[tuple[int, datetime]]) -> list[tuple[int, str]]:
    """Claim these (schedule id, slot) pairs in one statement and enqueue the posts of those won.

    Posts due together are spread out: the batch reserves its start times on the deployment's shared timeline
    (core.ratelimit, IMPROBABLE_SCHEDULE_POSTS_PER_SECOND) and its posts get Celery countdowns one step apart
    from there, so a burst never queues on the REST budget and later batches follow on."""
    from .app import enqueue

    settings = get_settings()
    rate = settings.schedule_posts_per_second
    with get_sessionmaker()() as session:
        won = claim_slots(session, [(int(s), as_utc(slot if isinstance(slot, datetime) else
                                                    datetime.fromisoformat(slot))) for s, slot in due])
    first, reserved = budget_for(settings).reserve(len(won), rate), time.monotonic()
    for i, (schedule_id, slot) in enumerate(won):
        countdown = first + i / rate - (time.monotonic() - reserved)  # from the reservation, not from now
        enqueue("improbable.post_scheduled", schedule_id, slot.isoformat(), countdown=max(0.0, countdown))
    return [(schedule_id, slot.isoformat()) for schedule_id, slot in won]


def _call(method: str, path: str, body: dict | None, *, timeout: float = 10.0, shown: str | None = None,
          attempts: int = 5) -> dict:
    """One request to Discord's REST API with the bot's token; its JSON answer ({} for none). `shown`: the
    path as errors may show it (a webhook's path holds its token, which is never logged). Each attempt first
    waits for the deployment's REST budget (core.ratelimit); a 429 pauses what Discord says and is tried again,
    up to `attempts` times."""
    settings = get_settings()
    if not settings.discord_token:
        raise DiscordError("no Discord token configured (IMPROBABLE_DISCORD_TOKEN)")
    url = f"{settings.discord_api_base.rstrip('/')}{path}"
    budget, route = budget_for(settings), route_key(method, path)
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(), method=method,
                                     headers={"Authorization": f"Bot {settings.discord_token}",
                                              "Content-Type": "application/json",
                                              "User-Agent": "DiscordBot (https://github.com/improbable, 0.1)"})
    for attempt in range(attempts):
        try:
            budget.acquire(route, timeout=REST_WAIT)
        except TimeoutError as e:
            raise DiscordUnavailable(str(e)) from None
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                budget.observe(route, response.status, response.headers)
                raw = response.read()
                return json.loads(raw) if raw else {}
        except urllib.error.HTTPError as e:
            budget.observe(route, e.code, e.headers)
            detail = e.read()[:300].decode("utf-8", "replace")
            if e.code == 429 and attempt + 1 < attempts:
                continue  # the budget now holds the route (or everyone) back for Retry-After
            if e.code == 429 or e.code >= 500:
                raise DiscordUnavailable(f"Discord answered {e.code}: {detail}") from None
            raise DiscordError(refusal(e.code, detail), e.code) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, ValueError) as e:
            where = f"{settings.discord_api_base.rstrip('/')}{shown or path}"
            raise DiscordUnavailable(f"cannot reach Discord at {where}: {e}") from None
    raise AssertionError("unreachable: the last attempt returns or raises")


def post_message(channel_id: int, content: str, timeout: float = 10.0, nonce: str | None = None) -> int:
    """POST a message to a channel through Discord's REST API; returns its id. Mentions never ping. With a
    `nonce` (at most 25 characters) Discord refuses to create a second message with it (enforce_nonce)."""
    message = {"content": content[:MAX_CONTENT], "allowed_mentions": {"parse": []}}
    if nonce:
        message.update(nonce=nonce, enforce_nonce=True)
    return int(_call("POST", f"/channels/{channel_id}/messages", message, timeout=timeout)["id"])


def _create_webhook(session, channel_id: int, guild_id: int, slug: str, display_name: str) -> Hook | None:
    """A new webhook for the persona in the channel (the least recently used ones evicted first, and the
    oldest once more when Discord says the channel is full); None when Discord refuses one."""
    avatar = chosen_avatar(open_storage(), guild_id, slug) or avatar_png(display_name, slug)
    body = {"name": webhook_name(display_name), "avatar": "data:image/png;base64," + base64.b64encode(avatar).decode()}
    for attempt in range(2):
        for old in to_evict(session, channel_id) if attempt == 0 else to_evict(session, channel_id, 0)[-1:]:
            _delete_webhook(old)
            forget(session, old.webhook_id)
        try:
            created = _call("POST", f"/channels/{channel_id}/webhooks", body)
        except DiscordError as e:
            if attempt == 0 and "30007" in str(e):
                continue
            log.info("no webhook in channel %s (posting as the bot): %s", channel_id, e)
            if e.status == 403:  # no Manage Webhooks: no process asks again for a while (db.webhooks)
                note_refused(session, channel_id)
            return None
        except DiscordUnavailable as e:
            log.info("no webhook in channel %s (posting as the bot): %s", channel_id, e)
            return None
        if not created.get("token") or not created.get("id"):
            return None
        hook = Hook(int(created["id"]), str(created["token"]), digest(avatar))
        try:
            with session.begin_nested():
                remember(session, guild_id=guild_id, channel_id=channel_id, persona_slug=slug, hook=hook)
        except IntegrityError:  # another post made the persona's webhook here at the same moment: use that one
            _delete_webhook(hook)
            return find(session, channel_id, slug)
        return hook
    return None


def _delete_webhook(hook: Hook) -> None:
    try:
        _call("DELETE", f"/webhooks/{hook.webhook_id}/{hook.token}", None, shown=f"/webhooks/{hook.webhook_id}")
    except (DiscordError, DiscordUnavailable) as e:
        log.info("could not delete webhook %s: %s", hook.webhook_id, e)


def post_as_persona(session, channel_id: int, guild_id: int, slug: str, display_name: str, content: str,
                    nonce: str | None = None) -> int:
    """Post `content` in the channel as the persona through its webhook; as the bot where there is none (a
    refusal to post as the bot raises DiscordError, as post_message does)."""
    hook = find(session, channel_id, slug)
    if hook is None and not creation_refused(session, channel_id):
        hook = _create_webhook(session, channel_id, guild_id, slug, display_name)
    if hook is not None:
        message = {"content": content[:MAX_CONTENT], "username": webhook_name(display_name),
                   "allowed_mentions": {"parse": []}}
        try:
            return int(_call("POST", f"/webhooks/{hook.webhook_id}/{hook.token}?wait=true", message,
                             shown=f"/webhooks/{hook.webhook_id}")["id"])
        except DiscordError as e:
            log.info("webhook %s refused a post (posting as the bot): %s", hook.webhook_id, e)
            if e.status in (401, 403, 404):
                forget(session, hook.webhook_id)
    return post_message(channel_id, content, nonce=nonce)


def post_content(display_name: str, text: str) -> str:
    """The persona's name in bold, then the text, both escaped as every other output is (core.markdown): a
    generated `**`, `[x](url)`, `# header` or @everyone shows literally. Cut to Discord's limit, never between a
    backslash and the character it escapes."""
    head = f"**{escape(display_name)}**\n"
    body = escape(text.strip())[: MAX_CONTENT - len(head)]
    if (len(body) - len(body.rstrip("\\"))) % 2:
        body = body[:-1]
    return head + body


def post(schedule_id: int, slot_iso: str, runtime) -> dict:
    """Generate (with `runtime`, a worker.serve.runtime.Runtime) and post a claimed slot; idempotent (a
    redelivered job for a posted slot does nothing)."""
    slot = as_utc(datetime.fromisoformat(slot_iso))
    with session_scope() as session:
        claim = session.scalars(select(SchedulePost).where(SchedulePost.schedule_id == schedule_id,
                                                           SchedulePost.slot == slot)).first()
        if claim is not None and claim.status is PostStatus.POSTED:
            return {"status": "posted", "message_id": claim.message_id, "duplicate": True}
        schedule = session.get(Schedule, schedule_id)
        problem = None
        if schedule is None:
            return {"status": "failed", "error": "schedule deleted"}
        persona = schedule.persona
        if not schedule.enabled:
            problem = "schedule disabled"
        elif persona.disabled:
            problem = f"persona {persona.slug} is disabled by the bot's operator"
        elif persona.active_checkpoint_id is None:
            problem = f"persona {persona.slug} has no trained checkpoint yet"
        if problem:
            finish_post(session, schedule_id, slot, error=problem)
            return {"status": "failed", "error": problem}
        # the same slot always gets the same text, even when its job is redelivered
        seed = (schedule_id * 1_000_003 + int(slot.timestamp())) % 2**31
        request = GenerateRequest(checkpoint_id=persona.active_checkpoint_id, persona=persona.slug,
                                  prompt=schedule.prompt, guild_id=schedule.guild_id, channel_id=schedule.channel_id,
                                  params=merge_sampling(persona.sampling, schedule.params, {"seed": seed}),
                                  request_id=f"schedule-{schedule_id}-{int(slot.timestamp())}")  # one row per slot

        channel_id, display_name, guild_id, slug = (schedule.channel_id, persona.display_name, schedule.guild_id,
                                                    persona.slug)
    result = runtime.serve(request, maybe_done=True)
    # One message per slot even when two runs of this job overlap (a redelivery, a job re-published by the
    # lease reaper while its worker was only slow): the slot's row stays locked from the check to the
    # record, so the second run waits and then finds it posted. Discord's enforced nonce covers a run that
    # died between posting and recording.
    with session_scope() as session:
        claim = session.scalars(select(SchedulePost).where(SchedulePost.schedule_id == schedule_id,
                                                           SchedulePost.slot == slot).with_for_update()).first()
        if claim is not None and claim.status is PostStatus.POSTED:
            return {"status": "posted", "message_id": claim.message_id, "duplicate": True}
        try:
            message_id = post_as_persona(session, channel_id, guild_id, slug, display_name,
                                         post_content(display_name, result.full_text),
                                         nonce=f"s{schedule_id}-{int(slot.timestamp())}"[:25])
        except DiscordError as e:
            finish_post(session, schedule_id, slot, error=str(e), generation=result.generation_id)
            paused = e.status in PAUSE_ON_STATUS
            if paused and (schedule := session.get(Schedule, schedule_id)) is not None:
                schedule.enabled = False  # /schedule list shows it paused, with this post's error
                log.warning("schedule %s paused: posting into channel %s failed: %s", schedule_id, channel_id, e)
                tell_creator_when_committed(session, schedule, slug, str(e))
            return {"status": "failed", "error": str(e), "paused": paused}
        finish_post(session, schedule_id, slot, message_id=message_id, generation=result.generation_id)
    return {"status": "posted", "message_id": message_id, "generation_id": result.generation_id}
