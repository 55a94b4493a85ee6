"""Conversation windows and dialogues through the real bot and the fake Discord (one bot for the module, with
the ambient ceilings' least cooldown at 0 so a window can answer every message).

- A member's reply to an ambient reply opens the channel's window: inside it the persona answers messages with
  the window's chance and cooldown; never a bot's, a webhook's or its own message; once the window has closed
  only the channel's (tiny) chance applies.
- `/dialogue` of 6 turns posts 6 messages alternating the two personas, each turn prompted with the previous
  turn's text (the generation rows' prompts), admitted once by the cost of all 6 turns.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

import db
from core.cost import job_cost
from db.models import Checkpoint, Generation, Persona, QuotaUsage
from service.ambient import window_key
from service.quotas import Quotas

from .conftest import start_bot
from .fake_discord import EPHEMERAL, SEND_MESSAGES, User, opt
from .test_e2e import TIMEOUT, ephemeral_reply

pytestmark = pytest.mark.slow

WINDOW_SECONDS = 3


@pytest.fixture(scope="module")
def talk(stack):
    """The stack with a bot whose ambient ceilings allow no cooldown and many replies an hour."""
    fake = stack.fake
    stack.bot.stop()
    with fake.cond:
        fake.identify = None
    env = {**stack.env, "IMPROBABLE_CEILING_AMBIENT_COOLDOWN_SECONDS": "0",
           "IMPROBABLE_CEILING_AMBIENT_REPLIES_PER_HOUR": "1000"}
    stack.bot = start_bot(fake, env, stack.logs, "bot-conversation")
    yield stack
    stack.bot.stop()
    with fake.cond:
        fake.identify = None
    stack.bot = start_bot(fake, stack.env, stack.logs, "bot-after-conversation")


@pytest.fixture
def e2e_talk(talk, e2e):
    return e2e


def _posts(fake, channel_id: int, planted: set[int]) -> list[dict]:
    """What the bot or a persona posted in the channel (not ephemeral replies, not the test's own plants)."""
    with fake.cond:
        found = [m for m in fake.messages.values() if int(m["channel_id"]) == channel_id
                 and not m["flags"] & EPHEMERAL and int(m["id"]) not in planted
                 and (int(m["author"]["id"]) == fake.app_id or m.get("webhook_id"))]
    return sorted(found, key=lambda m: int(m["id"]))


def _finished(posts: list[dict], n: int) -> list[dict] | None:
    """The first `n` posts once each shows its final text (result buttons under it)."""
    done = [m for m in posts if m.get("components") and not m["content"].endswith("▌")]
    return done[:n] if len(done) >= n else None


def _plant(fake, channel_id: int, content: str, *, author: User, bot: bool = False, webhook: bool = False,
           reply_to: dict | None = None) -> dict:
    """A message of another bot, a webhook or the bot itself (MESSAGE_CREATE)."""
    msg = fake._message(channel_id, {"content": content}, author=author)
    if bot:
        msg["author"]["bot"] = True
    if webhook:
        msg["webhook_id"] = str(fake.snowflake())
    if reply_to is not None:
        msg["type"] = 19
        msg["message_reference"] = fake._reference(reply_to)
        msg["referenced_message"] = reply_to
    return fake._post(msg)


def _window_left(e2e, channel_id: int) -> float:
    engine = db.make_engine(e2e.database_url)
    try:
        return Quotas(engine).retry_after(window_key(channel_id))
    finally:
        engine.dispose()


def _ambient_on(fake, channel: int, chance: float) -> str:
    on = fake.slash("ambient on", [opt("persona", "alice"), opt("chance", chance), opt("cooldown", "0"),
                                   opt("window", f"{WINDOW_SECONDS}s"), opt("window_chance", 1.0),
                                   opt("window_cooldown", "0")], user=fake.owner, channel_id=channel)
    return ephemeral_reply(fake, on)["content"]


def test_a_conversation_window_answers_members_until_it_closes_and_never_bots_or_webhooks(e2e_talk):
    e2e, fake = e2e_talk, e2e_talk.fake
    channel = fake.add_channel(fake.guild_id, "conversation")
    planted: set[int] = set()
    shown = _ambient_on(fake, channel, 1.0)
    assert f"keeps talking for {WINDOW_SECONDS} s" in shown and "at most once every 0 s" in shown
    fake.say("The Queen was in a furious passion", user=fake.carol, channel_id=channel)
    first = fake.wait_for(lambda: _finished(_posts(fake, channel, planted), 1), TIMEOUT, "an ambient reply")[0]
    _ambient_on(fake, channel, 0.0001)  # from now on only the window answers
    try:
        assert _window_left(e2e, channel) == 0
        # a bot's and a webhook's reply to the persona open nothing and are not answered
        for kind in ({"author": User(fake.snowflake(), "otherbot"), "bot": True},
                     {"author": User(fake.snowflake(), "hook"), "webhook": True}):
            planted.add(int(_plant(fake, channel, "What a reply", reply_to=first, **kind)["id"]))
        fake.reply(first, "And what did the King say?", user=fake.carol)
        fake.wait_for(lambda: _window_left(e2e, channel) > 0, TIMEOUT, "the window to open")
        fake.say("Tell me more about the Duchess", user=fake.bob, channel_id=channel)  # inside the window
        # inside the window: another bot, a webhook and the bot itself are never answered
        for content, kind in (("beep", {"author": User(fake.snowflake(), "otherbot"), "bot": True}),
                              ("hooked", {"author": User(fake.snowflake(), "hook"), "webhook": True}),
                              ("my own words", {"author": fake.bot_user})):
            planted.add(int(_plant(fake, channel, content, **kind)["id"]))
        answered = fake.wait_for(lambda: _finished(_posts(fake, channel, planted), 3), TIMEOUT, "two window answers")
        fake.wait_for(lambda: _window_left(e2e, channel) == 0, WINDOW_SECONDS + TIMEOUT, "the window to close")
        fake.say("Is anybody still listening?", user=fake.carol, channel_id=channel)  # after: chance 0.0001
        # a mention is always answered; by the time it is, the message before it was long decided
        fake.say(f"<@{fake.app_id}> alice: Off with their heads", user=fake.carol, channel_id=channel,
                 mention_bot=True)
        fake.wait_for(lambda: _finished(_posts(fake, channel, planted), 4), TIMEOUT, "the mention's answer")
        posts = _posts(fake, channel, planted)
        assert len(posts) == 4, [p["content"][:60] for p in posts]
        refs = [int(p["message_reference"]["message_id"]) for p in posts if p.get("message_reference")]
        assert not set(refs) & planted  # no answer to a bot, a webhook or itself
        assert answered[0]["id"] == first["id"]
    finally:
        off = fake.slash("ambient off", [], user=fake.owner, channel_id=channel)
        assert "off" in ephemeral_reply(fake, off)["content"]


def test_a_six_turn_dialogue_alternates_the_personas_and_counts_every_turn(e2e_talk):
    e2e, fake = e2e_talk, e2e_talk.fake
    channel = fake.add_channel(fake.guild_id, "dialogue")
    key = f"units:member:{fake.guild_id}:{fake.bob.id}"
    engine = db.make_engine(e2e.database_url)
    try:
        with db.session_scope(engine) as session:
            last_usage = session.scalar(select(QuotaUsage.id).order_by(QuotaUsage.id.desc()).limit(1)) or 0
        topic = "Why is a raven like a writing desk?"
        ix = fake.slash("dialogue", [opt("persona_a", "alice"), opt("persona_b", "trump"), opt("topic", topic),
                                     opt("turns", 6)], user=fake.bob, channel_id=channel)
        opening = fake.wait_for(lambda: ix.state == "sent" and fake.message(ix.original_id), TIMEOUT, "the opening")
        assert "6 turns" in opening["content"] and not opening["flags"] & EPHEMERAL

        def recorded():
            with db.session_scope(engine) as session:
                rows = session.scalars(select(Generation).where(Generation.channel_id == channel)
                                       .order_by(Generation.id)).all()
                if len(rows) < 6 or any(r.message_id is None for r in rows):
                    return None
                return [(r.prompt, r.output, r.message_id, r.persona_id, r.params, r.checkpoint_id) for r in rows]

        rows = fake.wait_for(recorded, 4 * TIMEOUT, "6 recorded turns")
        posts = fake.wait_for(lambda: _finished(_posts(fake, channel, {ix.original_id}), 6), TIMEOUT, "6 turns")
        assert len(_posts(fake, channel, {ix.original_id})) == 6 and len(rows) == 6
        with db.session_scope(engine) as session:
            names = {p.id: (p.slug, p.display_name) for p in session.scalars(select(Persona))}
            sizes = {c.id: c.size_bytes for c in session.scalars(select(Checkpoint))}
            usage = session.scalars(select(QuotaUsage).where(QuotaUsage.key == key,
                                                              QuotaUsage.id > last_usage)).all()
        speakers = [names[r[3]][0] for r in rows]
        assert speakers == ["alice", "trump"] * 3
        assert rows[0][0] == topic
        for before, turn in zip(rows, rows[1:], strict=False):
            assert turn[0] == (before[1] if before[1].strip() else topic)  # the other's last text
        for post, row in zip(posts, rows, strict=True):
            assert int(post["id"]) == row[2]
            assert post["content"].startswith(f"**{names[row[3]][1]}")
        # admitted once, by the cost of all six turns
        expected = round(sum(job_cost(r[4], sizes[r[5]], 1, "char-rnn") for r in rows), 2)
        assert [u.amount for u in usage] == [pytest.approx(expected)]
        assert expected == pytest.approx(6 * job_cost(rows[0][4], sizes[rows[0][5]]))
    finally:
        engine.dispose()


def test_a_dialogue_is_refused_where_the_member_may_not_post_and_with_one_persona_twice(e2e_talk):
    fake = e2e_talk.fake
    channel = fake.add_channel(fake.guild_id, "muted")
    fake.overwrite(channel, fake.guild_id, deny=SEND_MESSAGES)
    ix = fake.slash("dialogue", [opt("persona_a", "alice"), opt("persona_b", "trump"), opt("topic", "hello")],
                    user=fake.bob, channel_id=channel)
    assert "cannot send messages" in ephemeral_reply(fake, ix)["content"]
    ix = fake.slash("dialogue", [opt("persona_a", "alice"), opt("persona_b", "alice"), opt("topic", "hello")],
                    user=fake.bob)
    assert "two different personas" in ephemeral_reply(fake, ix)["content"]
    assert not _posts(fake, channel, set())

