"""End to end, members' voices: `/voice me` from a data package keeps only that member's messages of this server,
is labelled as a parody, and nobody else can use or delete it; `/persona learn` reads nothing while channel
learning is off; with it on (a bot started with the setting), only the messages of a member who opted in are
learned (no other member's, no bot's, no command), and that member's opt-out takes them out again."""

from __future__ import annotations

import io
import json
import random
import zipfile

import pytest
from sqlalchemy import select

from .conftest import start_bot
from .fake_discord import User, opt
from .test_e2e import TIMEOUT, ephemeral_reply, final_text

pytestmark = pytest.mark.slow
WORDS = ("our tram was late again so we walked along the canal past the bakery and the old cinema arguing about "
         "whether rain counts as weather or as a mood").split()


def _lines(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(12)).capitalize() + "." for _ in range(n)]


def _package(guild_id: int, here: list[str], elsewhere: list[str]) -> bytes:
    """A data package .zip: a channel of this server, one of another server, a DM."""
    def messages(lines, start):
        return json.dumps([{"ID": str(start + i), "Timestamp": f"2023-01-01 10:{i // 60:02d}:{i % 60:02d}",
                            "Contents": text, "Attachments": ""} for i, text in enumerate(lines)]).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("messages/index.json", json.dumps({"1": "general", "2": "elsewhere", "3": "Direct Message"}))
        z.writestr("messages/c1/channel.json", json.dumps({"id": "1", "type": 0, "guild": {"id": str(guild_id)}}))
        z.writestr("messages/c1/messages.json", messages([f"{t} <@42> https://x.example/y" for t in here], 100))
        z.writestr("messages/c2/channel.json", json.dumps({"id": "2", "type": 0, "guild": {"id": "987654"}}))
        z.writestr("messages/c2/messages.json", messages(elsewhere, 500))
        z.writestr("messages/c3/channel.json", json.dumps({"id": "3", "type": 1}))
        z.writestr("messages/c3/messages.json", messages(["a private note to a friend"] * 3, 900))
    return buf.getvalue()


def _corpus(e2e, slug: str) -> list[str]:
    import db
    from db.ingest import read_corpus_text

    engine = db.make_engine(e2e.database_url)
    try:
        with db.session_scope(engine) as session:
            persona = session.scalars(select(db.Persona).where(db.Persona.slug == slug)).first()
            if persona is None:
                return []
            return [read_corpus_text(c, db.Storage(str(e2e.storage_dir))) for c in persona.corpora]
    finally:
        engine.dispose()


def _shown(fake, ix, text: str) -> str:
    return fake.wait_for(lambda: (m := fake.message(ix.original_id)) and text in m["content"] and m["content"],
                         TIMEOUT, f"'{text}' in the answer")


def test_voice_me_keeps_this_servers_messages_and_is_its_members_alone(e2e):
    fake = e2e.fake
    here, elsewhere = _lines(1, 90), _lines(2, 40)
    att_id, att = fake.attachment("package.zip", _package(fake.guild_id, here, elsewhere), "application/zip")
    ix = fake.slash("voice me", [opt("file", att_id, 11), opt("this_server_only", True), opt("minutes", 0.05)],
                    user=fake.bob, resolved={"attachments": {att_id: att}})
    shown = _shown(fake, ix, "(parody voice)")
    assert "bob (parody voice)" in shown and "90 of your 133 messages" in shown
    (text,) = _corpus(e2e, "me-bob")
    assert text.splitlines() == here  # only this server's, without the mention and the link
    _activate(e2e, "me-bob")
    result = final_text(fake, fake.slash("generate", [opt("persona", "me-bob"), opt("prompt", "Our"),
                                                      opt("length", 40)], user=fake.bob))
    assert "bob (parody voice)" in result["content"]  # every post names it a parody
    for user in (fake.carol, fake.owner):
        refused = ephemeral_reply(fake, fake.slash("generate", [opt("persona", "me-bob")], user=user))
        assert "no persona called" in refused["content"]
        gone = ephemeral_reply(fake, fake.slash("voice delete", user=user))
        assert "no voice" in gone["content"]
    refused = ephemeral_reply(fake, fake.slash("persona delete", [opt("persona", "me-bob")], user=fake.owner))
    assert "no persona called" in refused["content"] and _corpus(e2e, "me-bob")
    deleted = ephemeral_reply(fake, fake.slash("voice delete", user=fake.bob))
    assert "Deleted your voice `me-bob`" in deleted["content"] and not _corpus(e2e, "me-bob")


