"""End to end: posting as the persona through a channel webhook (bot/webhooks.py) where the bot has Manage
Webhooks, with the persona's name labelled " · AI" and its avatar uploaded to the webhook; as the bot, with
the persona named, where it has not. The result buttons work on both; ambient replies and scheduled posts
go out as the persona too. Each test uses channels of its own (the shared channels keep the bot without
Manage Webhooks, as every other test expects)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from .fake_discord import EPHEMERAL, custom_ids, opt
from .test_e2e import TIMEOUT, ephemeral_reply, final_text

pytestmark = pytest.mark.slow
LABELLED = "Alice · AI"  # the persona's display name with the generated label


def _persona_channel(fake, name: str, *, webhooks: bool = True) -> int:
    channel = fake.add_channel(fake.guild_id, name)
    if webhooks:
        fake.grant_webhooks(channel)
    return channel


def _posted(fake, channel: int, *, contains: str = "", buttons: bool = True, count: int = 1) -> list[dict]:
    """The channel's webhook messages once `count` of them show a finished text (buttons) or `contains`."""
    def done():
        shown = [m for m in fake.webhook_messages(channel)
                 if (custom_ids(m) or not buttons) and contains in m["content"]]
        return shown if len(shown) >= count else None

    return fake.wait_for(done, TIMEOUT, f"{count} message(s) posted as the persona in {channel}")


def _through_webhook(fake, message: dict) -> None:
    """Posted by the channel's webhook for the persona, with its name, label and uploaded avatar."""
    [hook] = [w for w in fake.webhooks_in(int(message["channel_id"])) if str(w["id"]) == message["webhook_id"]]
    assert message["author"]["username"] == LABELLED and hook["name"] == LABELLED
    assert hook["avatar"].startswith(b"\x89PNG") and message["author"]["avatar"] == hook["avatar_hash"]
    assert message["avatar_url"] is None  # no public URL needed: the avatar is the webhook's own
    assert message["application_id"] == str(fake.app_id)  # application-owned: its buttons reach the bot


def test_generate_posts_as_the_persona_and_every_button_works(e2e):
    fake = e2e.fake
    channel = _persona_channel(fake, "persona-results")
    ix = fake.slash("generate", [opt("persona", "alice"), opt("prompt", "Alice was"), opt("length", 60),
                                 opt("seed", 3), opt("show", "probabilities")], user=fake.alice, channel_id=channel)
    [msg] = _posted(fake, channel)
    _through_webhook(fake, msg)
    assert msg["content"].startswith("**Alice**") and "**Alice was**" in msg["content"] and "seed 3" in msg["content"]
    assert fake.wait_for(lambda: ix.state == "deleted", TIMEOUT, "the bot's 'thinking…' removed")
    hook = fake.webhooks_in(channel)[0]
    # the probability picture is added by an edit through the webhook, never with the bot's token
    fake.wait_for(lambda: (m := fake.message(int(msg["id"]))) and m["attachments"], TIMEOUT, "the picture")
    edits = [r.path for r in fake.sent("PATCH", f"/messages/{msg['id']}")]
    assert edits and all(p.startswith(f"/api/v10/webhooks/{hook['id']}/{hook['token']}/") for p in edits)

    gid = custom_ids(msg)[0].split(":")[2]
    info = ephemeral_reply(fake, fake.click(msg, f"improbable:info:{gid}", user=fake.bob))
    assert "Seed" in info["content"] and info["flags"] & EPHEMERAL

    regen = fake.click(msg, custom_ids(msg)[0], user=fake.alice)
    edited = fake.wait_for(lambda: (m := fake.message(int(msg["id"]))) and custom_ids(m)
                           and custom_ids(m)[0] != custom_ids(msg)[0] and m, TIMEOUT, "the regenerated text")
    assert regen.acks[0][0] == 6 and edited["webhook_id"] == msg["webhook_id"]
    assert not re.search(r"\bseed 3\b", edited["content"])  # a new seed (whole numbers: 383… is not 3)

    cont = fake.click(edited, custom_ids(edited)[1], user=fake.bob)  # a new message, as the persona too
    new = [m for m in _posted(fake, channel, count=2) if m["id"] != msg["id"]][0]
    _through_webhook(fake, new)
    assert cont.acks[0][0] == 5 and "**Alice**" in new["content"]

    report = ephemeral_reply(fake, fake.click(new, custom_ids(new)[5], user=fake.carol))
    assert "report #" in report["content"]

    delete = fake.click(edited, custom_ids(edited)[4], user=fake.alice)
    fake.wait_for(lambda: fake.message(int(msg["id"])) is None, TIMEOUT, "the deleted text gone")
    assert delete.acks[0][0] == 6
    assert not [r for r in fake.sent("DELETE", f"/channels/{channel}/messages/") if r.status != 204]
    assert len(fake.webhooks_in(channel)) == 1  # one webhook per channel and persona, reused


