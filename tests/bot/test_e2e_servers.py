"""Every server's personas are its own, end to end: the real bot process (synced globally, so the second server's
commands work), a real worker and Redis against the fake Discord.

The second server's owner retrains the built-in `alice` with an upload: the run trains that server's own copy,
the first server's `/persona info alice` is unchanged (same model, no file name of the other server), the second
server's shows its upload; deleting the copy there brings back the built-in. A member of the second server cannot
cancel the first server's training run by its id.
"""

from __future__ import annotations

import pytest

from .conftest import guild_limits, swap_bot
from .fake_discord import FakeDiscord, opt
from .test_e2e import TIMEOUT, ephemeral_reply
from .test_e2e_voices import TRAINED, _outcome

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def servers(stack):
    fake = stack.fake
    if not fake.guilds[fake.guild2_id].joined:
        fake.restore_guild(fake.guild2_id)
    guild_limits(stack.database_url, fake.guild2_id, cooldown_seconds=0, train_cooldown_seconds=0,
                 max_queued_jobs_per_user=3)
    swap_bot(stack, "bot-servers", synced_globally=True)
    yield stack
    swap_bot(stack, "bot-after-servers")


@pytest.fixture
def two(servers, e2e):
    return e2e


def _shown(fake: FakeDiscord, ix, timeout: float = TIMEOUT) -> str:
    msg = fake.wait_for(lambda: (m := fake.message(ix.original_id)) and ix.state == "sent" and m["content"] and m,
                        timeout, f"the answer to interaction {ix.id}")
    return msg["content"]


def _info(fake: FakeDiscord, *, guild2: bool) -> str:
    if guild2:
        return _shown(fake, fake.slash("persona info", [opt("persona", "alice")], user=fake.dave,
                                       channel_id=fake.lobby_id))
    return _shown(fake, fake.slash("persona info", [opt("persona", "alice")], user=fake.carol))


def _alice_row(stack, guild_id):
    import db
    from db.personas import get_persona

    engine = db.make_engine(stack.database_url)
    try:
        with db.session_scope(engine) as session:
            persona = get_persona(session, "alice", guild_id)
            return persona.id, persona.guild_id, persona.active_checkpoint_id
    finally:
        engine.dispose()


def test_a_second_servers_retrain_of_alice_leaves_the_first_unchanged(two):
    fake = two.fake
    before_row, before_info = _alice_row(two, fake.guild_id), _info(fake, guild2=False)
    with open(two.env["IMPROBABLE_CORPUS_PATH"] + "/alice/alice.txt", encoding="utf-8") as f:
        data = f.read()[30_000:40_000].encode()
    att_id, att = fake.attachment("guild-two-secret.txt", data)
    ix = fake.slash("persona retrain", [opt("persona", "alice"), opt("file", att_id, 11), opt("minutes", 0.05)],
                    user=fake.dave, channel_id=fake.lobby_id, resolved={"attachments": {att_id: att}})
    outcome = _outcome(fake, ix, TRAINED)
    assert "failed" not in outcome and ("is ready" in outcome or "not good enough yet" in outcome), outcome

    # the first server (and the built-in) unchanged: same persona row and model, the same info
    assert _alice_row(two, fake.guild_id) == before_row == _alice_row(two, None)
    after_info = _info(fake, guild2=False)
    assert after_info == before_info and "guild-two-secret.txt" not in after_info
    # the second server has its own copy, showing its own upload
    copy = _alice_row(two, fake.guild2_id)
    assert copy[1] == fake.guild2_id and copy[0] != before_row[0] and copy[2] not in (None, before_row[2])
    assert "guild-two-secret.txt" in _info(fake, guild2=True)

    # deleting the copy brings the built-in back in the second server
    deleted = fake.slash("persona delete", [opt("persona", "alice")], user=fake.dave, channel_id=fake.lobby_id)
    assert "Deleted `alice`" in ephemeral_reply(fake, deleted)["content"]
    assert _alice_row(two, fake.guild2_id) == before_row
    assert "guild-two-secret.txt" not in _info(fake, guild2=True)


def test_a_member_cannot_cancel_another_servers_run(two):
    import db
    from db.personas import create_persona
    from db.runs import create_run

    fake = two.fake
    engine = db.make_engine(two.database_url)
    try:
        with db.session_scope(engine) as session:
            persona = create_persona(session, "first-only", family="char-rnn", guild_id=fake.guild_id)
            persona_id = persona.id
            run_id = create_run(session, persona, requested_by=fake.owner.id, guild_id=fake.guild_id).id
    finally:
        engine.dispose()
    try:
        ix = fake.slash("queue", [opt("cancel", f"run:{run_id}")], user=fake.dave, channel_id=fake.lobby_id)
        refused = ephemeral_reply(fake, ix)["content"]
        assert f"no training run {run_id}" in refused, refused
        engine = db.make_engine(two.database_url)
        with db.session_scope(engine) as session:
            run = session.get(db.TrainingRun, run_id)
            assert run.status is db.RunStatus.QUEUED and not run.cancel_requested
        engine.dispose()
    finally:
        engine = db.make_engine(two.database_url)
        with db.session_scope(engine) as session:
            from db.personas import delete_persona

            delete_persona(session, session.get(db.Persona, persona_id))
        engine.dispose()
