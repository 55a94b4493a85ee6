"""The board's reads and the weekly post's claims in SQL, shared by the bot (through service/board.py) and the
workers (worker/board.py posts each server's board once a week).

The board of a week (Monday 00:00 UTC to the next) lists the server's texts of that week:
- the most liked: net votes (up − down) above zero, most first, ties to the earlier text;
- the most improbable: the lowest probability the model gave a token it actually wrote (the generation's
  `params["probability"]["min"]`, recorded by the generate worker), only texts that were posted, ties to the
  earlier text.
Deleted texts (the Delete button) are left out of both.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import and_, case, func, or_, select, update

from core.board import DEFAULT_DOWN, DEFAULT_UP, Board, BoardLine, VoteEmoji
from db.models import BoardSettings, Generation, Reaction, SchedulePost
from db.types import as_utc, utcnow

BOARD_SIZE = 5


def week_bounds(weeks_ago: int = 0, now: datetime | None = None) -> tuple[datetime, datetime]:
    """[Monday 00:00 UTC, the next Monday) of the week `weeks_ago` weeks before the one holding `now`."""
    now = as_utc(now or utcnow())
    monday = (now - timedelta(days=now.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
    start = monday - timedelta(weeks=weeks_ago)
    return start, start + timedelta(weeks=1)


def vote_emoji_of(session, guild_id: int) -> VoteEmoji:
    row = session.get(BoardSettings, guild_id)
    if row is None:
        return VoteEmoji()
    return VoteEmoji(row.up_emoji or DEFAULT_UP, row.down_emoji or DEFAULT_DOWN)


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


def board_of(session, guild_id: int, start: datetime, end: datetime, size: int = BOARD_SIZE) -> Board:
    return Board(start, end, most_liked(session, guild_id, start, end, size),
                 most_improbable(session, guild_id, start, end, size))


# --- the weekly post ------------------------------------------------------------------------------------------

def set_post_channel(session, guild_id: int, channel_id: int | None, now: datetime | None = None) -> None:
    """Post the server's board every week into `channel_id` (None: no more), from the board of the week now
    running: the week before it counts as posted."""
    row = session.get(BoardSettings, guild_id)
    if row is None:
        row = BoardSettings(guild_id=guild_id)
        session.add(row)
    row.post_channel_id = channel_id
    row.posted_week = week_bounds(1, now)[0] if channel_id is not None else None


def due_posts(session, now: datetime) -> list[tuple[int, int]]:
    """(server, channel) of every weekly post whose last finished week (before `now`'s) is not posted yet."""
    finished = week_bounds(1, now)[0]
    rows = session.execute(select(BoardSettings.guild_id, BoardSettings.post_channel_id).where(
        BoardSettings.post_channel_id.is_not(None),
        or_(BoardSettings.posted_week.is_(None), BoardSettings.posted_week < finished))
        .order_by(BoardSettings.guild_id)).all()
    return [(g, c) for g, c in rows]


def claim_post(session, guild_id: int, channel_id: int, week_start: datetime) -> datetime | None:
    """Take the post of the week starting `week_start` into `channel_id` (one UPDATE: of two dispatchers racing,
    one wins); the week posted before, to give the claim back (`release_post`) when the post fails for now;
    None when somebody else took it, or the post was moved or stopped meanwhile."""
    row = session.get(BoardSettings, guild_id)
    before = row.posted_week if row is not None else None
    taken = session.execute(update(BoardSettings).where(
        BoardSettings.guild_id == guild_id, BoardSettings.post_channel_id == channel_id,
        or_(BoardSettings.posted_week.is_(None), BoardSettings.posted_week < week_start))
        .values(posted_week=week_start)).rowcount
    return (before or week_start - timedelta(weeks=1)) if taken else None


def release_post(session, guild_id: int, week_start: datetime, before: datetime) -> None:
    session.execute(update(BoardSettings).where(BoardSettings.guild_id == guild_id,
                                                BoardSettings.posted_week == week_start).values(posted_week=before))


def stop_post(session, guild_id: int, channel_id: int) -> None:
    """Discord refused the post for good (the bot may not post there, the channel is gone): no more posts."""
    session.execute(update(BoardSettings).where(BoardSettings.guild_id == guild_id,
                                                BoardSettings.post_channel_id == channel_id)
                    .values(post_channel_id=None))
