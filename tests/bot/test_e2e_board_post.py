"""End to end: `/board post channel:` (Manage Server) has the workers post the board of each finished week in
that channel, once (the schedule dispatcher run by the test for next Monday, twice), and no more after
`/board post stop:`; the second server's board, posted by the same tick, holds only its own texts and goes to
its own channel; a channel the bot may not post in stops the weekly post."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from db.board import set_post_channel
from tests.environment import wait_until

from .fake_discord import SEND_MESSAGES, opt
from .test_e2e import TIMEOUT, ephemeral_reply
from .test_e2e_board import _generate, _rows, _votes

pytestmark = pytest.mark.slow


def _board_post(fake, user, channel: int | None = None, **extra) -> str:
    options = [opt("channel", str(channel), 7)] if channel else []
    options += [opt(k, v) for k, v in extra.items()]
    resolved = {"channels": {str(channel): {"id": str(channel), "name": "board", "type": 0, "permissions": "0"}}} \
        if channel else None
    return ephemeral_reply(fake, fake.slash("board post", options, user=user, resolved=resolved))["content"]


def _tick(e2e, now: datetime) -> None:
    """One run of the schedule dispatcher at `now`, waited for (its result is back: anything it posts is)."""
    e2e.celery().send_task("improbable.dispatch_schedules", args=[now.isoformat()]).get(timeout=TIMEOUT)


def _boards(fake, channel: int) -> list[dict]:
    return [m for m in fake.channel_messages(channel) if "best**" in m["content"]]


def _post_channel(e2e) -> int | None:
    from db.models import BoardSettings

    return _rows(e2e, lambda s: s.get(BoardSettings, e2e.fake.guild_id).post_channel_id)


def _second_server_board(e2e, output: str) -> int:
    """The second server's weekly post into its lobby and a posted text of its own there this week, set in the
    database (the e2e bot syncs its commands to the first server only): the text's message id."""
    from db.generations import record_generation
    from db.personas import get_persona

    fake = e2e.fake
    if not fake.guilds[fake.guild2_id].joined:
        fake.restore_guild(fake.guild2_id)
    message = fake.snowflake()

    def setup(session) -> None:
        set_post_channel(session, fake.guild2_id, fake.lobby_id)
        record_generation(session, get_persona(session, "alice", None), prompt="p", output=output,
                          params={"probability": {"mean": 0.6, "min": 0.01}}, user_id=fake.dave.id,
                          guild_id=fake.guild2_id, channel_id=fake.lobby_id, message_id=message)

    _rows(e2e, setup)
    return message


def test_the_board_of_the_week_is_posted_every_monday_once(e2e):
    fake = e2e.fake
    channel = fake.add_channel(fake.guild_id, "weekly-board")
    assert "Manage Server" in _board_post(fake, fake.carol, channel)
    assert "Every Monday" in _board_post(fake, fake.owner, channel) and _post_channel(e2e) == channel
    msg, gid = _generate(e2e, "Weekly board")
    fake.react(msg, "👍", user=fake.carol)
    wait_until(lambda: _votes(e2e, gid) == [(fake.carol.id, "up")], TIMEOUT, "the vote")
    lobby_message = _second_server_board(e2e, "Lobby-only text")

    now = datetime.now(UTC)
    _tick(e2e, now)  # this week is not over: nothing yet
    assert _boards(fake, channel) == []
    for _ in range(2):  # next week: this week's board, once
        _tick(e2e, now + timedelta(days=7))
    [board] = _boards(fake, channel)
    posted = fake.sent("POST", f"/channels/{channel}/messages")[-1].json
    assert board["content"].startswith("**Last week's best**") and posted["allowed_mentions"] == {"parse": []}
    liked = board["content"].split("**Most liked**", 1)[1].split("**Most improbable**", 1)[0]
    assert "+1 · alice: “" in liked and f"/{msg['id']})" in liked, board["content"]
    [other] = _boards(fake, fake.lobby_id)  # each server's board in its own channel, with its own texts only
    assert f"/{fake.guild2_id}/{fake.lobby_id}/{lobby_message})" in other["content"], other["content"]
    assert "Lobby-only" not in board["content"] and str(fake.guild2_id) not in board["content"]
    assert msg["id"] not in other["content"] and str(fake.guild_id) not in other["content"]
    _rows(e2e, lambda s: set_post_channel(s, fake.guild2_id, None))

    assert "no longer" in _board_post(fake, fake.owner, stop=True) and _post_channel(e2e) is None
    _tick(e2e, now + timedelta(days=14))
    assert len(_boards(fake, channel)) == 1


def test_a_channel_the_bot_may_no_longer_post_in_stops_the_weekly_post(e2e):
    fake = e2e.fake
    channel = fake.add_channel(fake.guild_id, "board-closed")
    assert "Every Monday" in _board_post(fake, fake.owner, channel)
    fake.overwrite(channel, fake.bot_user.id, deny=SEND_MESSAGES, member=True)
    _tick(e2e, datetime.now(UTC) + timedelta(days=7))
    assert [r.status for r in fake.sent("POST", f"/channels/{channel}/messages")] == [403]
    assert _post_channel(e2e) is None and _boards(fake, channel) == []
