"""Chatting by message: mention the bot (`@Improbable trump: make the wall`), or reply to one of its
results to continue that text in the same persona. The answer is a reply, streamed like /generate."""

from __future__ import annotations

import asyncio
import logging
import re

import discord
from discord import app_commands

import service.generation
import service.policy
from bot import ambient
from bot.formatting import user_error
from bot.limits import Refusal, cooldown_message
from bot.streaming import ReplyOutput, run_generation
from bot.views import result_view

log = logging.getLogger(__name__)
NO_MENTIONS = discord.AllowedMentions.none()


def strip_mentions(content: str, user_id: int) -> str:
    return re.sub(rf"<@!?{user_id}>", "", content).strip()


async def _refuse(message: discord.Message, text: str) -> None:
    try:
        await message.reply(text, allowed_mentions=NO_MENTIONS, mention_author=False)
    except discord.HTTPException:
        log.warning("could not answer %s", message.id)


async def generation_of(bot, message_id: int, *, wait: bool) -> int | None:
    """The generation shown in one of our messages. A reply can arrive before the result's message id is
    stored (a fast user, or a test), so for a message we know is ours, look again for a moment."""
    for delay in (0.1, 0.2, 0.4, 0.8, 1.0) if wait else ():
        found = bot.generation_messages.get(message_id) or \
            await asyncio.to_thread(service.generation.generation_of_message, message_id)
        if found is not None:
            return found
        await asyncio.sleep(delay)
    return bot.generation_messages.get(message_id) or \
        await asyncio.to_thread(service.generation.generation_of_message, message_id)


async def on_message(bot, message: discord.Message) -> None:
    me = bot.user
    if me is None or message.author.bot or message.author.id == me.id:
        return
    previous = None
    ref = message.reference
    if ref is not None and ref.message_id is not None:
        resolved = ref.resolved
        ours = isinstance(resolved, discord.Message) and resolved.author.id == me.id
        if ours or not isinstance(resolved, discord.Message):
            previous = await generation_of(bot, ref.message_id, wait=ours)
    mentioned = me.id in message.raw_mentions or any(u.id == me.id for u in message.mentions)
    if previous is None and not (mentioned and re.search(rf"<@!?{me.id}>", message.content)):
        await ambient.maybe_reply(bot, message)  # not addressed to the bot: maybe an ambient reply
        return
    text = strip_mentions(message.content, me.id)
    actor = service.policy.Actor(message.author.id, message.guild.id if message.guild else None, message.channel.id)
    try:
        await bot.limits.check_generate(actor.user_id, actor.guild_id, bot.jobs.in_flight(actor.user_id))
    except Refusal as e:
        await _refuse(message, e.message)
        return
    except app_commands.CommandOnCooldown as e:
        await _refuse(message, cooldown_message(e))
        return
    try:
        if previous is not None:
            request = await asyncio.to_thread(service.generation.follow_up, previous, "continue", actor, text)
        else:
            slug, prompt = await asyncio.to_thread(service.generation.parse_chat, text, actor.guild_id)
            request = await asyncio.to_thread(service.generation.prepare_generation, slug, prompt, actor)
    except service.policy.UserError as e:
        bot.limits.refund(actor.user_id, actor.guild_id)
        await _refuse(message, user_error(e))
        return
    try:
        await message.channel.typing()
    except discord.HTTPException:
        pass
    await run_generation(bot, ReplyOutput(message), request, result_view, user_id=actor.user_id,
                         guild_id=actor.guild_id,
                         source="mention" if previous is None else "reply")
