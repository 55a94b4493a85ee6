"""The board's weekly post (`/board post`): every Monday, the board of the week that ended goes to the channel
a server's manager chose, once.

The schedule dispatcher (improbable.dispatch_schedules, run by beat every minute) calls `dispatch_boards`.
Each due post is claimed first (db.board.claim_post: one UPDATE, so two dispatchers racing post it once) and
sent as the bot with a nonce (Discord refuses a second message with it), at most BOARDS_PER_TICK a tick (the
others are due at the next one). After any downtime only the last finished week is posted. Discord refusing
for good (no access, the channel gone: 403 or 404) stops the weekly post; a transient failure gives the claim
back for the next tick. Like scheduled posts, the weekly post needs beat: a bot running its jobs in-process
(no broker) has none.
"""

from __future__ import annotations

import logging
from datetime import datetime

from core.board import fit_board
from db.board import board_of, claim_post, due_posts, release_post, stop_post, vote_emoji_of, week_bounds
from db.session import session_scope
from db.types import as_utc, utcnow

from .schedules import PAUSE_ON_STATUS, DiscordError, DiscordUnavailable, post_message

log = logging.getLogger(__name__)
BOARDS_PER_TICK = 20


def dispatch_boards(now: datetime | None = None, limit: int = BOARDS_PER_TICK) -> list[int]:
    """Post the boards due at `now` (the servers' ids whose board went out)."""
    now = as_utc(now or utcnow())
    start, end = week_bounds(1, now)
    with session_scope() as session:
        due = due_posts(session, now)[:limit]
    return [guild_id for guild_id, channel_id in due if post_board(guild_id, channel_id, start, end)]


def post_board(guild_id: int, channel_id: int, start: datetime, end: datetime) -> bool:
    """Claim and post the server's board of the week [start, end); whether it went out."""
    with session_scope() as session:
        before = claim_post(session, guild_id, channel_id, start)
        if before is None:
            return False  # another dispatcher has it, or the post was moved or stopped meanwhile
        content = fit_board(board_of(session, guild_id, start, end), 1, vote_emoji_of(session, guild_id))
    try:
        post_message(channel_id, content, nonce=f"b{start:%y%m%d}{guild_id % 10**17}")
    except DiscordUnavailable as e:
        log.warning("board of server %s: not posted for now, tried again at the next tick: %s", guild_id, e)
        with session_scope() as session:
            release_post(session, guild_id, start, before)
        return False
    except DiscordError as e:
        stop = e.status in PAUSE_ON_STATUS
        log.warning("board of server %s: %s%s", guild_id, e, " (its weekly post stops)" if stop else "")
        if stop:
            with session_scope() as session:
                stop_post(session, guild_id, channel_id)
        return False
    return True
