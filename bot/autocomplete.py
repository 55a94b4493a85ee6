"""Autocomplete for persona names (from the database, cached a few seconds per guild), runs and jobs."""

from __future__ import annotations

import asyncio
import time

import discord
from discord import app_commands

import service.personas
import service.policy
import service.training

NAMES_TTL = 10.0
_names: dict[int | None, tuple[float, list[str]]] = {}


async def persona_names(guild_id: int | None) -> list[str]:
    hit = _names.get(guild_id)
    if hit is not None and time.monotonic() - hit[0] < NAMES_TTL:
        return hit[1]
    names = await asyncio.to_thread(service.personas.persona_names, guild_id)
    _names[guild_id] = (time.monotonic(), names)
    return names


def forget_names(guild_id: int | None = None) -> None:
    """After a persona is created or deleted."""
    _names.pop(guild_id, None)


def _rank(names: list[str], current: str) -> list[str]:
    current = current.strip().lower()
    starts = [n for n in names if n.startswith(current)]
    inside = [n for n in names if current in n and n not in starts]
    return (starts + inside)[:25]


async def persona_autocomplete(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
    names = await persona_names(interaction.guild_id)
    return [app_commands.Choice(name=n, value=n) for n in _rank(names, current)]


async def run_autocomplete(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[int]]:
    actor = service.policy.Actor(interaction.user.id, interaction.guild_id)
    runs = await asyncio.to_thread(service.training.training_runs, actor)
    return [app_commands.Choice(name=f"run {r.id}: {r.persona_slug} ({r.status})", value=r.id)
            for r in runs if current in str(r.id) or current.lower() in r.persona_slug][:25]
