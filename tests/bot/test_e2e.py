"""End to end: the real bot process, a real worker and Redis, against the fake Discord."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

import pytest

from tests.environment import within

from .conftest import clean_env, start_bot, start_redis
from .fake_discord import EPHEMERAL, FakeDiscord, custom_ids, opt

pytestmark = pytest.mark.slow

TIMEOUT = 30


def final_text(fake: FakeDiscord, ix, *, contains: str = "", timeout: float = TIMEOUT) -> dict:
    """The interaction's answer once it carries result buttons (or `contains`)."""
    def done():
        msg = fake.message(ix.original_id)
        if msg is None or ix.state == "loading":
            return None
        if contains and contains in msg["content"]:
            return msg
        return msg if not contains and custom_ids(msg) else None

    return fake.wait_for(done, timeout, f"the answer to interaction {ix.id}")


def ephemeral_reply(fake: FakeDiscord, ix, timeout: float = TIMEOUT) -> dict:
    """The ephemeral message the user saw (a refusal as first response, or a follow-up)."""
    def find():
        ids = ([ix.original_id] if ix.acks and ix.acks[0][0] == 4 else []) + ix.followups
        if ix.ephemeral and ix.state == "sent":
            ids.append(ix.original_id)
        for mid in ids:
            msg = fake.message(mid)
            if msg is not None and msg["flags"] & EPHEMERAL and msg["content"]:
                return msg
        return None

    return fake.wait_for(find, timeout, f"an ephemeral reply to interaction {ix.id}")


def test_generate_posts_text_with_buttons(e2e):
    fake = e2e.fake
    ix = fake.slash("generate", [opt("persona", "alice"), opt("prompt", "Alice was"), opt("length", 80),
                                 opt("seed", 7)], user=fake.alice)
    msg = final_text(fake, ix)
    assert ix.acks[0][0] == 5 and ix.acks[0][1] - ix.dispatched < 0.5  # deferred at once
    assert "**Alice was**" in msg["content"] and "seed 7" in msg["content"]
    gid = custom_ids(msg)[0].split(":")[2]
    assert custom_ids(msg) == [f"improbable:regen:{gid}:{fake.alice.id}", f"improbable:cont:{gid}",
                               f"improbable:more:{gid}:{fake.alice.id}", f"improbable:info:{gid}",
                               f"improbable:del:{gid}", f"improbable:report:{gid}"]
    assert not msg["flags"] & EPHEMERAL


def test_long_text_streams_and_is_attached(e2e):
    fake = e2e.fake
    ix = fake.slash("generate", [opt("persona", "alice"), opt("prompt", "Alice"), opt("length", 2000)],
                    user=fake.owner)
    msg = final_text(fake, ix)
    (name, data), = fake.files[int(msg["id"])]
    assert name == "generated.txt" and data.decode().startswith("Alice") and len(data.decode()) > 2000
    assert len(msg["content"]) <= 2000 and "attached" in msg["content"]
    edits = fake.sent("PATCH", f"/webhooks/{fake.app_id}/{ix.token}/messages/@original")
    partial = [r for r in edits if r.json.get("content", "").endswith("▌")]
    took = edits[-1].at - ix.dispatched
    assert partial or took < within(1.5), (took, [r.json.get("content", "")[-20:] for r in edits])


def test_persona_autocomplete(e2e):
    fake = e2e.fake
    ix = fake.slash("generate", [{"name": "persona", "type": 3, "value": "al", "focused": True}], user=fake.alice,
                    autocomplete=True)
    fake.wait_for(lambda: ix.autocomplete is not None, TIMEOUT, "autocomplete choices")
    assert {"name": "alice", "value": "alice"} in ix.autocomplete and ix.acks[0][0] == 8


def test_everyone_in_prompt_cannot_ping(e2e):
    fake = e2e.fake
    ix = fake.slash("generate", [opt("persona", "alice"), opt("prompt", f"@everyone <@&{fake.trainer_role}> hi"),
                                 opt("length", 20)], user=fake.carol)
    msg = final_text(fake, ix)
    edits = [r for r in fake.sent("PATCH", f"/webhooks/{fake.app_id}/{ix.token}/messages/@original")]
    assert edits and all(r.json["allowed_mentions"]["parse"] == [] for r in edits)
    assert "@everyone" not in msg["content"].replace("@\u200beveryone", "")
    assert f"<@&{fake.trainer_role}>" not in msg["content"]