def _activate(e2e, slug: str) -> None:
    """The session's tiny model as the voice's active checkpoint (no waiting for its training run)."""
    import db
    from db.checkpoints import add_checkpoint

    engine = db.make_engine(e2e.database_url)
    try:
        with db.session_scope(engine) as session:
            persona = session.scalars(select(db.Persona).where(db.Persona.slug == slug)).one()
            storage = db.Storage(str(e2e.storage_dir))
            data = storage.get(session.get(db.Checkpoint, e2e.checkpoint_id).storage_key)
            key = f"checkpoints/{slug}/tiny/best.safetensors"
            storage.put(key, data)
            add_checkpoint(session, persona, key, size_bytes=len(data), activate=True)
    finally:
        engine.dispose()


def test_learn_is_refused_and_reads_nothing_while_the_setting_is_off(e2e):
    fake = e2e.fake
    reads = fake.history_reads
    ix = fake.slash("persona learn", [opt("name", "crowd"), opt("channel", str(fake.channel_id), 7)], user=fake.owner,
                    resolved={"channels": fake.resolved_channels(fake.owner, fake.channel_id)})
    refused = ephemeral_reply(fake, ix)
    assert "off in this deployment" in refused["content"] and "Developer Policy" in refused["content"]
    assert fake.history_reads == reads  # the fake counts every history page it serves


@pytest.fixture(scope="module")
def learning(stack):
    """The bot started with IMPROBABLE_CHANNEL_LEARNING on (and the session's bot back afterwards)."""
    fake = stack.fake
    stack.bot.stop()
    with fake.cond:
        fake.identify = None  # the commands synced before stay (the bot syncs only when they changed)
    stack.bot = start_bot(fake, {**stack.env, "IMPROBABLE_CHANNEL_LEARNING": "true"}, stack.logs, "bot-learning")
    yield stack
    stack.bot.stop()
    with fake.cond:
        fake.identify = None  # the commands synced before stay (the bot syncs only when they changed)
    stack.bot = start_bot(fake, stack.env, stack.logs, "bot-after-learning")


def test_learn_keeps_only_opted_in_members_and_opt_out_removes_them(learning, e2e):
    fake = e2e.fake
    channel = fake.add_channel(fake.guild_id, "chatter")
    other_bot = User(fake.snowflake(), "otherbot", bot=True)
    mine, theirs = _lines(3, 90), _lines(4, 30)
    for i, line in enumerate(mine):
        fake.seed_history(channel, fake.alice, f"{line} <@{fake.carol.id}> https://t.example/{i}")
        if i % 3 == 0:
            fake.seed_history(channel, fake.carol, theirs[i // 3])
            fake.seed_history(channel, other_bot, f"bot says {i} " + theirs[i // 3])
    fake.seed_history(channel, fake.alice, "/generate persona:alice prompt:secret command")
    optin = ephemeral_reply(fake, fake.slash("voice optin", user=fake.alice))
    assert "opted in" in optin["content"]
    reads = fake.history_reads
    ix = fake.slash("persona learn", [opt("name", "crowd"), opt("channel", str(channel), 7), opt("minutes", 0.05)],
                    user=fake.owner, resolved={"channels": fake.resolved_channels(fake.owner, channel)})
    shown = _shown(fake, ix, "Learned from")
    assert fake.history_reads > reads and "by 1 member(s)" in shown
    (text,) = _corpus(e2e, "crowd")
    assert text.splitlines() == mine  # alice's own lines only: no carol, no bot, no command, no mention, no link
    out = ephemeral_reply(fake, fake.slash("voice optout", user=fake.alice))
    assert "Removed your messages from `crowd` and retired it" in out["content"]
    assert all(line not in "\n".join(_corpus(e2e, "crowd")) for line in mine)
