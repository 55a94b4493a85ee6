"""A restarted bot finishes what the previous run was showing: every generate job is kept in SQL with where its
message is (service.generation.remember_in_flight, written by bot/streaming.py) until the outcome is shown. At
start-up each remembered job is followed again, its message reopened (through the interaction's webhook, or the
bot's reply) and edited to the outcome; a job that cannot be followed (it ran inside the stopped bot process, or
its outcome never comes) ends with a note saying so. Nobody is left looking at frozen text.
"""

from __future__ import annotations

import asyncio
import logging

import discord

import service.generation
from bot.dialogue import end_interrupted_dialogues
from bot.jobs import GENERATE
from bot.limits import Claim
from bot.streaming import Buttons, ChannelOutput, InteractionOutput, ReplyOutput, follow_generation, in_background
from bot.webhooks import reopen as reopen_as_persona

log = logging.getLogger(__name__)
RESUME_GRACE_SECONDS = 10.0  # how long a restarted bot looks for the outcome of a job older than its timeout
RESTARTED = ("The bot restarted while this was being written and the text did not come back. "
             "Nothing more is coming: run the command again.")


class ReopenedInteractionOutput(InteractionOutput):
    """An interaction's original response reopened by a restarted bot: edited through the interaction's
    webhook (its token, which Discord honours for 15 minutes), as discord.py does for a live interaction."""

    shown = True  # the message exists ("thinking…" or partial text): errors are written into it

    def __init__(self, bot, token: str):
        self.webhook = discord.Webhook.partial(bot.application_id, token, client=bot)
        self.message_id: int | str = "@original"

    async def recall(self) -> None:
        """What the message shows now (its text stays under a note if the job cannot be finished)."""
        message = await self.webhook.fetch_message(self.message_id)
        self.message_id, self.last = message.id, message.content

    async def _edit_original(self, **fields) -> discord.Message:
        return await self.webhook.edit_message(self.message_id, **fields)


def reopen(bot, row: service.generation.InFlight) -> ReopenedInteractionOutput | ReplyOutput | ChannelOutput | None:
    """The message of a job remembered by an earlier run of the bot, or None when it cannot be edited any
    more (an interaction token expires after 15 minutes) or was never posted (a dialogue's turn). A message
    posted as the persona is reopened through its webhook (bot.webhooks.reopen)."""
    if row.interaction_token:
        if row.age > bot.settings.liveness.token_lifetime:
            return None
        return ReopenedInteractionOutput(bot, row.interaction_token)
    if row.channel_id is None:
        return None
    channel = bot.get_partial_messageable(row.channel_id, guild_id=row.guild_id)
    if row.reply_to is None:  # a new message in the channel, once posted
        if row.message_id is None:
            return None
        output = ChannelOutput(channel, row.channel_id)
        output.message = channel.get_partial_message(row.message_id)
        return output
    output = ReplyOutput(channel.get_partial_message(row.reply_to), author_id=bot.user.id)
    if row.message_id is not None:
        output.reply = channel.get_partial_message(row.message_id)
    return output


async def resume_generations(bot, buttons: Buttons) -> int:
    """At start-up: the generations an earlier run of the bot was showing when it stopped are followed again
    and finished (their message edited to the outcome), or ended with a note when their job cannot be
    followed; only those of the servers on this process's shards (core.shards), the other processes
    follow theirs. Returns how many were found; each is handled in the background."""
    try:
        rows = await asyncio.to_thread(service.generation.in_flight_generations, bot.settings.shards)
    except Exception as e:  # noqa: BLE001 - the database being away must not keep the bot from starting
        log.warning("could not read the generations in flight before the restart: %s", e)
        return 0
    in_background(end_interrupted_dialogues(bot))
    for row in rows:
        in_background(_resume(bot, row, buttons))
    if rows:
        log.info("resuming %d generation(s) in flight when the bot last stopped (%s)", len(rows),
                 bot.settings.shards.describe())
    return len(rows)


async def _resume(bot, row: service.generation.InFlight, buttons: Buttons) -> None:
    try:
        output = await reopen_as_persona(bot, row) if row.webhook_id is not None else reopen(bot, row)
        if output is None:
            log.info("generation %s: its message can no longer be edited", row.task_id)
        elif await _recalled(output):
            job = bot.jobs.adopt(row.task_id, GENERATE, user_id=row.user_id, guild_id=row.guild_id,
                                 label=row.request.label)
            if job is None:  # it ran inside the bot process that stopped
                await output.error(RESTARTED)
            else:
                timeout = max(RESUME_GRACE_SECONDS, bot.settings.bot_job_timeout - row.age)
                try:
                    await follow_generation(bot, output, row.request, job, buttons, user_id=row.user_id,
                                            guild_id=row.guild_id, refund=False, timeout=timeout, lost=RESTARTED)
                finally:  # the job's claim on its member's and server's units is its task id
                    await bot.limits.release(Claim(row.task_id, 0.0))
                return  # follow_generation forgets the row
        await asyncio.to_thread(service.generation.forget_in_flight, row.task_id)
        await bot.limits.release(Claim(row.task_id, 0.0))
    except Exception:
        log.exception("resuming generation %s", row.task_id)


async def _recalled(output) -> bool:
    """Read what the reopened message shows; False when it is gone (deleted meanwhile)."""
    try:
        await output.recall()
        return True
    except discord.NotFound:
        return False
