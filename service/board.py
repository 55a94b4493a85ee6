"""Votes on generated texts and the server's board (`/best`, `/board emoji`, `/board post`).

A member's reaction with the server's up or down emoji (👍 and 👎 unless a manager chose others) on a message
that shows a generated text of that server is a vote: one row per text, member and kind (db Reaction), removed
with the reaction. Who voted is personal data: service/privacy.py shows, exports and deletes it.

What the board of a week lists is db/board.py's to say (the workers read it too, for the weekly post that a
manager sets up with `/board post`: worker/board.py).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, delete, select
from sqlalchemy.exc import IntegrityError

from core.board import DEFAULT_DOWN, DEFAULT_UP, Board, BoardLine, VoteEmoji
from db import Generation, SchedulePost, session_scope
from db.board import BOARD_SIZE, board_of, set_post_channel, vote_emoji_of, week_bounds
from db.generations import generation_for_message
from db.models import BoardSettings, Reaction
from service.errors import CannotPost, NeedsPermission, UserError
from service.policy import Actor

__all__ = ["BOARD_SIZE", "DEFAULT_DOWN", "DEFAULT_UP", "KINDS", "MAX_WEEKS_AGO", "Board", "BoardLine", "VoteEmoji",
           "best", "clear_votes", "record_vote", "set_vote_emoji", "set_weekly_post", "vote_emoji", "week_bounds",
           "weekly_post"]
KINDS = ("up", "down")
MAX_WEEKS_AGO = 520


# --- the vote emoji -----------------------------------------------------------------------------------------

def vote_emoji(guild_id: int) -> VoteEmoji:
    with session_scope() as session:
        return vote_emoji_of(session, guild_id)


def set_vote_emoji(actor: Actor, up: str | None = None, down: str | None = None, reset: bool = False) -> VoteEmoji:
    """A manager chooses the server's vote emoji (`reset`: back to 👍 and 👎)."""
    if not actor.can_manage:
        raise NeedsPermission("Manage Server", "choose the board's emoji")
    if actor.guild_id is None:
        raise UserError("Use this command in a server.")
    up, down = (up or "").strip() or None, (down or "").strip() or None
    with session_scope() as session:
        row = session.get(BoardSettings, actor.guild_id)
        if row is None:
            row = BoardSettings(guild_id=actor.guild_id)
            session.add(row)
        if reset:
            row.up_emoji = row.down_emoji = None
        row.up_emoji = up or row.up_emoji
        row.down_emoji = down or row.down_emoji
        chosen = VoteEmoji(row.up_emoji or DEFAULT_UP, row.down_emoji or DEFAULT_DOWN)
        if chosen.up == chosen.down:  # raised inside the transaction: nothing is saved
            raise UserError("The up and down emoji must differ.")
    return chosen


# --- votes --------------------------------------------------------------------------------------------------

def _shown_generation(session, message_id: int) -> Generation | None:
    """The generated text a message shows: a result, reply or post whose row names the message, or a scheduled
    post (its claim names the message)."""
    gen = generation_for_message(session, message_id)
    if gen is not None:
        return gen
    gen_id = session.scalars(select(SchedulePost.generation_id).where(SchedulePost.message_id == message_id)
                             .order_by(SchedulePost.id.desc()).limit(1)).first()
    return session.get(Generation, gen_id) if gen_id is not None else None


def record_vote(guild_id: int, message_id: int, user_id: int, kind: str, added: bool) -> bool:
    """A member added (or removed) a vote on a message. Whether it counts: the message shows a text generated
    in this server and not deleted. Adding twice or removing what is not there changes nothing."""
    if kind not in KINDS:
        raise ValueError(f"unknown vote kind {kind!r}")
    try:
        with session_scope() as session:
            gen = _shown_generation(session, message_id)
            if gen is None or gen.guild_id != guild_id or gen.deleted_at is not None:
                return False
            mine = and_(Reaction.generation_id == gen.id, Reaction.user_id == user_id, Reaction.kind == kind)
            if not added:
                session.execute(delete(Reaction).where(mine))
            elif session.scalars(select(Reaction.id).where(mine)).first() is None:
                session.add(Reaction(generation_id=gen.id, guild_id=guild_id, user_id=user_id, kind=kind))
    except IntegrityError:  # the same vote recorded at the same moment by another event
        return True
    return True


def clear_votes(guild_id: int, message_id: int, kind: str | None = None) -> int:
    """Every vote (or every vote of one kind) on a message removed at once (a moderator cleared its
    reactions). Returns how many rows went."""
    with session_scope() as session:
        gen = _shown_generation(session, message_id)
        if gen is None or gen.guild_id != guild_id:
            return 0
        where = [Reaction.generation_id == gen.id] + ([Reaction.kind == kind] if kind else [])
        return session.execute(delete(Reaction).where(*where)).rowcount or 0


# --- the board ----------------------------------------------------------------------------------------------

def best(guild_id: int, weeks_ago: int = 0, *, now: datetime | None = None, size: int = BOARD_SIZE) -> Board:
    """The server's board of a week (`weeks_ago` 0: this week)."""
    if not 0 <= weeks_ago <= MAX_WEEKS_AGO:
        raise UserError("Choose a week between 0 (this week) and {most} weeks ago.", most=MAX_WEEKS_AGO)
    start, end = week_bounds(weeks_ago, now)
    with session_scope() as session:
        return board_of(session, guild_id, start, end, size)


def set_weekly_post(actor: Actor, channel_id: int | None, *, bot_can_post: bool | None = None) -> int | None:
    """A manager has the board of each finished week posted into a channel every Monday (00:00 UTC, by the
    workers' schedule dispatcher), from the week now running; None stops it. `bot_can_post`: as for
    schedules (False refuses). Returns the channel."""
    if not actor.can_manage:
        raise NeedsPermission("Manage Server", "post the board every week")
    if actor.guild_id is None:
        raise UserError("Use this command in a server.")
    if bot_can_post is False and channel_id is not None:
        raise CannotPost(channel_id, "set the weekly post again")
    with session_scope() as session:
        set_post_channel(session, actor.guild_id, channel_id)
    return channel_id


def weekly_post(guild_id: int) -> int | None:
    """The channel the server's board goes to every week, if any."""
    with session_scope() as session:
        row = session.get(BoardSettings, guild_id)
        return row.post_channel_id if row is not None else None
