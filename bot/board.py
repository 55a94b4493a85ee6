"""Votes and the board: reactions on the bot's texts, `/best [week]` and `/board emoji`.

A member's reaction with the server's up or down emoji (👍 and 👎 unless a manager chose others with
`/board emoji`) on a message that shows a generated text (a result, an ambient reply, a scheduled post) is a
vote, read from the raw gateway events (GUILD_MESSAGE_REACTIONS, a default intent), so a message the bot does
not hold in its cache counts too. The bot's own reactions and other bots' are ignored; which message shows a
text, and whether it belongs to the server, is the service's to say (service/board.py). A skin tone does not
change a vote: 👍🏽 is 👍.

`/best` shows the week's most liked lines (net votes) and the most improbable ones (the lowest probability of
a word actually posted), each with a link to its message (core/board.py renders it). `/board post channel:`
(Manage Server) has the workers post the board of each finished week there every Monday (worker/board.py).
"""

from __future__ import annotations

import asyncio
import time

import discord
from discord import app_commands

import service.board
from bot import replies
from bot.limits import actor_of
from bot.schedules import bot_can_post, member_can_post
from core.board import fit_board
from service.errors import Code, UserError

EMOJI_TTL = 60.0  # seconds a server's vote emoji are kept (a change made through this process: at once)
MODIFIERS = {*range(0x1F3FB, 0x1F400), 0xFE0F}  # skin tones and the emoji presentation selector


def emoji_key(emoji: discord.PartialEmoji | str) -> str:
    """What identifies an emoji as a vote: a custom emoji's id, or a Unicode emoji without skin tone."""
    if isinstance(emoji, str):
        emoji = discord.PartialEmoji.from_str(emoji.strip())
    if emoji.id:
        return str(emoji.id)
    return "".join(ch for ch in emoji.name or "" if ord(ch) not in MODIFIERS)


def checked_emoji(value: str | None) -> str | None:
    """A manager's emoji as stored: a custom emoji as `<:name:id>`, a Unicode emoji as it is; words refused."""
    if value is None or not value.strip():
        return None
    emoji = discord.PartialEmoji.from_str(value.strip())
    if emoji.id:
        return str(emoji)
    name = emoji.name or ""
    if len(name) > 16 or any(ch.isspace() or (ch.isascii() and ch.isalnum()) for ch in name):
        raise UserError("{value} is not an emoji: pick one from the emoji picker, e.g. ⭐ or a server emoji.",
                        value=Code(value.strip()[:40]))
    return name


class VoteEmoji:
    """Each server's vote emoji by key ({key: "up" | "down"}), read from the database at most every minute, and
    the lock that keeps votes in the order of their events (a quick add and remove must not land reversed)."""

    def __init__(self) -> None:
        self._kinds: dict[int, tuple[float, dict[str, str]]] = {}
        self.order = asyncio.Lock()  # FIFO: taken before a handler's first await, so in the events' order

    async def kinds(self, guild_id: int) -> dict[str, str]:
        hit = self._kinds.get(guild_id)
        if hit is not None and time.monotonic() - hit[0] < EMOJI_TTL:
            return hit[1]
        chosen = await asyncio.to_thread(service.board.vote_emoji, guild_id)
        kinds = {emoji_key(chosen.up): "up", emoji_key(chosen.down): "down"}
        self._kinds[guild_id] = (time.monotonic(), kinds)
        return kinds

    def forget(self, guild_id: int) -> None:
        self._kinds.pop(guild_id, None)


async def vote_kind(bot, guild_id: int | None, emoji: discord.PartialEmoji) -> str | None:
    if guild_id is None:
        return None
    return (await bot.vote_emoji.kinds(guild_id)).get(emoji_key(emoji))


async def on_reaction(bot, payload: discord.RawReactionActionEvent) -> None:
    """A reaction added or removed anywhere the bot can see: a vote when it is a member's, with a vote emoji."""
    if bot.user is None or payload.user_id == bot.user.id:
        return
    if payload.member is not None and payload.member.bot:
        return
    async with bot.vote_emoji.order:
        kind = await vote_kind(bot, payload.guild_id, payload.emoji)
        if kind is not None:
            await asyncio.to_thread(service.board.record_vote, payload.guild_id, payload.message_id,
                                    payload.user_id, kind, payload.event_type == "REACTION_ADD")