def test_without_manage_webhooks_it_posts_as_the_bot_and_buttons_work(e2e):
    fake = e2e.fake
    channel = _persona_channel(fake, "no-webhooks", webhooks=False)
    ix = fake.slash("generate", [opt("persona", "alice"), opt("prompt", "The Queen"), opt("length", 40),
                                 opt("seed", 5)], user=fake.bob, channel_id=channel)
    msg = final_text(fake, ix)
    assert int(msg["author"]["id"]) == fake.app_id and msg["content"].startswith("**Alice**")  # named, as the bot
    assert fake.webhooks_in(channel) == [] and fake.webhook_messages(channel) == []
    gid = custom_ids(msg)[0].split(":")[2]
    assert "Seed" in ephemeral_reply(fake, fake.click(msg, f"improbable:info:{gid}", user=fake.carol))["content"]
    fake.click(msg, custom_ids(msg)[0], user=fake.bob)
    edited = fake.wait_for(lambda: (m := fake.message(int(msg["id"]))) and custom_ids(m)
                           and custom_ids(m)[0] != custom_ids(msg)[0] and m, TIMEOUT, "the regenerated text")
    fake.click(edited, custom_ids(edited)[4], user=fake.bob)
    fake.wait_for(lambda: fake.message(int(msg["id"])) is None, TIMEOUT, "the deleted text gone")


def test_an_ambient_reply_is_posted_as_the_persona(e2e):
    fake = e2e.fake
    channel = _persona_channel(fake, "persona-ambient")
    on = fake.slash("ambient on", [opt("persona", "alice"), opt("chance", 1.0), opt("cooldown", "1h")],
                    user=fake.owner, channel_id=channel)
    assert "Ambient replies on" in ephemeral_reply(fake, on)["content"]
    try:
        fake.say("The Queen shouted at @everyone", user=fake.carol, channel_id=channel)
        [reply] = _posted(fake, channel)
        _through_webhook(fake, reply)
        assert "The Queen shouted at" in reply["content"] and "@everyone" not in reply["content"]
    finally:
        off = fake.slash("ambient off", [], user=fake.owner, channel_id=channel)
        assert "off" in ephemeral_reply(fake, off)["content"]


def _schedule(fake, channel: int, prompt: str) -> None:
    ix = fake.slash("schedule add", [opt("persona", "alice"), opt("channel", str(channel), 7), opt("every", "1m"),
                                     opt("prompt", prompt)], user=fake.owner,
                    resolved={"channels": {str(channel): {"id": str(channel), "name": "sched", "type": 0,
                                                          "permissions": "0"}}})
    assert "Schedule" in fake.wait_for(lambda: (m := fake.message(ix.original_id)) and m["content"], TIMEOUT)


def test_a_scheduled_post_goes_out_as_the_persona_or_as_the_bot_on_403(e2e):
    fake = e2e.fake
    with_hooks = _persona_channel(fake, "persona-schedule")
    without = _persona_channel(fake, "bot-schedule", webhooks=False)
    _schedule(fake, with_hooks, "The Hatter said")
    _schedule(fake, without, "The Dormouse said")
    e2e.celery().send_task("improbable.dispatch_schedules",
                           args=[(datetime.now(UTC) + timedelta(minutes=2)).isoformat()])
    [post] = _posted(fake, with_hooks, contains="The Hatter said", buttons=False)
    _through_webhook(fake, post)
    assert post["content"].startswith("**Alice**\n")
    [execute] = [r for r in fake.sent("POST", f"/webhooks/{post['webhook_id']}/") if r.status == 200]
    assert execute.json["allowed_mentions"] == {"parse": []} and execute.query.get("wait") == "true"

    fallback = fake.wait_for(lambda: [r for r in fake.sent("POST", f"/channels/{without}/messages")
                                      if "The Dormouse said" in (r.json or {}).get("content", "")],
                             TIMEOUT, "the scheduled post as the bot")
    assert fallback[0].json["content"].startswith("**Alice**\n") and fallback[0].status == 200
    assert [r.status for r in fake.sent("POST", f"/channels/{without}/webhooks")] == [403]


