"""A server's board of a week, as data and as one Discord message: its most liked lines (net votes) and its
most improbable ones (the lowest probability of a word actually posted), each linking to its message.
`/best` shows it (bot/board.py) and the weekly post sends it (worker/board.py); db/board.py reads it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from core.markdown import escape, truncate

DEFAULT_UP, DEFAULT_DOWN = "👍", "👎"
TEXT_CHARS = (160, 110, 70, 40)  # a line's text is cut to the first of these that lets the board fit
MESSAGE_LIMIT = 2000


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


def jump_url(line: BoardLine) -> str | None:
    if line.guild_id is None or line.channel_id is None or line.message_id is None:
        return None
    return f"https://discord.com/channels/{line.guild_id}/{line.channel_id}/{line.message_id}"


def _entry(rank: int, line: BoardLine, measure: str, chars: int) -> str:
    text = " ".join(line.text.split())
    shown = f"“{escape(truncate(text, chars))}”" if text else "*(blank)*"
    url = jump_url(line)
    return f"{rank}. {measure} · {escape(line.persona)}: {shown}" + (f" · [jump]({url})" if url else "")


def _probability(p: float | None) -> str:
    return "p n/a" if p is None else f"p = {p:.2g}"


def render_board(board: Board, weeks_ago: int, emoji: VoteEmoji, chars: int = TEXT_CHARS[0]) -> str:
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


def fit_board(board: Board, weeks_ago: int, emoji: VoteEmoji) -> str:
    """The board in one message: each line's text cut shorter until it fits."""
    for chars in TEXT_CHARS:
        content = render_board(board, weeks_ago, emoji, chars)
        if len(content) <= MESSAGE_LIMIT:
            return content
    return content[:MESSAGE_LIMIT]