async def on_reactions_cleared(bot, payload: discord.RawReactionClearEvent | discord.RawReactionClearEmojiEvent
                               ) -> None:
    """A moderator removed every reaction of a message (or every one of an emoji): its votes go too."""
    if payload.guild_id is None:
        return
    async with bot.vote_emoji.order:
        kind = None
        if isinstance(payload, discord.RawReactionClearEmojiEvent):
            kind = await vote_kind(bot, payload.guild_id, payload.emoji)
            if kind is None:
                return
        await asyncio.to_thread(service.board.clear_votes, payload.guild_id, payload.message_id, kind)


# --- /best --------------------------------------------------------------------------------------------------

@app_commands.command(name="best", description="This server's most liked and most improbable lines of the week.")
@app_commands.describe(week="Which week: 0 this week (the default), 1 last week, 2 the week before, …")
@app_commands.guild_only()
async def best_command(interaction: discord.Interaction,
                       week: app_commands.Range[int, 0, service.board.MAX_WEEKS_AGO] = 0) -> None:
    await replies.defer(interaction)
    found = await asyncio.to_thread(service.board.best, interaction.guild_id, week)
    emoji = await asyncio.to_thread(service.board.vote_emoji, interaction.guild_id)
    await replies.send(interaction, fit_board(found, week, emoji))


board_group = app_commands.Group(name="board", description="The board of the server's best lines (/best).",
                                 guild_only=True, default_permissions=discord.Permissions(manage_guild=True))


@board_group.command(name="emoji", description="Which reactions count as votes on the bot's texts (Manage Server).")
@app_commands.describe(up="The emoji of an up vote (default 👍)", down="The emoji of a down vote (default 👎)",
                       reset="Back to 👍 and 👎")
async def board_emoji(interaction: discord.Interaction, up: str | None = None, down: str | None = None,
                      reset: bool = False) -> None:
    await replies.defer(interaction, ephemeral=True)
    chosen = await asyncio.to_thread(service.board.set_vote_emoji, actor_of(interaction), checked_emoji(up),
                                     checked_emoji(down), reset)
    interaction.client.vote_emoji.forget(interaction.guild_id)
    await replies.send(interaction, f"Votes on the bot's texts: {chosen.up} up, {chosen.down} down. `/best` shows "
                                    "the week's most liked.")


@board_group.command(name="post", description="Post the board of each finished week in a channel, every Monday "
                                              "(Manage Server).")
@app_commands.describe(channel="Where the board goes every Monday at 00:00 UTC", stop="No more weekly posts")
async def board_post(interaction: discord.Interaction, channel: discord.TextChannel | None = None,
                     stop: bool = False) -> None:
    if not stop and channel is None:
        where = await asyncio.to_thread(service.board.weekly_post, interaction.guild_id)
        await replies.fail(interaction, (f"The board is posted in <#{where}> every Monday." if where else
                                         "The board is not posted every week.") +
                           " Name a channel to post it there, or `stop: True` to stop.")
        return
    if channel is not None and not member_can_post(channel, interaction.user):
        await replies.fail(interaction, f"You cannot post in {channel.mention} yourself (you need **View Channel** "
                                        "and **Send Messages** there), so the board cannot go there.")
        return
    await replies.defer(interaction, ephemeral=True)
    target = None if stop else channel
    await asyncio.to_thread(service.board.set_weekly_post, actor_of(interaction), target.id if target else None,
                            bot_can_post=bot_can_post(target) if target else None)
    await replies.send(interaction, "The board is no longer posted every week." if target is None else
                       f"Every Monday at 00:00 UTC the board of the week that ended goes to {target.mention} "
                       "(the first one next Monday). `/best` shows it any time.")


COMMANDS = (best_command, board_group)