def test_a_reply_to_a_persona_webhook_message_continues_it(e2e):
    """A member's reply to a text a persona posted through the bot's webhook is a reply to the bot."""
    fake = e2e.fake
    channel = _persona_channel(fake, "persona-replies")
    fake.slash("generate", [opt("persona", "alice"), opt("prompt", "Alice was"), opt("length", 40)],
               user=fake.alice, channel_id=channel)
    [msg] = _posted(fake, channel)
    before = {m["id"] for m in fake.channel_messages(channel)}
    reply = fake.reply(msg, "and then?", user=fake.carol)
    answer = fake.wait_for(lambda: [m for m in fake.channel_messages(channel)
                                    if m["id"] not in before and m["id"] != reply["id"] and custom_ids(m)],
                           TIMEOUT, "the continuation of the persona's text")
    assert answer


def test_a_manager_sets_the_avatar_a_persona_posts_with(e2e):
    import io

    from PIL import Image

    fake = e2e.fake
    picture = io.BytesIO()
    Image.new("RGB", (300, 200), (255, 0, 0)).save(picture, format="PNG")
    att_id, att = fake.attachment("red.png", picture.getvalue())
    refused = fake.slash("persona avatar", [opt("persona", "alice"), opt("image", att_id, 11)], user=fake.carol,
                         resolved={"attachments": {att_id: att}})
    assert "Manage Server" in ephemeral_reply(fake, refused)["content"]  # members may not
    ix = fake.slash("persona avatar", [opt("persona", "alice"), opt("image", att_id, 11)], user=fake.owner,
                    resolved={"attachments": {att_id: att}})
    assert "now posts with that picture" in ephemeral_reply(fake, ix)["content"]
    channel = _persona_channel(fake, "persona-avatar")
    fake.slash("generate", [opt("persona", "alice"), opt("prompt", "Alice"), opt("length", 20)], user=fake.alice,
               channel_id=channel)
    [msg] = _posted(fake, channel)
    [hook] = fake.webhooks_in(channel)
    with Image.open(io.BytesIO(hook["avatar"])) as shown:
        assert shown.size == (128, 128) and shown.convert("RGB").getpixel((5, 5)) == (255, 0, 0)
    reset = fake.slash("persona avatar", [opt("persona", "alice")], user=fake.owner)
    assert "drawn from its name" in ephemeral_reply(fake, reset)["content"]


def test_where_discord_refuses_a_webhook_it_asks_once_until_a_manager_shows_it_is_back(e2e):
    """The bot's cache says it has Manage Webhooks, Discord refuses (a cache out of date, or a server that
    requires 2FA): the first turn of a dialogue asks and falls back to the bot; the other turns, of either
    persona, do not ask again (db.webhooks.REFUSED_SECONDS). A manager's command where Discord says the bot
    has the permission asks again, and posts as the persona."""
    fake = e2e.fake
    channel = _persona_channel(fake, "refused-webhooks")
    with fake.cond:
        fake.channel(channel).overwrites = []  # Discord refuses; the bot is not told
    turns = 4
    fake.slash("dialogue", [opt("persona_a", "alice"), opt("persona_b", "trump"), opt("topic", "The tarts"),
                            opt("turns", turns)], user=fake.bob, channel_id=channel)
    fake.wait_for(lambda: len([m for m in fake.channel_messages(channel) if custom_ids(m)]) >= turns,
                  4 * TIMEOUT, f"{turns} turns posted as the bot")
    assert fake.webhook_messages(channel) == []
    assert [r.status for r in fake.sent("POST", f"/channels/{channel}/webhooks")] == [403]  # 1, not 4

    fake.grant_webhooks(channel)
    fake.slash("generate", [opt("persona", "alice"), opt("prompt", "Alice was"), opt("length", 20)],
               user=fake.owner, channel_id=channel)
    [msg] = _posted(fake, channel)
    _through_webhook(fake, msg)
    assert [r.status for r in fake.sent("POST", f"/channels/{channel}/webhooks")] == [403, 200]
