"""The operator's tools end to end: the real bot process (with IMPROBABLE_OWNER_IDS naming bob), a real worker
and Redis against the fake Discord, with two servers.

- the bot removed from a server (GUILD_DELETE without `unavailable`): its data is purged by the retention
  sweep (`improbable operator sweep` on the same database) once the grace period has passed, not before; an
  outage (`unavailable: true`) purges nothing;
- `/operator disable-persona` makes /generate refuse the persona; only the operator may use `/operator`;
- `/operator block-server`: the bot leaves the server (DELETE /users/@me/guilds/{id}) and its data is gone;
- `/operator reports` lists a report filed with the Report button.

Commands in the second server need a bot synced globally: this module runs its own bot without
DISCORD_SYNC_GUILD on the shared stack, and gives the usual one back at the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import ROOT, guild_limits, swap_bot
from .fake_discord import FakeDiscord, custom_ids, opt
from .test_e2e import TIMEOUT, ephemeral_reply, final_text

pytestmark = pytest.mark.slow

IMPROBABLE = str(Path(sys.executable).with_name("improbable"))


@pytest.fixture(scope="module")
def operator_stack(stack):
    fake = stack.fake
    guild_limits(stack.database_url, fake.guild2_id, cooldown_seconds=0, max_queued_jobs_per_user=3)
    # bob is the deployment's operator
    swap_bot(stack, "bot-operator", synced_globally=True, IMPROBABLE_CEILING_MIN_COOLDOWN_SECONDS="0",
             IMPROBABLE_OWNER_IDS=json.dumps([fake.bob.id]))
    yield stack
    _cli(stack, "operator", "unblock-server", str(fake.guild2_id))
    _cli(stack, "operator", "enable-persona", "alice")
    if not fake.guilds[fake.guild2_id].joined:
        fake.restore_guild(fake.guild2_id)
    guild_limits(stack.database_url, fake.guild2_id, cooldown_seconds=0, max_queued_jobs_per_user=3)
    swap_bot(stack, "bot-after-operator")


@pytest.fixture
def op(operator_stack, e2e):
    """The stack with the operator's bot, checked after each test like `e2e`."""
    return e2e


def _cli(stack, *args: str, **env: str) -> str:
    out = subprocess.run([IMPROBABLE, *args], capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={**stack.env, **env})
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def _query(stack, fn):
    import db

    engine = db.make_engine(stack.database_url)
    try:
        with db.session_scope(engine) as session:
            return fn(session)
    finally:
        engine.dispose()


def _texts_in(stack, guild_id: int) -> int:
    import db

    return _query(stack, lambda s: s.query(db.Generation).filter_by(guild_id=guild_id).count())


def _standing(stack, guild_id: int) -> dict | None:
    from db.models import GuildStatus

    def read(session):
        row = session.get(GuildStatus, guild_id)
        return None if row is None else {"left_at": row.left_at, "blocked": row.blocked, "purged_at": row.purged_at}

    return _query(stack, read)


def _generate_in_guild2(fake: FakeDiscord, prompt: str) -> dict:
    if not fake.guilds[fake.guild2_id].joined:
        fake.restore_guild(fake.guild2_id)
        time.sleep(1.0)
    return final_text(fake, fake.slash("generate", [opt("persona", "alice"), opt("prompt", prompt),
                                                    opt("length", 20)], user=fake.dave, channel_id=fake.lobby_id))


def _answer(fake: FakeDiscord, command: str, options: list[dict] | None = None, user=None) -> str:
    """The ephemeral answer to `/operator …` (or another command) in the first server."""
    return ephemeral_reply(fake, fake.slash(command, options, user=user or fake.bob))["content"]


def _refused(fake: FakeDiscord, command: str, options: list[dict] | None = None, *, user) -> list[str]:
    """Everything `user` was shown for `/operator …` (the refusal), once the first answer is there."""
    ix = fake.slash(command, options, user=user)
    ephemeral_reply(fake, ix)
    time.sleep(1.0)
    return [m["content"] for mid in [ix.original_id, *ix.followups] if (m := fake.message(mid)) and m["content"]]


def _disabled(stack, slug: str) -> bool:
    import db

    return _query(stack, lambda s: s.query(db.Persona).filter_by(slug=slug, guild_id=None).one().disabled)


