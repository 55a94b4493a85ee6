"""Votes on generated texts and the server's board (`/best`, `/board emoji`).

A member's reaction with the server's up or down emoji (👍 and 👎 unless a manager chose others) on a message
that shows a generated text of that server is a vote: one row per text, member and kind (db Reaction), removed
with the reaction. Who voted is personal data: service/privacy.py shows, exports and deletes it.

The board of a week (Monday 00:00 UTC to the next) lists the server's texts of that week:
- the most liked: net votes (up − down) above zero, most first, ties to the earlier text;
- the most improbable: the lowest probability the model gave a token it actually wrote (the generation's
  `params["probability"]["min"]`, recorded by the generate worker), only texts that were posted, ties to the
  earlier text.
Deleted texts (the Delete button) are left out of both.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, case, delete, func, or_, select
from sqlalchemy.exc import IntegrityError

from db import Generation, SchedulePost, session_scope
from db.generations import generation_for_message
from db.models import BoardSettings, Reaction
from db.types import as_utc, utcnow
from service.errors import NeedsPermission, UserError
from service.policy import Actor

DEFAULT_UP, DEFAULT_DOWN = "👍", "👎"
KINDS = ("up", "down")
BOARD_SIZE = 5
MAX_WEEKS_AGO = 520


@dataclass(frozen=True)
class VoteEmoji:
    """The emoji that count as votes in a server, as a manager wrote them (a custom emoji as `<:name:id>`)."""

    up: str = DEFAULT_UP
    down: str = DEFAULT_DOWN


@dataclass(frozen=True)
class BoardLine:
    """One text on the board: where it was shown (its message), what it says, its votes and probability."""

    generation_id: int
    persona: str
    text: str
    created_at: datetime
    guild_id: int | None
    channel_id: int | None
    message_id: int | None
    up: int = 0
    down: int = 0
    probability: float | None = None

    @property
    def score(self) -> int:
        return self.up - self.down


@dataclass(frozen=True)
class Board:
    week_start: datetime
    week_end: datetime
    liked: list[BoardLine]
    improbable: list[BoardLine]


# --- the vote emoji -----------------------------------------------------------------------------------------

def vote_emoji(guild_id: int) -> VoteEmoji:
    with session_scope() as session:
        row = session.get(BoardSettings, guild_id)
        if row is None:
            return VoteEmoji()
        return VoteEmoji(row.up_emoji or DEFAULT_UP, row.down_emoji or DEFAULT_DOWN)


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

def week_bounds(weeks_ago: int = 0, now: datetime | None = None) -> tuple[datetime, datetime]:
    """[Monday 00:00 UTC, the next Monday) of the week `weeks_ago` weeks before the one holding `now`."""
    now = as_utc(now or utcnow())
    monday = (now - timedelta(days=now.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
    start = monday - timedelta(weeks=weeks_ago)
    return start, start + timedelta(weeks=1)


def _line(gen: Generation, message_id: int | None, **extra) -> BoardLine:
    return BoardLine(gen.id, gen.persona.slug, gen.output, as_utc(gen.created_at), gen.guild_id, gen.channel_id,
                     message_id, **extra)


def _posted_message(session, gen: Generation) -> int | None:
    if gen.message_id is not None:
        return gen.message_id
    return session.scalars(select(SchedulePost.message_id).where(SchedulePost.generation_id == gen.id,
                                                                 SchedulePost.message_id.is_not(None))).first()


def _in_week(guild_id: int, start: datetime, end: datetime):
    return and_(Generation.guild_id == guild_id, Generation.created_at >= start, Generation.created_at < end,
                Generation.deleted_at.is_(None))


def most_liked(session, guild_id: int, start: datetime, end: datetime, size: int) -> list[BoardLine]:
    up = func.sum(case((Reaction.kind == "up", 1), else_=0))
    down = func.sum(case((Reaction.kind == "down", 1), else_=0))
    rows = session.execute(
        select(Generation, up.label("up"), down.label("down")).join(Reaction, Reaction.generation_id == Generation.id)
        .where(_in_week(guild_id, start, end)).group_by(Generation.id).having(up - down > 0)
        .order_by((up - down).desc(), Generation.created_at, Generation.id).limit(size)).all()
    return [_line(gen, _posted_message(session, gen), up=int(u), down=int(d)) for gen, u, d in rows]


def most_improbable(session, guild_id: int, start: datetime, end: datetime, size: int) -> list[BoardLine]:
    least = Generation.params["probability"]["min"].as_float()
    posted = or_(Generation.message_id.is_not(None),
                 Generation.id.in_(select(SchedulePost.generation_id).where(SchedulePost.message_id.is_not(None))))
    gens = session.scalars(select(Generation).where(_in_week(guild_id, start, end), posted, least.is_not(None))
                           .order_by(least, Generation.created_at, Generation.id).limit(size)).all()
    return [_line(gen, _posted_message(session, gen), probability=gen.params["probability"]["min"]) for gen in gens]


def best(guild_id: int, weeks_ago: int = 0, *, now: datetime | None = None, size: int = BOARD_SIZE) -> Board:
    """The server's board of a week (`weeks_ago` 0: this week)."""
    if not 0 <= weeks_ago <= MAX_WEEKS_AGO:
        raise UserError("Choose a week between 0 (this week) and {most} weeks ago.", most=MAX_WEEKS_AGO)
    start, end = week_bounds(weeks_ago, now)
    with session_scope() as session:
        return Board(start, end, most_liked(session, guild_id, start, end, size),
                     most_improbable(session, guild_id, start, end, size))
