"""Ambient replies (`/ambient on|off`): which channels are opted in, in which persona, how often. The bot
decides per message (bot/ambient.py); this module keeps the settings in the database (db AmbientChannel)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from db import session_scope
from db.models import AmbientChannel
from service.errors import NeedsPermission, NotAValue, UserError
from service.lookup import find_trained_persona
from service.policy import Actor, Ceilings, ceilings

MAX_COOLDOWN_SECONDS = 7 * 24 * 3600
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Ambient:
    channel_id: int
    persona: str
    chance: float
    cooldown_seconds: int
    notes: tuple[str, ...] = field(default=(), compare=False)  # what enable() clamped to a ceiling, plain words


def within_ceilings(chance: float, seconds: int, top: Ceilings) -> tuple[float, int, tuple[str, ...]]:
    """Chance and cooldown within the deployment's ceilings (accept and clamp, as /settings does)."""
    notes = []
    if chance > top.ambient_chance:
        notes.append(f"chance {chance:g} is past this deployment's ceiling: set to {top.ambient_chance:g}.")
        chance = top.ambient_chance
    if seconds < top.ambient_cooldown_seconds:
        notes.append(f"cooldown {seconds} s is below this deployment's least: set to {top.ambient_cooldown_seconds} s.")
        seconds = top.ambient_cooldown_seconds
    return chance, seconds, tuple(notes)


def parse_cooldown(text: str) -> int:
    """'10m' → 600 ('90s', '2h', '1d'; a bare number is seconds)."""
    m = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", text or "")
    if not m:
        raise NotAValue(text, "a cooldown", ("30s", "10m", "2h"))
    seconds = int(m.group(1)) * UNITS[m.group(2) or "s"]
    if seconds > MAX_COOLDOWN_SECONDS:
        raise UserError("The cooldown can be at most 7 days.")
    return seconds


def enable(actor: Actor, channel_id: int, persona: str, chance: float, cooldown: str) -> Ambient:
    """Opt the channel in (Manage Server only; the persona must exist and have a model)."""
    if not actor.can_manage:
        raise NeedsPermission("Manage Server", "turn ambient replies on or off")
    if actor.guild_id is None:
        raise UserError("Ambient replies work in a server's channels only.")
    if not 0 < chance <= 1:
        raise UserError("The chance is a probability per message, above 0 and at most 1 (e.g. 0.05).")
    chance, seconds, notes = within_ceilings(chance, parse_cooldown(cooldown), ceilings())
    with session_scope() as session:
        found, _ = find_trained_persona(session, persona, actor.guild_id)
        row = session.get(AmbientChannel, channel_id) or AmbientChannel(channel_id=channel_id)
        row.guild_id, row.persona_slug, row.chance = actor.guild_id, found.slug, chance
        row.cooldown_seconds, row.enabled_by = seconds, actor.user_id
        session.add(row)
        return Ambient(channel_id, found.slug, chance, seconds, notes)


def disable(actor: Actor, channel_id: int) -> bool:
    """Opt the channel out; whether it was in."""
    if not actor.can_manage:
        raise NeedsPermission("Manage Server", "turn ambient replies on or off")
    with session_scope() as session:
        row = session.get(AmbientChannel, channel_id)
        if row is None:
            return False
        session.delete(row)
        return True


def setting(channel_id: int) -> Ambient | None:
    with session_scope() as session:
        row = session.get(AmbientChannel, channel_id)
        if row is None:
            return None
        chance, seconds, _ = within_ceilings(row.chance, row.cooldown_seconds, ceilings())  # a lowered ceiling
        return Ambient(row.channel_id, row.persona_slug, chance, seconds)
