"""End to end: `/board post channel:` (Manage Server) has the workers post the board of each finished week in
that channel, once (the schedule dispatcher run by the test for next Monday, twice), and no more after
`/board post stop:`; a channel the bot may not post in stops the weekly post."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

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


def test_the_board_of_the_week_is_posted_every_monday_once(e2e):
    fake = e2e.fake
    channel = fake.add_channel(fake.guild_id, "weekly-board")
    assert "Manage Server" in _board_post(fake, fake.carol, channel)
    assert "Every Monday" in _board_post(fake, fake.owner, channel) and _post_channel(e2e) == channel
    msg, gid = _generate(e2e, "Weekly board")
    fake.react(msg, "👍", user=fake.carol)
    wait_until(lambda: _votes(e2e, gid) == [(fake.carol.id, "up")], TIMEOUT, "the vote")

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