def test_removed_server_is_purged_after_the_grace_period_and_an_outage_purges_nothing(op):
    fake, g2 = op.fake, op.fake.guild2_id
    _generate_in_guild2(fake, "Kept through outages")
    assert _texts_in(op, g2) >= 1

    fake.remove_guild(g2, unavailable=True)  # an outage: the bot is still in the server
    time.sleep(1.0)
    assert "servers purged: none" in _cli(op, "operator", "sweep", IMPROBABLE_GUILD_GRACE_DAYS="0")
    assert _texts_in(op, g2) >= 1 and not (_standing(op, g2) or {}).get("left_at")
    fake.restore_guild(g2)
    time.sleep(1.0)

    fake.remove_guild(g2, unavailable=False)  # removed: the purge waits for the grace period
    fake.wait_for(lambda: (_standing(op, g2) or {}).get("left_at"), TIMEOUT, "the removal recorded")
    assert "servers purged: none" in _cli(op, "operator", "sweep")  # the default grace: 7 days
    assert _texts_in(op, g2) >= 1
    time.sleep(1.5)
    out = _cli(op, "operator", "sweep", IMPROBABLE_GUILD_GRACE_DAYS="0.00001")  # 0.864 s
    assert str(g2) in out, out
    assert _texts_in(op, g2) == 0 and _standing(op, g2)["purged_at"] is not None

    fake.restore_guild(g2)  # added back: nothing pending any more
    fake.wait_for(lambda: not _standing(op, g2)["left_at"], TIMEOUT, "the return recorded")


def test_operator_disables_a_persona_and_nobody_else_may_use_operator(op):
    fake = op.fake
    put = [r for r in fake.sent("PUT") if r.path.endswith("/commands")][-1]
    [registered] = [c for c in put.json if c["name"] == "operator"]
    assert int(registered["default_member_permissions"]) == 0  # hidden from everyone but the server's admins
    shown = _refused(fake, "operator servers", user=fake.owner)  # the server's owner is not the bot's operator
    assert any("Only the bot's operator can use `/operator`" in text for text in shown), shown
    assert not any("personas" in text for text in shown), shown
    shown = _refused(fake, "operator disable-persona", [opt("persona", "alice")], user=fake.alice)
    assert any("Only the bot's operator can use `/operator`" in text for text in shown), shown
    assert not _disabled(op, "alice")

    try:
        assert "`alice` is disabled" in _answer(fake, "operator disable-persona", [opt("persona", "alice")])
        assert _disabled(op, "alice")
        ix = fake.slash("generate", [opt("persona", "alice"), opt("prompt", "Not now"), opt("length", 20)],
                        user=fake.carol)
        assert "has been disabled by the bot's operator" in ephemeral_reply(fake, ix)["content"]
        assert fake.message(ix.original_id) is None or not custom_ids(fake.message(ix.original_id))
    finally:
        assert "enabled again" in _answer(fake, "operator enable-persona", [opt("persona", "alice")])
    msg = final_text(fake, fake.slash("generate", [opt("persona", "alice"), opt("prompt", "Now again"),
                                                   opt("length", 20)], user=fake.carol))
    assert "Now again" in msg["content"]


def test_blocking_a_server_leaves_it_and_purges_its_data(op):
    fake, g2 = op.fake, op.fake.guild2_id
    _generate_in_guild2(fake, "Soon gone")
    assert _texts_in(op, g2) >= 1

    answer = _answer(fake, "operator block-server", [opt("server", str(g2))])
    assert f"Server {g2} is blocked" in answer, answer
    fake.wait_for(lambda: fake.sent("DELETE", f"/users/@me/guilds/{g2}"), TIMEOUT, "the bot to leave")
    assert not fake.guilds[g2].joined
    assert _texts_in(op, g2) == 0
    standing = _standing(op, g2)
    assert standing["blocked"] and standing["purged_at"] is not None
    listed = _answer(fake, "operator servers")
    assert f"{g2} " in listed and "BLOCKED" in listed

    fake.restore_guild(g2)  # added back while blocked: the bot leaves again at once
    fake.wait_for(lambda: len(fake.sent("DELETE", f"/users/@me/guilds/{g2}")) == 2, TIMEOUT, "the bot to leave again")
    assert f"Server {g2} is unblocked" in _answer(fake, "operator unblock-server", [opt("server", str(g2))])
    fake.restore_guild(g2)
    time.sleep(1.5)
    assert len(fake.sent("DELETE", f"/users/@me/guilds/{g2}")) == 2 and fake.guilds[g2].joined


def test_operator_lists_a_report_filed_with_the_button(op):
    fake = op.fake
    msg = final_text(fake, fake.slash("generate", [opt("persona", "alice"), opt("prompt", "Quartz report"),
                                                   opt("length", 20)], user=fake.carol))
    gid = int(custom_ids(msg)[0].split(":")[2])
    filed = ephemeral_reply(fake, fake.click(msg, f"improbable:report:{gid}", user=fake.alice))["content"]
    report_id = filed.split("report #")[1].split()[0].rstrip(":.")
    listed = _answer(fake, "operator reports")
    [line] = [line for line in listed.splitlines() if line.startswith(f"#{report_id} ")]
    assert f"by {fake.alice.id}" in line and f"text {gid}" in line and "Quartz report" in line
    assert "Reported with the button" in line
    shown = _refused(fake, "operator reports", user=fake.carol)
    assert any("Only the bot's operator" in text for text in shown) and not any("#" in text for text in shown)
