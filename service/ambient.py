"""Ambient replies (`/ambient on|off`): which channels are opted in, in which persona, how often. The bot
decides per message (bot/ambient.py); this module keeps the settings in the database (db AmbientChannel).

The conversation window: once a member replies to one of the persona's ambient replies, the persona keeps
answering in that channel for `window` seconds with its own chance and cooldown (within the same ceilings as
every ambient reply, and counted in the server's replies per hour). Whether a channel's window is open is a
mark in the shared quota tables (service.quotas: `ambient:window:<channel>` until its end), so every bot
process sees the same window; each member reply to the persona opens it again for the full length."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sqlalchemy import select

from db import session_scope
from db.models import AmbientChannel, Generation
from service.errors import NeedsPermission, NotAValue, UserError
from service.lookup import find_trained_persona
from service.policy import Actor, Ceilings, ceilings
from service.quotas import Quotas

MAX_COOLDOWN_SECONDS = 7 * 24 * 3600
MAX_WINDOW_SECONDS = 3600  # a conversation window lasts at most an hour after the last reply to the persona
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
HOUR = 3600.0


@dataclass(frozen=True)
class Window:
    """The conversation window: `seconds` long (0: none), answering with `chance` at most once per
    `cooldown_seconds` in the channel."""

    seconds: int = 0
    chance: float = 0.5
    cooldown_seconds: int = 30


@dataclass(frozen=True)
class Ambient:
    channel_id: int
    persona: str
    chance: float
    cooldown_seconds: int
    notes: tuple[str, ...] = field(default=(), compare=False)  # what enable() clamped to a ceiling, plain words
    window: Window = Window()


def within_ceilings(chance: float, seconds: int, top: Ceilings, what: str = "") -> tuple[float, int, tuple[str, ...]]:
    """Chance and cooldown within the deployment's ceilings (accept and clamp, as /settings does). `what`
    names them in the notes ("window " for the conversation window's)."""
    notes = []
    if chance > top.ambient_chance:
        notes.append(f"{what}chance {chance:g} is past this deployment's ceiling: set to {top.ambient_chance:g}.")
        chance = top.ambient_chance
    if seconds < top.ambient_cooldown_seconds:
        notes.append(f"{what}cooldown {seconds} s is below this deployment's least: set to "
                     f"{top.ambient_cooldown_seconds} s.")
        seconds = top.ambient_cooldown_seconds
    return chance, seconds, tuple(notes)


def window_within_ceilings(window: Window, top: Ceilings) -> tuple[Window, tuple[str, ...]]:
    """The window's chance and cooldown within the ambient ceilings, its length within MAX_WINDOW_SECONDS."""
    if window.seconds <= 0:
        return Window(0, window.chance, window.cooldown_seconds), ()
    chance, cooldown, notes = within_ceilings(window.chance, window.cooldown_seconds, top, "window ")
    seconds = window.seconds
    if seconds > MAX_WINDOW_SECONDS:
        notes += (f"window {seconds} s is past the longest: set to {MAX_WINDOW_SECONDS} s.",)
        seconds = MAX_WINDOW_SECONDS
    return Window(seconds, chance, cooldown), notes


def parse_cooldown(text: str) -> int:
    """'10m' → 600 ('90s', '2h', '1d'; a bare number is seconds)."""
    m = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", text or "")
    if not m:
        raise NotAValue(text, "a cooldown", ("30s", "10m", "2h"))
    seconds = int(m.group(1)) * UNITS[m.group(2) or "s"]
    if seconds > MAX_COOLDOWN_SECONDS:
        raise UserError("The cooldown can be at most 7 days.")
    return seconds


def enable(actor: Actor, channel_id: int, persona: str, chance: float, cooldown: str, window: str = "0",
           window_chance: float = 0.5, window_cooldown: str = "30s") -> Ambient:
    """Opt the channel in (Manage Server only; the persona must exist and have a model), with a conversation
    window of `window` (a duration like '5m'; '0': none)."""
    if not actor.can_manage:
        raise NeedsPermission("Manage Server", "turn ambient replies on or off")
    if actor.guild_id is None:
        raise UserError("Ambient replies work in a server's channels only.")
    if not 0 < chance <= 1 or not 0 < window_chance <= 1:
        raise UserError("The chance is a probability per message, above 0 and at most 1 (e.g. 0.05).")
    top = ceilings()
    chance, seconds, notes = within_ceilings(chance, parse_cooldown(cooldown), top)
    talk, window_notes = window_within_ceilings(
        Window(parse_cooldown(window), window_chance, parse_cooldown(window_cooldown)), top)
    with session_scope() as session:
        found, _ = find_trained_persona(session, persona, actor)  # (a member's voice: its owner only)
        row = session.get(AmbientChannel, channel_id) or AmbientChannel(channel_id=channel_id)
        row.guild_id, row.persona_slug, row.chance = actor.guild_id, found.slug, chance
        row.cooldown_seconds, row.enabled_by = seconds, actor.user_id
        row.window_seconds, row.window_chance, row.window_cooldown_seconds = talk.seconds, talk.chance, \
            talk.cooldown_seconds
        session.add(row)
        return Ambient(channel_id, found.slug, chance, seconds, notes + window_notes, talk)


def disable(actor: Actor, channel_id: int) -> bool:
    """Opt the channel out; whether it was in."""
    if not actor.can_manage:
        raise NeedsPermission("Manage Server", "turn ambient replies on or off")
    with session_scope() as session:
        row = session.get(AmbientChannel, channel_id)
        if row is None:
            return False
        session.delete(row)
    close_window(channel_id)
    return True


def _stored(row: AmbientChannel, top: Ceilings) -> Ambient:
    """A stored setting within the ceilings as they are now (an operator may have lowered them since)."""
    chance, seconds, _ = within_ceilings(row.chance, row.cooldown_seconds, top)
    talk, _ = window_within_ceilings(Window(row.window_seconds or 0, row.window_chance,
                                            row.window_cooldown_seconds), top)
    return Ambient(row.channel_id, row.persona_slug, chance, seconds, window=talk)


def setting(channel_id: int) -> Ambient | None:
    with session_scope() as session:
        row = session.get(AmbientChannel, channel_id)
        return None if row is None else _stored(row, ceilings())


def all_settings() -> dict[int, Ambient]:
    """Every opted-in channel's setting, by channel, in one query: the bot keeps them all (bot/ambient.py) rather
    than asking for each channel it sees a message in, which on a big deployment is a query per message."""
    top = ceilings()
    with session_scope() as session:
        return {row.channel_id: _stored(row, top) for row in session.scalars(select(AmbientChannel))}


# -- the conversation window, shared by every bot process --------------------------------------------------------

def window_key(channel_id: int) -> str:
    return f"ambient:window:{channel_id}"


def open_window(channel_id: int, seconds: float, quotas: Quotas | None = None) -> None:
    """Open the channel's window for `seconds` from now (or keep it open that long, if it ends sooner)."""
    if seconds > 0:
        (quotas or Quotas()).extend(window_key(channel_id), seconds)


def window_left(channel_id: int, quotas: Quotas | None = None) -> float:
    """Seconds the channel's window stays open (0: closed)."""
    return (quotas or Quotas()).retry_after(window_key(channel_id))


def close_window(channel_id: int, quotas: Quotas | None = None) -> None:
    (quotas or Quotas()).reset(window_key(channel_id))


def window_turn(guild_id: int, channel_id: int, window: Window, top: Ceilings, quotas: Quotas | None = None) -> bool:
    """Whether an answer inside the window may go out now, claiming it when it may: the window's cooldown in the
    channel (at least the ceiling's least), then one of the server's ambient replies per hour (the same count
    as every ambient reply)."""
    quotas = quotas or Quotas()
    per = max(window.cooldown_seconds, top.ambient_cooldown_seconds)
    if quotas.hit(f"ambient:window-turn:{channel_id}", per) > 0:
        return False
    return quotas.take(f"ambient:guild:{guild_id}", 1, top.ambient_replies_per_hour, HOUR) is not None


def answered_unasked(generation_id: int) -> bool | None:
    """Whether a stored text is an ambient reply (it continued a member's message; nobody asked for it): True,
    False (a member asked for it), or None when nobody asked but the quoted member is not noted yet (an
    ambient reply is noted just after its message is shown)."""
    with session_scope() as session:
        gen = session.get(Generation, generation_id)
        if gen is None or gen.user_id is not None:
            return False
        return True if gen.quoted_user_id is not None else None
