"""End to end: a channel holding Discord's 15 webhooks, some the bot's (one per persona, db PersonaWebhook) and
some another integration's. A persona without a webhook there posts: the bot's least recently used webhook
(by last use, not by age) is deleted, the others and the integrations' stay, and the text goes out as the
new persona. Both makers of webhooks are covered: the bot (/generate: the channel counts as full only when
Discord answers 30007) and the worker (a scheduled post: the bot's cap per channel is reached first)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from tests.environment import wait_until

from .fake_discord import opt
from .fake_webhooks import MAX_WEBHOOKS
from .test_e2e_webhooks import _persona_channel, _posted, _schedule, _through_webhook

pytestmark = pytest.mark.slow


def _fill(e2e, channel: int, own: int, oldest: int) -> list[dict]:
    """The channel's 15 webhooks: `own` of the bot's (personas p0, p1, …; p<oldest> used longest ago, though
    made neither first nor last), the rest another integration's. Returns the bot's, in persona order."""
    import db
    from db.models import PersonaWebhook

    fake = e2e.fake
    hooks = [fake.add_webhook(channel, f"P{i} · AI") for i in range(own)]
    for i in range(MAX_WEBHOOKS - own):
        fake.add_webhook(channel, f"Integration {i}")
    now = datetime.now(UTC)
    engine = db.make_engine(e2e.database_url)
    try:
        with db.session_scope(engine) as session:
            for i, hook in enumerate(hooks):
                ago = timedelta(days=30) if i == oldest else timedelta(minutes=i + 1)
                session.add(PersonaWebhook(guild_id=fake.guild_id, channel_id=channel, persona_slug=f"p{i}",
                                           webhook_id=hook["id"], token=hook["token"], avatar="x",
                                           last_used_at=now - ago))
    finally:
        engine.dispose()
    assert len(fake.webhooks_in(channel)) == MAX_WEBHOOKS
    return hooks


def _kept_slugs(database_url: str, channel: int) -> set[str]:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            return set(conn.execute(sa.text("SELECT persona_slug FROM persona_webhooks WHERE channel_id = :c"),
                                    {"c": channel}).scalars())
    finally:
        engine.dispose()


def _evicted_only(e2e, channel: int, hooks: list[dict], oldest: int, posted: dict) -> None:
    """The least recently used of the bot's webhooks is gone (in Discord and in SQL), every other stays, and
    the post came through the new persona's webhook."""
    fake = e2e.fake
    left = {w["id"] for w in fake.webhooks_in(channel)}
    assert hooks[oldest]["id"] not in left and all(h["id"] in left for i, h in enumerate(hooks) if i != oldest)
    assert len(left) == MAX_WEBHOOKS and int(posted["webhook_id"]) in left
    assert [r.status for r in fake.sent("DELETE", f"/webhooks/{hooks[oldest]['id']}")] == [204]
    kept = {f"p{i}" for i in range(len(hooks)) if i != oldest} | {"alice"}
    # the post is seen in Discord a moment before the poster's transaction commits its webhook rows
    wait_until(lambda: _kept_slugs(e2e.database_url, channel) == kept, 10, "the webhook rows to be committed")
    _through_webhook(fake, posted)


def test_a_new_persona_in_a_full_channel_evicts_the_bots_least_recently_used_webhook(e2e):
    fake = e2e.fake
    channel = _persona_channel(fake, "full-of-webhooks")
    hooks = _fill(e2e, channel, own=9, oldest=3)  # under the bot's own cap: Discord's 30007 says it is full
    fake.slash("generate", [opt("persona", "alice"), opt("prompt", "Alice was"), opt("length", 30)],
               user=fake.alice, channel_id=channel)
    [msg] = _posted(fake, channel)
    assert [r.status for r in fake.sent("POST", f"/channels/{channel}/webhooks")] == [400, 200]
    _evicted_only(e2e, channel, hooks, 3, msg)


def test_a_scheduled_post_in_a_full_channel_evicts_the_least_recently_used_webhook(e2e):
    fake = e2e.fake
    channel = _persona_channel(fake, "full-for-schedules")
    hooks = _fill(e2e, channel, own=10, oldest=6)  # at the bot's own cap: room is made before creating
    _schedule(fake, channel, "The Gryphon said")
    e2e.celery().send_task("improbable.dispatch_schedules",
                           args=[(datetime.now(UTC) + timedelta(minutes=2)).isoformat()])
    [post] = _posted(fake, channel, contains="The Gryphon said", buttons=False)
    assert [r.status for r in fake.sent("POST", f"/channels/{channel}/webhooks")] == [200]
    _evicted_only(e2e, channel, hooks, 6, post)
