"""Ambient replies: `/ambient on persona:trump chance:0.05 cooldown:10m` (Manage Server) opts a channel in,
`/ambient off` out. In an opted-in channel the bot now and then answers a human's message in that persona,
continuing from it: each message has `chance` of an answer, at most one per `cooldown` per channel; never
to bots, never elsewhere, never pinging anyone (the reply goes out with AllowedMentions.none(), and the
mentions in the message are left out of the prompt). Needs the Message Content intent (README: Discord
application setup)."""

from __future__ import annotations

import asyncio
import random
import re
import time

import discord
from discord import app_commands

import service.ambient
import service.generation
import service.policy
import service.privacy
from bot import replies
from bot.autocomplete import persona_autocomplete
from bot.formatting import user_error
from bot.limits import Refusal, actor_of
from bot.streaming import ReplyOutput, run_generation
from bot.views import result_view

SETTING_TTL = 30.0  # seconds a channel's setting is trusted before it is read again (another bot process)
MENTION = re.compile(r"<(@[!&]?|#)\d+>|@(everyone|here)")

_settings: dict[int, tuple[service.ambient.Ambient | None, float]] = {}  # channel -> (setting, read at)
_rng = random.Random()


async def _setting(channel_id: int) -> service.ambient.Ambient | None:
    cached = _settings.get(channel_id)
    if cached is not None and time.monotonic() - cached[1] < SETTING_TTL:
        return cached[0]
    found = await asyncio.to_thread(service.ambient.setting, channel_id)
    _settings[channel_id] = (found, time.monotonic())
    return found


async def maybe_reply(bot, message: discord.Message) -> None:
    """Called for every message that is not a command, mention or reply to the bot (bot/chat.py)."""
    if message.guild is None or message.author.bot or message.webhook_id is not None:
        return
    ambient = await _setting(message.channel.id)
    if ambient is None or _rng.random() >= ambient.chance:
        return
    prompt = re.sub(r"\s+", " ", MENTION.sub("", message.content)).strip()
    if not prompt:
        return
    # the channel's cooldown and the server's replies per hour, shared by every bot process (bot.limits)
    if not await bot.limits.ambient_turn(message.guild.id, message.channel.id, ambient.cooldown_seconds):
        return
    actor = service.policy.Actor(None, message.guild.id, message.channel.id)
    try:
        request = await asyncio.to_thread(service.generation.prepare_generation, ambient.persona, prompt, actor)
    except service.policy.UserError:
        return  # the persona lost its model: stay quiet rather than answer a chat with an error
    # counted against the server and the member whose message it answers; a refusal stays quiet
    try:
        claim = await bot.limits.admit(request, member_id=message.author.id, guild_id=message.guild.id,
                                       cooldown=False)
    except Refusal:
        return
    gid = await run_generation(bot, ReplyOutput(message), request, result_view, user_id=None,
                               guild_id=message.guild.id, source="ambient", member_id=message.author.id, claim=claim)
    if gid is not None:  # the prompt is the author's message: keep whose, for /privacy
        await asyncio.to_thread(service.privacy.note_quote, gid, message.author.id)


ambient_group = app_commands.Group(name="ambient", description="Occasional replies in this channel.",
                                   guild_only=True, default_permissions=discord.Permissions(manage_guild=True))


@ambient_group.command(name="on", description="Now and then answer a message in this channel, in a persona.")
@app_commands.describe(persona="Whose voice", chance="Probability of answering each message (e.g. 0.05)",
                       cooldown="At most one answer per this long in the channel (e.g. 10m, 30s, 2h)")
@app_commands.autocomplete(persona=persona_autocomplete)
async def ambient_on(interaction: discord.Interaction, persona: str,
                     chance: app_commands.Range[float, 0.0001, 1.0] = 0.05, cooldown: str = "10m") -> None:
    await replies.defer(interaction, ephemeral=True)
    try:
        found = await asyncio.to_thread(service.ambient.enable, actor_of(interaction), interaction.channel_id,
                                        persona, chance, cooldown)
    except service.policy.UserError as e:
        await replies.fail(interaction, user_error(e))
        return
    _settings[found.channel_id] = (found, time.monotonic())
    notes = "".join(f"\n{note}" for note in found.notes)
    await replies.send(interaction, f"Ambient replies on in this channel: `{found.persona}` answers about "
                                    f"{found.chance:.0%} of messages, at most once every {found.cooldown_seconds} s. "
                                    f"`/ambient off` to stop.{notes}")


@ambient_group.command(name="off", description="Stop ambient replies in this channel.")
async def ambient_off(interaction: discord.Interaction) -> None:
    await replies.defer(interaction, ephemeral=True)
    try:
        was_on = await asyncio.to_thread(service.ambient.disable, actor_of(interaction), interaction.channel_id)
    except service.policy.UserError as e:
        await replies.fail(interaction, user_error(e))
        return
    _settings[interaction.channel_id] = (None, time.monotonic())
    await replies.send(interaction, "Ambient replies off in this channel." if was_on
                       else "Ambient replies were not on in this channel.")


COMMANDS = (ambient_group,)
