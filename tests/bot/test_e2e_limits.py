"""The deployment's limits through the real bot and the fake Discord: /persona info samples and ambient replies
are counted by cost in the shared counters, a schedule past the server's cap is refused, uploads over a limit
are refused before a byte is downloaded, and /ambient chance:1 cooldown:0 is clamped to the ceilings."""

from __future__ import annotations

import threading
import time

import db
from db.personas import get_persona
from db.schedules import create_schedule
from service.quotas import Quotas

from .conftest import messages_handled, wait_handled
from .fake_discord import opt
from .test_e2e import TIMEOUT, ephemeral_reply


def _usage(e2e, key: str) -> float:
    engine = db.make_engine(e2e.database_url)
    try:
        return Quotas(engine).used(key, 3600)
    finally:
        engine.dispose()


def test_persona_info_sample_is_counted(e2e):
    fake = e2e.fake
    key = f"units:member:{fake.guild_id}:{fake.bob.id}"
    before = _usage(e2e, key)
    # trump: a bundled model no other test gives a stored sample, so info generates one (and counts it)
    ix = fake.slash("persona info", [opt("persona", "trump")], user=fake.bob)
    fake.wait_for(lambda: ix.state == "sent" and (m := fake.message(ix.original_id)) and "Sample" in m["content"],
                  TIMEOUT, "persona info with a sample")
    assert _usage(e2e, key) == before + 0.4  # a 200-character sample of a character model: 0.4 units


def test_a_schedule_past_the_cap_is_refused(e2e):
    fake = e2e.fake
    engine = db.make_engine(e2e.database_url)
    try:
        with db.session_scope(engine) as session:
            alice = get_persona(session, "alice", None)
            held = session.query(db.Schedule).filter_by(guild_id=fake.guild_id).count()
            for _ in range(10 - held):  # the default ceiling: 10 schedules a server
                create_schedule(session, alice, guild_id=fake.guild_id, channel_id=fake.other_channel_id,
                                prompt="", interval_seconds=3600, cron=None, created_by=fake.owner.id)
        channel = str(fake.other_channel_id)
        ix = fake.slash("schedule add", [opt("persona", "alice"), opt("channel", channel, 7), opt("every", "1h")],
                        user=fake.owner, resolved={"channels": {channel: {"id": channel, "name": "posts", "type": 0,
                                                                          "permissions": "0"}}})
        assert "already has 10 schedules" in ephemeral_reply(fake, ix)["content"]
        with db.session_scope(engine) as session:
            assert session.query(db.Schedule).filter_by(guild_id=fake.guild_id).count() == 10
            session.query(db.Schedule).filter_by(guild_id=fake.guild_id).delete()
    finally:
        engine.dispose()


def test_concurrent_creates_over_a_limit_download_nothing(e2e):
    fake = e2e.fake
    attempts = []
    for i in range(10):  # half announce more than the upload cap, half take a name that exists
        att_id, att = fake.attachment(f"big{i}.txt", b"Some text. " * 50)
        size = 30_000_000 if i % 2 else att["size"]
        name = f"big-{i}" if i % 2 else "alice"
        attempts.append((att, [opt("name", name), opt("file", att_id, 11)],
                         {"attachments": {att_id: {**att, "size": size}}}))
    sent = [None] * 10

    def create(i: int) -> None:
        _, options, resolved = attempts[i]
        sent[i] = fake.slash("persona create", options, user=fake.owner, resolved=resolved)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, ix in enumerate(sent):
        content = ephemeral_reply(fake, ix)["content"]
        assert ("limit here is" in content) if i % 2 else ("already taken" in content)
    assert [fake.cdn_reads(att["url"]) for att, _, _ in attempts] == [0] * 10


def test_ambient_is_clamped_and_answers_at_most_twice_a_minute(e2e):
    fake = e2e.fake
    channel = fake.add_channel(fake.guild_id, "chatter")
    on = fake.slash("ambient on", [opt("persona", "alice"), opt("chance", 1.0), opt("cooldown", "0")],
                    user=fake.owner, channel_id=channel)
    shown = ephemeral_reply(fake, on)["content"]
    assert "at most once every 30 s" in shown and "cooldown 0 s is below" in shown
    key = f"units:member:{fake.guild_id}:{fake.carol.id}"
    before = _usage(e2e, key)
    try:
        started, handled = time.monotonic(), messages_handled(e2e.bot)
        for i in range(100):
            fake.say(f"The Queen said {i} things", user=fake.carol, channel_id=channel)
        fake.wait_for(lambda: fake.channel_messages(channel), TIMEOUT, "an ambient reply")
        wait_handled(e2e.bot, handled + 100, "the 100 messages handled")  # every answer is posted by now
        assert time.monotonic() - started < 60
        assert 1 <= len(fake.channel_messages(channel)) <= 2
        assert _usage(e2e, key) >= before + 0.25  # counted against the member it answered
    finally:
        off = fake.slash("ambient off", [], user=fake.owner, channel_id=channel)
        assert "off" in ephemeral_reply(fake, off)["content"]
