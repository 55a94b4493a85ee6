"""Ambient replies: `/ambient on persona:trump chance:0.05 cooldown:10m` (Manage Server) opts a channel in,
`/ambient off` out. In an opted-in channel the bot now and then answers a human's message in that persona,
continuing from it: each message has `chance` of an answer, at most one per `cooldown` per channel; never
to bots, never elsewhere, never pinging anyone (the reply goes out with AllowedMentions.none(), and the
mentions in the message are left out of the prompt). With `window:5m`, a member's reply to one of these
answers opens a conversation window: for that long the persona answers messages in the channel with
`window_chance`, at most once per `window_cooldown` (service/ambient.py). Needs the Message Content intent
(README: Discord application setup)."""

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
from bot.webhooks import output_for

SETTING_TTL = 30.0  # seconds the settings are trusted before they are read again (another bot process)
MENTION = re.compile(r"<(@[!&]?|#)\d+>|@(everyone|here)")


class OptedIn:
    """Every opted-in channel's setting, all read in one query at most every SETTING_TTL seconds: every message
    in every channel needs to know, and a query per channel would be about one per message on a big deployment.
    A change made in this process shows at once, and survives a read that was under way when it was made."""

    def __init__(self) -> None:
        self.channels: dict[int, service.ambient.Ambient] = {}
        self.read_at = -float("inf")
        self._reading: asyncio.Task | None = None
        self._changed: dict[int, tuple[service.ambient.Ambient | None, float]] = {}  # here, since the read began

    async def get(self, channel_id: int) -> service.ambient.Ambient | None:
        if time.monotonic() - self.read_at >= SETTING_TTL:
            if self._reading is None or self._reading.done():
                self._reading = asyncio.create_task(self._read())
            await asyncio.shield(self._reading)
        return self.channels.get(channel_id)

    def set(self, channel_id: int, found: service.ambient.Ambient | None) -> None:
        self._changed[channel_id] = (found, time.monotonic())
        self._apply(self.channels, channel_id, found)

    async def _read(self) -> None:
        started = time.monotonic()
        channels = await asyncio.to_thread(service.ambient.all_settings)
        self._changed = {k: v for k, v in self._changed.items() if v[1] >= started}
        for channel_id, (found, _) in self._changed.items():
            self._apply(channels, channel_id, found)
        self.channels, self.read_at = channels, started

    @staticmethod
    def _apply(channels: dict, channel_id: int, found: service.ambient.Ambient | None) -> None:
        if found is None:
            channels.pop(channel_id, None)
        else:
            channels[channel_id] = found


_opted_in = OptedIn()
_rng = random.Random()


async def _setting(channel_id: int) -> service.ambient.Ambient | None:
    return await _opted_in.get(channel_id)


def _from_a_member(bot, message: discord.Message) -> bool:
    """A human's message in a server: never a bot's, a webhook's (the personas' own posts among them) or ours."""
    me = getattr(bot, "user", None)
    return message.guild is not None and not message.author.bot and message.webhook_id is None \
        and (me is None or message.author.id != me.id)


def _prompt(message: discord.Message) -> str:
    """The message as a prompt, without its mentions (an answer never pings anyone)."""
    return re.sub(r"\s+", " ", MENTION.sub("", message.content)).strip()


async def maybe_reply(bot, message: discord.Message) -> None:
    """Called for every message that is not a command, mention or reply to the bot (bot/chat.py). Inside an
    open conversation window the window's chance and cooldown apply, else the channel's."""
    if not _from_a_member(bot, message):
        return
    ambient = await _setting(message.channel.id)
    if ambient is None:
        return
    if ambient.window.seconds and await asyncio.to_thread(service.ambient.window_left, message.channel.id,
                                                          bot.limits.quotas) > 0:
        await _window_answer(bot, message, ambient)
        return
    if _rng.random() >= ambient.chance:
        return
    prompt = _prompt(message)
    if not prompt:
        return
    # the channel's cooldown and the server's replies per hour, shared by every bot process (bot.limits)
    if not await bot.limits.ambient_turn(message.guild.id, message.channel.id, ambient.cooldown_seconds):
        return
    await _answer(bot, message, ambient.persona, prompt)


async def conversation_reply(bot, message: discord.Message, generation_id: int) -> bool:
    """A reply to one of the bot's messages (bot/chat.py): when it answers an ambient reply in a channel with
    a conversation window, open the window (again, for its full length), answer it as any message inside the
    window, and return True. False: not such a reply (the caller continues the text, as for any result)."""
    ambient = await _setting(message.channel.id)
    if message.guild is None or ambient is None or not ambient.window.seconds:
        return False
    if not await _is_ambient_reply(generation_id):
        return False
    if not _from_a_member(bot, message):
        return True  # a bot or a webhook answering the persona: neither opens the window nor is answered
    await asyncio.to_thread(service.ambient.open_window, message.channel.id, ambient.window.seconds,
                            bot.limits.quotas)
    await _window_answer(bot, message, ambient)
    return True