def test_buttons_regenerate_continue_and_owner_only(e2e):
    fake = e2e.fake
    ix = fake.slash("generate", [opt("persona", "alice"), opt("prompt", "The Queen"), opt("length", 40),
                                 opt("seed", 1)], user=fake.bob)
    msg = final_text(fake, ix)
    regen = custom_ids(msg)[0]

    other = fake.click(msg, regen, user=fake.carol)  # not the requester
    refusal = ephemeral_reply(fake, other)
    assert "Only" in refusal["content"] and other.acks[0][0] == 4

    click = fake.click(msg, regen, user=fake.bob)
    edited = fake.wait_for(lambda: (m := fake.message(int(msg["id"]))) and custom_ids(m)
                           and custom_ids(m)[0] != regen and m, TIMEOUT, "the regenerated text")
    assert re.search(r"seed \d+", edited["content"]) and not re.search(r"seed 1\b", edited["content"])  # a new seed
    assert click.acks[0][0] == 6  # deferred update: the same message is edited
    assert "**The Queen**" in edited["content"]

    more_click = fake.click(edited, custom_ids(edited)[2], user=fake.bob)
    improbable = fake.wait_for(lambda: (m := fake.message(int(msg["id"]))) and "improbability 0.1" in m["content"]
                               and m, TIMEOUT, "the more improbable text")
    assert more_click.acks[0][0] == 6 and improbable

    cont_click = fake.click(improbable, custom_ids(improbable)[1], user=fake.carol)  # anyone: a new message
    new = final_text(fake, cont_click)
    assert cont_click.acks[0][0] == 5 and int(new["id"]) != int(msg["id"])


def test_buttons_survive_a_restart(e2e):
    fake = e2e.fake
    ix = fake.slash("generate", [opt("persona", "alice"), opt("prompt", "Before"), opt("length", 30)],
                    user=fake.alice)
    msg = final_text(fake, ix)
    e2e.bot.stop()
    with fake.cond:
        fake.identify = None  # (Discord keeps the synced commands across the bot's restarts)
    e2e.bot = start_bot(fake, e2e.env, e2e.logs, "bot-restarted")
    click = fake.click(msg, custom_ids(msg)[0], user=fake.alice)
    edited = fake.wait_for(lambda: (m := fake.message(int(msg["id"]))) and custom_ids(m)
                           and custom_ids(m)[0] != custom_ids(msg)[0] and m, TIMEOUT, "a regenerate after restart")
    assert click.acks[0][0] == 6 and "**Before**" in edited["content"]


def test_mention_and_reply_chat(e2e):
    fake = e2e.fake
    said = fake.say(f"<@{fake.app_id}> alice: Down the rabbit hole", user=fake.carol, mention_bot=True)

    def reply_to(message_id):
        def find():
            for m in fake.channel_messages(fake.channel_id):
                ref = m.get("message_reference") or {}
                if ref.get("message_id") == str(message_id) and custom_ids(m):
                    return m
            return None
        return find

    reply = fake.wait_for(reply_to(said["id"]), TIMEOUT, "the reply to a mention")
    assert "**Down the rabbit hole**" in reply["content"] and "**Alice**" in reply["content"]
    assert fake.sent("POST", f"/channels/{fake.channel_id}/typing")

    again = fake.say("and then", user=fake.carol, reply_to=reply)  # a reply continues that text
    second = fake.wait_for(reply_to(again["id"]), TIMEOUT, "the continuation of a reply")
    assert "…" in second["content"] or "rabbit" in second["content"]


def test_unknown_persona_suggests_and_missing_model_explains(e2e):
    fake = e2e.fake
    ix = fake.slash("generate", [opt("persona", "alcie"), opt("prompt", "x")], user=fake.carol)
    msg = ephemeral_reply(fake, ix)
    assert "`alice`" in msg["content"] and ix.state == "deleted"  # the public "thinking…" is gone
    ix = fake.slash("generate", [opt("persona", "harry-potter")], user=fake.carol)
    msg = ephemeral_reply(fake, ix)
    assert "/persona retrain" in msg["content"]


def test_refused_without_permission(e2e):
    fake = e2e.fake
    att_id, att = fake.attachment("mine.txt", b"Some text. " * 100)
    ix = fake.slash("persona create", [opt("name", "nope"), opt("file", att_id, 11)], user=fake.bob,
                    resolved={"attachments": {att_id: att}})
    msg = ephemeral_reply(fake, ix)
    assert ix.acks[0][0] == 4 and "Manage Server" in msg["content"]
    assert not fake.sent("GET", f"/cdn/{att_id}")  # nothing was downloaded
    ix = fake.slash("schedule add", [opt("persona", "alice"), opt("channel", str(fake.other_channel_id), 7),
                                     opt("every", "1h")], user=fake.bob,
                    resolved={"channels": {str(fake.other_channel_id): {
                        "id": str(fake.other_channel_id), "name": "posts", "type": 0, "permissions": "0"}}})
    assert "Manage Server" in ephemeral_reply(fake, ix)["content"]
    att_id, att = fake.attachment("huge.txt", b"tiny")
    ix = fake.slash("persona create", [opt("name", "huge"), opt("file", att_id, 11)], user=fake.owner,
                    resolved={"attachments": {att_id: {**att, "size": 30_000_000}}})
    assert "limit here is 25.0 MB" in ephemeral_reply(fake, ix)["content"] and ix.acks[0][0] == 4
    ix = fake.slash("settings set", [opt("cooldown", 0)], user=fake.bob)
    assert "Manage Server" in ephemeral_reply(fake, ix)["content"]
    ix = fake.slash("settings show", [], user=fake.owner)
    shown = ephemeral_reply(fake, ix)
    assert f"<@&{fake.trainer_role}>" in shown["content"] and "Jobs a member may have waiting: 3" in shown["content"]


