"""Scheduled posts: parsing `every` and `cron`, adding, listing and removing a guild's schedules (the worker's
beat-driven dispatcher posts them)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from core.cron import parse_cron
from db import Schedule, SchedulePost, session_scope
from db.schedules import create_schedule
from service.errors import CannotPost, Code, NotAValue, TooManySchedules, TooOften, UserError
from service.generation import MAX_PROMPT_CHARS
from service.lookup import find_persona, find_schedule
from service.policy import Actor, ceilings, require_trainer

_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400, "w": 604800}
MIN_INTERVAL_SECONDS = 60


def parse_interval(text: str) -> int:
    """'90m', '1h30m', '2 h', '1d' → seconds (at least a minute)."""
    s = text.strip().lower().replace(" ", "")
    parts = re.findall(r"(\d+(?:\.\d+)?)(s|sec|min|m|hr|h|d|w)", s)
    if not parts or "".join(n + u for n, u in parts) != s:
        raise NotAValue(text, "an interval", ("30m", "2h", "1h30m", "1d"))
    seconds = int(sum(float(n) * _UNITS[u] for n, u in parts))
    if seconds < MIN_INTERVAL_SECONDS:
        raise UserError("Schedules run at most once a minute: use an interval of at least {least}.", least=Code("1m"))
    return seconds


def check_cron(expr: str) -> str:
    """The expression, normalised, or UserError saying what is wrong with it."""
    try:
        parse_cron(expr)
    except ValueError as e:
        raise NotAValue(expr, "a valid cron expression", reason=str(e)) from None
    return " ".join(expr.split())


def check_frequency(interval: int | None, cron: str | None, least: int) -> None:
    """Refuse a schedule that would post more often than every `least` seconds (the deployment's ceiling);
    a cron expression by the shortest gap between its next fire times over a week."""
    if interval is not None and interval < least:
        raise TooOften(interval, least)
    if cron is not None:
        gap = shortest_cron_gap(cron)
        if gap < least:
            raise TooOften(gap, least)


def shortest_cron_gap(expr: str, days: int = 35) -> float:
    """The shortest time in seconds between two consecutive fire times of a cron expression (UTC), minute by
    minute over `days` from a fixed Monday (a month's days and a week's days both come round)."""
    cron = parse_cron(expr)
    start = datetime(2026, 1, 5, tzinfo=UTC)
    last, shortest = None, float("inf")
    for minute in range(days * 1440):
        t = start + timedelta(minutes=minute)
        if t.minute in cron.minute and t.hour in cron.hour and t.month in cron.month_of_year \
                and t.day in cron.day_of_month and (t.isoweekday() % 7) in cron.day_of_week:
            if last is not None:
                shortest = min(shortest, (t - last).total_seconds())
                if shortest <= 60:
                    break
            last = t
    return shortest


@dataclass
class ScheduleView:
    id: int
    persona_slug: str
    channel_id: int
    interval_seconds: int | None  # one of the two: a fixed interval…
    cron: str | None  # …or a cron expression in UTC
    prompt: str
    enabled: bool
    problem: str = ""  # why a paused schedule stopped (the last refused post), shown by /schedule list


def add_schedule(actor: Actor, slug: str, channel_id: int, *, every: str | None = None, cron: str | None = None,
                 prompt: str = "", bot_can_post: bool | None = None) -> ScheduleView:
    """`bot_can_post`: whether the bot may view and send messages in the channel (the bot knows, the service
    does not); False refuses the schedule instead of letting it fail at every slot. None: unknown."""
    if actor.guild_id is None:
        raise UserError("Schedules post into a server's channels: use this command in a server.")
    require_trainer(actor)
    if bot_can_post is False:
        raise CannotPost(channel_id)
    if bool(every) == bool(cron):
        raise UserError("Give exactly one of {every} (like {every_example}) or {cron} (like {cron_example}).",
                        every=Code("every"), every_example=Code("2h"), cron=Code("cron"),
                        cron_example=Code("0 9 * * *"))
    interval = parse_interval(every) if every else None
    cron = check_cron(cron) if cron else None
    top = ceilings()
    check_frequency(interval, cron, top.min_schedule_interval_seconds)
    with session_scope() as session:
        held = session.scalar(select(func.count()).select_from(Schedule).where(Schedule.guild_id == actor.guild_id))
        if held >= top.schedules:
            raise TooManySchedules(held, top.schedules)
        persona, _ = find_persona(session, slug, actor)
        sched = create_schedule(session, persona, guild_id=actor.guild_id, channel_id=channel_id,
                                prompt=(prompt or "")[:MAX_PROMPT_CHARS], interval_seconds=interval, cron=cron,
                                created_by=actor.user_id)
        return ScheduleView(sched.id, persona.slug, channel_id, interval, cron, sched.prompt, True)


def list_schedules(guild_id: int | None) -> list[ScheduleView]:
    if guild_id is None:
        return []
    with session_scope() as session:
        schedules = session.scalars(select(Schedule).where(Schedule.guild_id == guild_id).order_by(Schedule.id))
        return [ScheduleView(s.id, s.persona.slug, s.channel_id, s.interval_seconds, s.cron, s.prompt, s.enabled,
                             "" if s.enabled else _last_error(session, s.id))
                for s in schedules]


def _last_error(session, schedule_id: int) -> str:
    return session.scalar(select(SchedulePost.error).where(SchedulePost.schedule_id == schedule_id,
                                                           SchedulePost.error.is_not(None))
                          .order_by(SchedulePost.slot.desc()).limit(1)) or ""


def remove_schedule(actor: Actor, schedule_id: int) -> ScheduleView:
    """Delete one of the guild's schedules; returns what it was."""
    require_trainer(actor)
    with session_scope() as session:
        sched = find_schedule(session, schedule_id, actor)
        removed = ScheduleView(sched.id, sched.persona.slug, sched.channel_id, sched.interval_seconds, sched.cron,
                               sched.prompt, False)
        session.delete(sched)
    return removed