async def _is_ambient_reply(generation_id: int) -> bool:
    """Whether the text is an ambient reply; its quoted member is noted just after its message is shown, so a
    fast reply may look again for a moment."""
    for delay in (0.1, 0.2, 0.4, 0.8, 0):
        found = await asyncio.to_thread(service.ambient.answered_unasked, generation_id)
        if found is not None:
            return found
        if delay:
            await asyncio.sleep(delay)
    return False


async def _window_answer(bot, message: discord.Message, ambient: service.ambient.Ambient) -> None:
    """Answer inside the conversation window: its chance, its cooldown in the channel, and the server's ambient
    replies per hour (within the operator's ceilings: service.ambient.window_turn)."""
    if _rng.random() >= ambient.window.chance:
        return
    prompt = _prompt(message)
    if not prompt:
        return
    top = (await bot.limits.policy(message.guild.id)).limits
    if not await asyncio.to_thread(service.ambient.window_turn, message.guild.id, message.channel.id,
                                   ambient.window, top, bot.limits.quotas):
        return
    await _answer(bot, message, ambient.persona, prompt)


async def _answer(bot, message: discord.Message, persona: str, prompt: str) -> None:
    """Continue the member's message in the persona, as a reply to it."""
    actor = service.policy.Actor(None, message.guild.id, message.channel.id)
    try:
        request = await asyncio.to_thread(service.generation.prepare_generation, persona, prompt, actor)
    except service.policy.UserError:
        return  # the persona lost its model: stay quiet rather than answer a chat with an error
    # counted against the server and the member whose message it answers; a refusal stays quiet
    try:
        claim = await bot.limits.admit(request, member_id=message.author.id, guild_id=message.guild.id,
                                       cooldown=False)
    except Refusal:
        return
    # as the persona through the channel's webhook where the bot may, else a reply as the bot
    output = await output_for(bot, message.channel, request, ReplyOutput(message))
    gid = await run_generation(bot, output, request, result_view, user_id=None,
                               guild_id=message.guild.id, source="ambient", member_id=message.author.id, claim=claim)
    if gid is not None:  # the prompt is the author's message: keep whose, for /privacy
        await asyncio.to_thread(service.privacy.note_quote, gid, message.author.id)


ambient_group = app_commands.Group(name="ambient", description="Occasional replies in this channel.",
                                   guild_only=True, default_permissions=discord.Permissions(manage_guild=True))


@ambient_group.command(name="on", description="Now and then answer a message in this channel, in a persona.")
@app_commands.describe(persona="Whose voice", chance="Probability of answering each message (e.g. 0.05)",
                       cooldown="At most one answer per this long in the channel (e.g. 10m, 30s, 2h)",
                       window="Once someone replies to the persona, keep talking this long (e.g. 5m; 0: never)",
                       window_chance="Probability of answering each message inside the window (e.g. 0.5)",
                       window_cooldown="Inside the window, at most one answer per this long (e.g. 30s)")
@app_commands.autocomplete(persona=persona_autocomplete)
async def ambient_on(interaction: discord.Interaction, persona: str,
                     chance: app_commands.Range[float, 0.0001, 1.0] = 0.05, cooldown: str = "10m",
                     window: str = "0", window_chance: app_commands.Range[float, 0.0001, 1.0] = 0.5,
                     window_cooldown: str = "30s") -> None:
    await replies.defer(interaction, ephemeral=True)
    try:
        found = await asyncio.to_thread(service.ambient.enable, actor_of(interaction), interaction.channel_id,
                                        persona, chance, cooldown, window, window_chance, window_cooldown)
    except service.policy.UserError as e:
        await replies.fail(interaction, user_error(e))
        return
    _opted_in.set(found.channel_id, found)
    notes = "".join(f"\n{note}" for note in found.notes)
    talk = found.window
    conversation = (f" Once someone replies to it, it keeps talking for {talk.seconds} s: about {talk.chance:.0%} "
                    f"of messages, at most once every {talk.cooldown_seconds} s." if talk.seconds else "")
    await replies.send(interaction, f"Ambient replies on in this channel: `{found.persona}` answers about "
                                    f"{found.chance:.0%} of messages, at most once every {found.cooldown_seconds} s."
                                    f"{conversation} `/ambient off` to stop.{notes}")


@ambient_group.command(name="off", description="Stop ambient replies in this channel.")
async def ambient_off(interaction: discord.Interaction) -> None:
    await replies.defer(interaction, ephemeral=True)
    try:
        was_on = await asyncio.to_thread(service.ambient.disable, actor_of(interaction), interaction.channel_id)
    except service.policy.UserError as e:
        await replies.fail(interaction, user_error(e))
        return
    _opted_in.set(interaction.channel_id, None)
    await replies.send(interaction, "Ambient replies off in this channel." if was_on
                       else "Ambient replies were not on in this channel.")


COMMANDS = (ambient_group,)