def test_persona_create_trains_with_live_progress(e2e):
    fake = e2e.fake
    text = (e2e.env["IMPROBABLE_CORPUS_PATH"] + "/alice/alice.txt")
    data = open(text, encoding="utf-8").read()[6000:14000].encode()
    att_id, att = fake.attachment("wonderland.txt", data)
    ix = fake.slash("persona create", [opt("name", "wonder"), opt("file", att_id, 11),
                                       opt("family", "char-rnn"), opt("minutes", 0.05)],
                    user=fake.owner, resolved={"attachments": {att_id: att}})
    done = fake.wait_for(lambda: any(fake.files.get(mid) for mid in ix.followups) and ix, 90, "the trained persona")
    assert done.acks[0][0] == 5
    progress = [r.json["content"] for r in fake.sent("PATCH", f"/webhooks/{fake.app_id}/{ix.token}/messages/@original")]
    assert any("Training `" in c and "`█" in c or "░" in c for c in progress), progress
    assert any("step" in c and "loss" in c for c in progress), progress
    assert "done" in progress[-1]
    status = fake.slash("train status", [], user=fake.carol)  # after the run: nothing left
    assert "Nothing is training" in fake.wait_for(
        lambda: (m := fake.message(status.original_id)) and status.state == "sent" and m, TIMEOUT)["content"]
    final = fake.message(ix.followups[-1])
    (name, png), = fake.files[int(final["id"])]
    assert name == "loss.png" and png.startswith(b"\x89PNG")
    assert "is ready" in final["content"] and "A sample" in final["content"]

    info = fake.slash("persona info", [opt("persona", "wonder")], user=fake.carol)
    shown = fake.wait_for(lambda: ix.state and (m := fake.message(info.original_id)) and m["content"]
                          and info.state == "sent" and m, TIMEOUT, "persona info")
    assert "wonderland.txt" in shown["content"] and "validation loss" in shown["content"]
    assert [n for n, _ in fake.files.get(int(shown["id"]), [])] == ["loss.png"]


def test_scheduled_post(e2e):
    fake = e2e.fake
    channel = str(fake.other_channel_id)
    ix = fake.slash("schedule add", [opt("persona", "alice"), opt("channel", channel, 7), opt("every", "1m"),
                                     opt("prompt", "The Hatter")], user=fake.owner,
                    resolved={"channels": {channel: {"id": channel, "name": "posts", "type": 0, "permissions": "0"}}})
    confirmation = fake.wait_for(lambda: (m := fake.message(ix.original_id)) and m["content"] and m, TIMEOUT)
    assert "Schedule" in confirmation["content"] and ix.ephemeral
    later = (datetime.now(UTC) + timedelta(minutes=2)).isoformat()
    e2e.celery().send_task("improbable.dispatch_schedules", args=[later])
    post = fake.wait_for(lambda: [r for r in fake.sent("POST", f"/channels/{channel}/messages")
                                  if "The Hatter" in (r.json or {}).get("content", "")], TIMEOUT, "the scheduled post")
    assert post[0].json["allowed_mentions"] == {"parse": []}


def test_broker_down_is_reported_within_3_seconds(tmp_path, stack):
    """Its own fake Discord, Redis and bot: Redis is stopped, then /generate must fail fast and privately."""
    fake = FakeDiscord().start()
    redis_proc, url = start_redis(tmp_path, "redis-doomed")
    bot = None
    try:
        env = {**stack.env, "IMPROBABLE_BROKER_URL": url}
        bot = start_bot(fake, clean_env(**{k: v for k, v in env.items() if k.startswith(("IMPROBABLE_", "DISCORD_"))}),
                        tmp_path, "bot-broker-down")
        redis_proc.stop()
        ix = fake.slash("generate", [opt("persona", "alice"), opt("prompt", "hello")], user=fake.alice)
        msg = ephemeral_reply(fake, ix, timeout=5)
        took = time.monotonic() - ix.dispatched
        assert "unavailable" in msg["content"].lower() and took < within(3.0), (took, msg["content"])
        assert ix.acks[0][0] == 5 and ix.state == "deleted"
        assert not fake.errors
    finally:
        if bot is not None:
            bot.stop()
        redis_proc.stop()
        fake.stop()
