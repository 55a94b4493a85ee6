"""A bot that dies (kill -9) while a persona speaks through a channel webhook: the restarted bot finishes the
persona's message in place, through the webhook (a /generate posted as the persona); a /dialogue it was
posting ends with a note saying the restart stopped it, after its interrupted turn is finished."""

from __future__ import annotations

import contextlib
import re

import pytest
import sqlalchemy as sa

from tests.environment import wait_until

from .fake_discord import custom_ids, opt
from .test_e2e import TIMEOUT
from .test_e2e_restart import generations_with_prompt, in_flight, kill_and_restart
from .test_e2e_webhooks import _persona_channel

pytestmark = pytest.mark.slow


def _streaming(fake, channel: int) -> dict:
    """The persona's message once it shows part of a text (still being written)."""
    return fake.wait_for(lambda: next((m for m in fake.webhook_messages(channel) if m["content"].endswith("▌")),
                                      None), TIMEOUT, "a partial text posted as the persona")


def test_a_generation_posted_as_the_persona_is_finished_after_a_restart(e2e):
    fake = e2e.fake
    channel = _persona_channel(fake, "persona-restart")
    prompt = "The persona was cut off"
    # the bundled trump (2x512) streams for a few seconds at this length (well within the worker's timeout)
    fake.slash("generate", [opt("persona", "trump"), opt("prompt", prompt), opt("length", 600),
                            opt("improbability", 0.05), opt("seed", 12)], user=fake.owner, channel_id=channel)
    partial = _streaming(fake, channel)
    fake.wait_for(lambda: [r for r in in_flight(e2e.database_url) if r[3] == int(partial["id"])], TIMEOUT,
                  "the persona's message noted in flight")
    e2e.bot, killed = kill_and_restart(fake, e2e.bot, e2e.env, e2e.logs, "bot-after-persona-kill")
    done = fake.wait_for(lambda: (m := fake.message(int(partial["id"]))) and custom_ids(m) and m, 60,
                         "the persona's message finished")
    hook = next(w for w in fake.webhooks_in(channel) if str(w["id"]) == partial["webhook_id"])
    after = [r for r in fake.sent("PATCH", f"/messages/{partial['id']}") if r.at > killed]
    assert after and all(r.path.startswith(f"/api/v10/webhooks/{hook['id']}/{hook['token']}/") for r in after)
    assert "▌" not in done["content"] and f"**{prompt}**" in done["content"] and "improbability 0.05" in done["content"]
    assert done["author"]["username"] == "Trump · AI" and custom_ids(done)[0].startswith("improbable:regen:")
    shown = fake.channel_messages(channel) + fake.webhook_messages(channel)
    assert [m["id"] for m in shown if prompt in m["content"]] == [partial["id"]]  # finished in place, not again
    assert generations_with_prompt(e2e.database_url, prompt) == 1
    fake.wait_for(lambda: not [r for r in in_flight(e2e.database_url) if r[3] == int(partial["id"])], 10,
                  "the row forgotten")


def _dialogue_rows(database_url: str) -> list[tuple]:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text("SELECT id, started, turns FROM inflight_dialogues")))
    finally:
        engine.dispose()


@contextlib.contextmanager
def persona_sampling(database_url: str, slug: str, **values):
    """The built-in persona `slug` samples with `values` on top of its own defaults while the block runs (a
    persona's defaults live in SQL, and no command sets them); its defaults are put back afterwards."""
    import db
    from db.personas import get_persona

    engine = db.make_engine(database_url)
    try:
        with db.session_scope(engine) as session:
            persona = get_persona(session, slug, None)
            before = dict(persona.sampling or {})
            persona.sampling = {**before, **values}
        try:
            yield
        finally:
            with db.session_scope(engine) as session:
                get_persona(session, slug, None).sampling = before
    finally:
        engine.dispose()


def test_a_dialogue_interrupted_by_a_restart_ends_with_a_note(e2e):
    fake = e2e.fake
    channel = fake.add_channel(fake.guild_id, "dialogue-restart")  # no webhooks: the turns are the bot's

    def turns() -> list[dict]:
        return [m for m in fake.channel_messages(channel) if m["content"].startswith(("**Alice**", "**Trump**"))]

    def written_and_noted():  # a turn still being written whose message the bot has noted in flight
        noted = {r[3] for r in in_flight(e2e.database_url)}
        return next((m for m in turns() if m["content"].endswith("▌") and int(m["id"]) in noted), None)

    # A turn is 200 characters (service.dialogue.TURN_TOKENS), which the bundled trump writes in ~0.2 s once warm
    # (an earlier test used it): no longer than the worker's partial interval here, so its message may never show
    # a partial text. With the improbability drive on (~12 times the work, core/cost.py) a turn of trump's streams
    # for about two seconds.
    with persona_sampling(e2e.database_url, "trump", improbability=0.05):
        ix = fake.slash("dialogue", [opt("persona_a", "alice"), opt("persona_b", "trump"),
                                     opt("topic", "The restart"), opt("turns", 6)], user=fake.bob, channel_id=channel)
        partial = wait_until(written_and_noted, TIMEOUT, "a turn being written", poll=0.02)
        seen: dict = {}
        e2e.bot, killed = kill_and_restart(fake, e2e.bot, e2e.env, e2e.logs, "bot-after-dialogue-kill",
                                           lambda: seen.update(rows=_dialogue_rows(e2e.database_url)))
        [(_, started, _)] = seen["rows"]
        note = fake.wait_for(lambda: next((m for m in fake.channel_messages(channel) if "restarted" in m["content"]),
                                          None), 60, "the note")
        shown = fake.wait_for(lambda: (m := fake.message(int(partial["id"]))) and custom_ids(m) and m, 60,
                              "the interrupted turn finished")
    # the restarted bot finished the turn in place (it was still being written when the bot died)
    assert [r for r in fake.sent("PATCH", f"/messages/{partial['id']}") if r.at > killed]
    assert "▌" not in shown["content"] and int(note["id"]) > int(partial["id"]) > int(ix.original_id)
    assert re.search(fr"Alice and Trump.*stops at turn {started} of 6", note["content"]), note["content"]
    assert int(note["author"]["id"]) == fake.app_id and "/dialogue" in note["content"]
    # the killed process was the only one posting turns: the interrupted one is the last
    posted = turns()
    assert len(posted) == started and posted[-1]["id"] == partial["id"], posted
    assert not any(m["content"].endswith("▌") for m in posted)
    fake.wait_for(lambda: not _dialogue_rows(e2e.database_url), 10, "the dialogue forgotten")
