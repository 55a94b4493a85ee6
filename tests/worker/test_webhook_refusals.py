"""Scheduled posts in a channel where Discord refuses the bot a webhook (no Manage Webhooks: 403): the first
post asks and falls back to posting as the bot; the refusal is remembered for every process (the bot's
service.webhooks reads the same mark), so the next posts go straight to the fallback, with no refused request
(each counts towards the 10,000 invalid requests in 10 minutes that get a host's address blocked). Once the
mark lapses and the permission is there, the next post gets its webhook, and the mark is gone."""

from __future__ import annotations

import db
import service.webhooks
from db.webhooks import creation_refused, note_refused
from tests.bot.fake_discord import FakeDiscord as Discord
from tests.environment import configured
from worker.schedules import post_as_persona

POSTS = 5


def _post(fake, channel: int, n: int) -> int:
    with db.session_scope() as session:
        return post_as_persona(session, channel, fake.guild_id, "alice", "Alice", f"**Alice**\npost {n}")


def test_a_refused_webhook_is_asked_for_once_not_at_every_post(services):
    fake = Discord().start()
    channel = fake.add_channel(fake.guild_id, "no-webhooks")  # the bot has no Manage Webhooks here
    try:
        with configured({"IMPROBABLE_DISCORD_API_BASE": fake.api_base, "IMPROBABLE_DISCORD_TOKEN": "t"}):
            for n in range(POSTS):
                _post(fake, channel, n)
            creations = fake.sent("POST", f"/channels/{channel}/webhooks")
            assert [r.status for r in creations] == [403]  # 1 refused request for 5 posts, not 5
            as_bot = [r for r in fake.sent("POST", f"/channels/{channel}/messages") if r.status == 200]
            assert [r.json["content"] for r in as_bot] == [f"**Alice**\npost {n}" for n in range(POSTS)]
            assert service.webhooks.refused_here(channel)  # the bot's side reads the same mark
            assert not service.webhooks.refused_here(fake.channel_id)

            fake.grant_webhooks(channel)  # fixed; once the mark lapses (made to here) the next post asks again
            with db.session_scope() as session:
                note_refused(session, channel, seconds=0)
            _post(fake, channel, POSTS)
            assert [r.status for r in fake.sent("POST", f"/channels/{channel}/webhooks")] == [403, 200]
            assert [m["content"] for m in fake.webhook_messages(channel)] == [f"**Alice**\npost {POSTS}"]
            with db.session_scope() as session:
                assert not creation_refused(session, channel)  # a webhook made there clears the refusal
    finally:
        fake.stop()
