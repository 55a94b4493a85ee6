"""Chatting by message: mention the bot (`@Improbable trump: make the wall`), or reply to one of its
results to continue that text in the same persona. The answer is a reply, streamed like /generate.

Only a reply (message type 19, reference type 0) to the bot's own message in the same channel continues a
text: a forward (reference type 1, maybe into another server or a DM) and system messages (pin notices,
joins...) never do. Nobody is answered where they may not send messages themselves."""

from __future__ import annotations

import asyncio
import logging
import re

import discord
from discord import app_commands

import service.generation
import service.policy
import service.webhooks
from bot import ambient
from bot.formatting import user_error
from bot.limits import Refusal, cooldown_message, may_post
from bot.streaming import ReplyOutput, run_generation
from bot.views import result_view
from core import metrics

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


CHAT_TYPES = (discord.MessageType.default, discord.MessageType.reply)  # not pins, joins, boosts...


async def replied_to_us(bot, message: discord.Message) -> bool:
    """Whether the message is a reply (type 19, reference type 0) to one of the bot's messages in the same
    channel: its own, or one a persona posted through the bot's webhook. The referenced message normally
    comes with the reply; when it does not, it is fetched."""
    ref = message.reference
    if message.type is not discord.MessageType.reply or ref is None or ref.message_id is None \
            or ref.type is not discord.MessageReferenceType.reply or ref.channel_id != message.channel.id:
        return False
    resolved = ref.resolved
    if resolved is None:
        try:
            resolved = await message.channel.fetch_message(ref.message_id)
        except discord.HTTPException:
            return False
    if not isinstance(resolved, discord.Message):
        return False
    if resolved.author.id == bot.user.id:
        return True
    return resolved.webhook_id is not None and \
        await asyncio.to_thread(service.webhooks.posts_as_persona, resolved.webhook_id)


def author_may_post(message: discord.Message) -> bool:
    """Whether the author may send messages in the channel (a DM: yes)."""
    if message.guild is None:
        return True
    if not isinstance(message.author, discord.Member):
        return False
    return may_post(message.channel.permissions_for(message.author), message.channel)


async def on_message(bot, message: discord.Message) -> None:
    """Handle a message, and count it by what was done with it once done (core.metrics.BOT_MESSAGES)."""
    outcome = "failed"
    try:
        outcome = await _handle(bot, message)
    finally:
        metrics.record_message(outcome)


async def _handle(bot, message: discord.Message) -> str:
    me = bot.user
    if me is None or message.author.bot or message.author.id == me.id:
        return "bot"
    if message.type not in CHAT_TYPES:
        return "system"
    previous = None
    if await replied_to_us(bot, message):
        previous = await generation_of(bot, message.reference.message_id, wait=True)
        if previous is not None and await ambient.conversation_reply(bot, message, previous):
            return "conversation"  # a reply to an ambient reply where a conversation window is set
    mentioned = me.id in message.raw_mentions or any(u.id == me.id for u in message.mentions)
    if previous is None and not (mentioned and re.search(rf"<@!?{me.id}>", message.content)):
        await ambient.maybe_reply(bot, message)  # not addressed to the bot: maybe an ambient reply
        return "ambient"
    if not author_may_post(message):
        return "not_allowed"  # answering would post where they may not
    return await _answer(bot, message, me.id, previous)


async def _answer(bot, message: discord.Message, me: int, previous: int | None) -> str:
    text = strip_mentions(message.content, me)
    actor = service.policy.Actor(message.author.id, message.guild.id if message.guild else None, message.channel.id)
    try:
        await bot.limits.check_generate(actor.user_id, actor.guild_id, bot.jobs.in_flight(actor.user_id))
    except Refusal as e:
        await _refuse(message, e.message)
        return "refused"
    except app_commands.CommandOnCooldown as e:
        await _refuse(message, cooldown_message(e))
        return "refused"
    try:
        if previous is not None:
            request = await asyncio.to_thread(service.generation.follow_up, previous, "continue", actor, text)
        else:
            slug, prompt = await asyncio.to_thread(service.generation.parse_chat, text, actor.guild_id)
            request = await asyncio.to_thread(service.generation.prepare_generation, slug, prompt, actor)
    except service.policy.UserError as e:
        bot.limits.refund(actor.user_id, actor.guild_id)
        await _refuse(message, user_error(e))
        return "refused"
    try:
        await message.channel.typing()
    except discord.HTTPException:
        pass
    await run_generation(bot, ReplyOutput(message), request, result_view, user_id=actor.user_id,
                         guild_id=actor.guild_id,
                         source="mention" if previous is None else "reply")
    return "answered"
