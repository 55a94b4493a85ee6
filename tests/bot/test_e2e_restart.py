"""A bot that dies (kill -9) with generations in flight: the restarted bot finishes them in the same Discord
messages, or, when a job died with the bot (embedded mode, no broker), ends its message with a clear note.
Nothing is left showing frozen text, and no generation is written or posted twice."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from .conftest import Proc, clean_env, install_checkpoint, start_bot
from .fake_discord import FakeDiscord, custom_ids, opt
from .test_e2e import TIMEOUT, final_text

pytestmark = pytest.mark.slow


def in_flight(database_url: str) -> list[tuple]:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text("SELECT task_id, interaction_token, reply_to, message_id "
                                             "FROM inflight_generations")))
    finally:
        engine.dispose()


def generations_with_prompt(database_url: str, prompt: str) -> int:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT count(*) FROM generations WHERE prompt = :p"), {"p": prompt}).scalar()
    finally:
        engine.dispose()


def kill_and_restart(fake: FakeDiscord, bot: Proc, env: dict, logs, name: str,
                     while_down=None) -> tuple[Proc, float]:
    bot.proc.kill()  # SIGKILL: no shutdown code runs
    bot.proc.wait(10)
    bot.stop()
    killed = time.monotonic()
    if while_down is not None:
        while_down()
    with fake.cond:
        fake.identify = None  # (Discord keeps the synced commands across the bot's restarts)
    return start_bot(fake, env, logs, name), killed


def test_a_generation_streaming_when_the_bot_dies_is_finished_after_the_restart(e2e):
    fake = e2e.fake
    prompt = "The bot died while"
    # the bundled trump (2x512) writes ~240 chars/s with the drive on: this job streams for several seconds
    ix = fake.slash("generate", [opt("persona", "trump"), opt("prompt", prompt), opt("length", 2000),
                                 opt("improbability", 0.05), opt("seed", 11)], user=fake.owner)
    partial = fake.wait_for(lambda: (m := fake.message(ix.original_id)) and m["content"].endswith("▌") and m,
                            TIMEOUT, "partial text")
    (row,) = [r for r in in_flight(e2e.database_url) if r[1] == ix.token]
    syncs = len(fake.sent("PUT", "/commands"))
    e2e.bot, killed = kill_and_restart(fake, e2e.bot, e2e.env, e2e.logs, "bot-after-kill")
    assert len(fake.sent("PUT", "/commands")) == syncs  # the command tree did not change: no sync at start-up
    msg = final_text(fake, ix, timeout=60)
    took = time.monotonic() - killed
    resumed = [r for r in fake.sent("PATCH", f"/webhooks/{fake.app_id}/{ix.token}/messages/")
               if r.at > killed and r.json.get("content", "").endswith("▌")]
    print(f"\nFAULT bot kill -9 mid-stream: {len(resumed)} partial edits after the restart, the same message "
          f"finished {took:.1f} s after the kill")
    assert resumed, "the restarted bot did not stream the rest of the text"
    assert "▌" not in msg["content"] and f"**{prompt}**" in msg["content"] and "improbability 0.05" in msg["content"]
    assert len(msg["content"]) > len(partial["content"]) - 40
    assert custom_ids(msg)[0].startswith("improbable:regen:")
    assert generations_with_prompt(e2e.database_url, prompt) == 1
    assert [m for m in fake.channel_messages(fake.channel_id) if prompt in m["content"]] == [msg]  # no second post
    fake.wait_for(lambda: not [r for r in in_flight(e2e.database_url) if r[0] == row[0]], 10, "the row forgotten")


def test_a_reply_streaming_when_the_bot_dies_is_finished_after_the_restart(e2e):
    fake = e2e.fake
    said = fake.say(f"<@{fake.app_id}> alice: Reply while dying", user=fake.carol, mention_bot=True)

    def reply(final: bool):
        for m in fake.channel_messages(fake.channel_id):
            if (m.get("message_reference") or {}).get("message_id") == str(said["id"]):
                return m if bool(custom_ids(m)) == final else None
        return None

    fake.wait_for(lambda: [r for r in in_flight(e2e.database_url) if r[2] == int(said["id"])], TIMEOUT,
                  "the reply's job remembered")
    posted = fake.wait_for(lambda: reply(final=False) or reply(final=True), TIMEOUT, "the reply posted")

    def lose_the_reply_id():
        # the bot died between posting its reply and noting the reply's id (service.generation.placed_in_flight
        # runs after the post): the restarted bot has to find its reply, not post a second one
        engine = sa.create_engine(e2e.database_url)
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE inflight_generations SET message_id = NULL WHERE reply_to = :r"),
                         {"r": int(said["id"])})
        engine.dispose()

    e2e.bot, killed = kill_and_restart(fake, e2e.bot, e2e.env, e2e.logs, "bot-after-reply-kill", lose_the_reply_id)
    msg = fake.wait_for(lambda: reply(final=True), 60, "the reply finished")
    assert msg["id"] == posted["id"] and "**Reply while dying**" in msg["content"] and "▌" not in msg["content"]
    replies = [m for m in fake.channel_messages(fake.channel_id)
               if (m.get("message_reference") or {}).get("message_id") == str(said["id"])]
    assert replies == [msg]  # finished in place or posted once: never two replies
    assert generations_with_prompt(e2e.database_url, "Reply while dying") == 1


def test_a_job_that_died_with_the_bot_ends_with_a_note(tmp_path, tiny_model, stack):
    """Embedded mode (no broker): the job runs inside the bot process, so kill -9 ends it; the restarted bot
    says so in the message instead of leaving "thinking…" forever."""
    import db

    fake = FakeDiscord().start()
    database_url = f"sqlite:///{tmp_path / 'embedded.db'}"
    db.upgrade(database_url)
    install_checkpoint(database_url, tmp_path / "storage", tiny_model)
    env = clean_env(**{k: v for k, v in stack.env.items() if k.startswith(("IMPROBABLE_", "DISCORD_"))
                       and k != "IMPROBABLE_BROKER_URL"})
    env.update(IMPROBABLE_DATABASE_URL=database_url, IMPROBABLE_STORAGE_URL=str(tmp_path / "storage"),
               IMPROBABLE_DATA_DIR=str(tmp_path / "data"))
    bot = start_bot(fake, env, tmp_path, "bot-embedded")
    try:
        ix = fake.slash("generate", [opt("persona", "alice"), opt("prompt", "Never finished"), opt("length", 2000),
                                     opt("improbability", 0.05)], user=fake.owner)
        fake.wait_for(lambda: in_flight(database_url), TIMEOUT, "the job remembered")
        bot, _ = kill_and_restart(fake, bot, env, tmp_path, "bot-embedded-restarted")
        msg = fake.wait_for(lambda: (m := fake.message(ix.original_id)) and "restarted" in m["content"] and m,
                            TIMEOUT, "the note")
        assert "Nothing more is coming" in msg["content"] and "▌" not in msg["content"] and not custom_ids(msg)
        fake.wait_for(lambda: not in_flight(database_url), 10, "the row forgotten")
        assert not fake.errors
    finally:
        bot.stop()
        fake.stop()
