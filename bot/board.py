"""Votes and the board: reactions on the bot's texts, `/best [week]` and `/board emoji`.

A member's reaction with the server's up or down emoji (👍 and 👎 unless a manager chose others with
`/board emoji`) on a message that shows a generated text (a result, an ambient reply, a scheduled post) is a
vote, read from the raw gateway events (GUILD_MESSAGE_REACTIONS, a default intent), so a message the bot does
not hold in its cache counts too. The bot's own reactions and other bots' are ignored; which message shows a
text, and whether it belongs to the server, is the service's to say (service/board.py). A skin tone does not
change a vote: 👍🏽 is 👍.

`/best` shows the week's most liked lines (net votes) and the most improbable ones (the lowest probability of
a word actually posted), each with a link to its message.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import discord
from discord import app_commands

import service.board
from bot import replies
from bot.formatting import truncate
from bot.limits import actor_of
from core.markdown import escape
from service.errors import Code, UserError

EMOJI_TTL = 60.0  # seconds a server's vote emoji are kept (a change made through this process: at once)
MODIFIERS = {*range(0x1F3FB, 0x1F400), 0xFE0F}  # skin tones and the emoji presentation selector
TEXT_CHARS = (160, 110, 70, 40)  # a line's text is cut to the first of these that lets the board fit
MESSAGE_LIMIT = 2000


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

def jump_url(line: service.board.BoardLine) -> str | None:
    if line.guild_id is None or line.channel_id is None or line.message_id is None:
        return None
    return f"https://discord.com/channels/{line.guild_id}/{line.channel_id}/{line.message_id}"


def _entry(rank: int, line: service.board.BoardLine, measure: str, chars: int) -> str:
    text = " ".join(line.text.split())
    shown = f"“{escape(truncate(text, chars))}”" if text else "*(blank)*"
    url = jump_url(line)
    return f"{rank}. {measure} · {escape(line.persona)}: {shown}" + (f" · [jump]({url})" if url else "")


def _probability(p: float | None) -> str:
    return "p n/a" if p is None else f"p = {p:.2g}"


def render_board(board: service.board.Board, weeks_ago: int, emoji: service.board.VoteEmoji,
                 chars: int = TEXT_CHARS[0]) -> str:
    last_day = board.week_end - timedelta(days=1)
    when = "This week" if weeks_ago == 0 else "Last week" if weeks_ago == 1 else f"{weeks_ago} weeks ago"
    lines = [f"**{when}'s best** ({board.week_start:%a %d %b} – {last_day:%a %d %b %Y}, UTC)", "",
             f"**Most liked** ({emoji.up} minus {emoji.down})"]
    lines += [_entry(i, line, f"{line.score:+d}", chars) for i, line in enumerate(board.liked, 1)] or \
        [f"No votes yet: react with {emoji.up} or {emoji.down} under the bot's texts."]
    lines += ["", "**Most improbable** (the least likely word the model actually wrote)"]
    lines += [_entry(i, line, _probability(line.probability), chars) for i, line in enumerate(board.improbable, 1)] \
        or ["No texts posted that week."]
    return "\n".join(lines)


def fit_board(board: service.board.Board, weeks_ago: int, emoji: service.board.VoteEmoji) -> str:
    """The board in one message: each line's text cut shorter until it fits."""
    for chars in TEXT_CHARS:
        content = render_board(board, weeks_ago, emoji, chars)
        if len(content) <= MESSAGE_LIMIT:
            return content
    return content[:MESSAGE_LIMIT]


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


COMMANDS = (best_command, board_group)
