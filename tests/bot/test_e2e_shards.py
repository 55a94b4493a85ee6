"""Sharding: the fake Discord routes each guild to the gateway session of its shard, and two bot processes with
one shard each (IMPROBABLE_SHARD_COUNT=2, IMPROBABLE_SHARD_IDS=0 and 1), sharing Redis, the database and the
worker, serve a fake Discord of 2 shards: each answers in its own guild, a restart of one while a text of each
is streaming resumes its own and leaves the other's to the process of its shard, and the slash commands are
synced once when both start together, and not again at the restart."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time

import aiohttp
import pytest

from core.shards import Shards, shard_of

from .conftest import ROOT, Proc, guild_limits
from .fake_discord import FakeDiscord, custom_ids, guild_shard, opt
from .test_e2e import TIMEOUT, final_text
from .test_e2e_restart import generations_with_prompt, in_flight
from .test_fake_discord_guilds import Gateway, rest

pytestmark = pytest.mark.slow


class ShardGateway(Gateway):
    """A gateway client of our own that identifies as one shard."""

    def __init__(self, fake: FakeDiscord, shard: list[int]):
        self.shard = shard
        super().__init__(fake)

    async def _run(self, url: str) -> None:
        self._stop = asyncio.Event()
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            await ws.send_str(json.dumps({"op": 2, "d": {"token": "t", "intents": 0, "properties": {},
                                                         "shard": self.shard}}))
            reader = asyncio.ensure_future(self._read(ws))
            await self._stop.wait()
            reader.cancel()

    def events_of(self, event: str) -> list[dict]:
        with self.cond:
            return [d for t, d in self.events if t == event]


def test_the_fake_routes_each_guild_to_its_shard_and_dms_to_shard_0():
    fake = FakeDiscord(shards=2).start()
    sessions = []
    try:
        status, body = rest(fake, "GET", "/gateway/bot")
        assert status == 200 and body["shards"] == 2 and body["url"] == fake.gateway_url
        one, two = fake.guild_id, fake.guild2_id
        assert {guild_shard(one, 2), guild_shard(two, 2)} == {0, 1}, "the two guilds share a shard of 2"
        sessions = [ShardGateway(fake, [i, 2]) for i in (0, 1)]
        by_shard = {i: sessions[i] for i in (0, 1)}
        for guild in (one, two):
            by_shard[guild_shard(guild, 2)].wait("GUILD_CREATE", lambda d, g=guild: d["id"] == str(g))
        fake.wait_for(lambda: fake.shards_connected() == [(0, 2), (1, 2)], 10, "both shards identified")
        for i, session in by_shard.items():
            ready = session.wait("READY")
            assert ready["shard"] == [i, 2]
            assert [g["id"] for g in ready["guilds"]] == [str(g) for g in (one, two) if guild_shard(g, 2) == i]
        said = fake.say("in the second guild", user=fake.dave, channel_id=fake.lobby_id)
        by_shard[guild_shard(two, 2)].wait("MESSAGE_CREATE", lambda d: d["id"] == said["id"])
        dm = fake.say("a DM", user=fake.alice, channel_id=fake.dm_channel(fake.alice))
        by_shard[0].wait("MESSAGE_CREATE", lambda d: d["id"] == dm["id"])
        time.sleep(0.3)  # anything sent to the wrong session would have arrived by now
        for i, session in by_shard.items():
            guilds = {int(d["id"]) for d in session.events_of("GUILD_CREATE")}
            assert guilds == {g for g in (one, two) if guild_shard(g, 2) == i}
            messages = {d["id"] for d in session.events_of("MESSAGE_CREATE")}
            assert (said["id"] in messages) == (i == guild_shard(two, 2)) and (dm["id"] in messages) == (i == 0)
        assert not fake.errors
    finally:
        for session in sessions:
            session.close()
        fake.stop()


def test_core_shard_formula_is_discords():
    fake = FakeDiscord(shards=2)
    for guild_id in (fake.guild_id, fake.guild2_id, 81384788765712384, 1 << 22, None):
        for count in (1, 2, 3, 16):
            assert shard_of(guild_id, count) == guild_shard(guild_id, count)
    assert Shards(2, (1,)).owns(fake.guild_id) == (guild_shard(fake.guild_id, 2) == 1)
    assert Shards(2, (0,)).owns(None) and not Shards(2, (1,)).owns(None) and Shards().owns(fake.guild2_id)


# -- two bot processes, one shard each ------------------------------------------------------------------------

def start_shards(fake: FakeDiscord, env: dict, logs, names: dict[int, str]) -> dict[int, Proc]:
    """A bot process per shard id, all started at once; returned once each says it is ready."""
    procs = {i: Proc(name, [sys.executable, "-m", "bot"], {**env, "IMPROBABLE_SHARD_IDS": str(i)}, logs, ROOT)
             for i, name in names.items()}
    try:
        fake.wait_for(lambda: all("ready as" in p.log() or not p.alive() for p in procs.values()), 90,
                      "every shard's bot ready")
    except TimeoutError:
        for proc in procs.values():
            proc.stop()
        raise
    dead = [p for p in procs.values() if not p.alive()]
    assert not dead, f"{dead[0].name} exited:\n{dead[0].log()}"
    return procs


def long_generation(fake: FakeDiscord, prompt: str, user, channel_id: int):
    """A text that takes more than a second: the bundled trump with the drive on writes about 240 characters a
    second on an idle core (core/cost.py); on a busy host it must still end within the stack's 30 s timeout."""
    return fake.slash("generate", [opt("persona", "trump"), opt("prompt", prompt), opt("length", 300),
                                   opt("improbability", 0.05), opt("seed", 5)], user=user, channel_id=channel_id)


def edits_too_close(fake: FakeDiscord, ix) -> list[float]:
    """Gaps under 0.9 s between edits of the interaction's message: two processes editing it would show."""
    times = [r.at for r in fake.sent("PATCH", f"/webhooks/{fake.app_id}/{ix.token}/messages/")]
    return [round(b - a, 2) for a, b in zip(times, times[1:], strict=False) if b - a < 0.9]


@pytest.fixture
def sharded(stack):
    """A fake Discord of 2 shards and the stack's database, Redis and worker, its two guilds without cooldowns;
    the bot processes' environment (commands synced globally)."""
    fake = FakeDiscord(shards=2).start()
    fake.sync_delay = 1.0  # a sync takes a while: both processes would sync without the shared claim
    for guild in (fake.guild_id, fake.guild2_id):
        guild_limits(stack.database_url, guild, cooldown_seconds=0, max_queued_jobs_per_user=3)
    env = {**stack.env, **fake.env(), "IMPROBABLE_SHARD_COUNT": "2"}
    env.pop("DISCORD_SYNC_GUILD")
    procs: dict[int, Proc] = {}
    yield fake, env, procs
    for proc in procs.values():
        proc.stop()
    fake.stop()


def test_two_processes_one_shard_each_serve_resume_their_own_and_sync_once(stack, sharded):
    fake, env, procs = sharded
    where = {fake.guild_id: (fake.alice, fake.channel_id), fake.guild2_id: (fake.dave, fake.lobby_id)}
    shard = {guild: guild_shard(guild, 2) for guild in where}
    assert sorted(shard.values()) == [0, 1]
    procs.update(start_shards(fake, env, stack.logs, {0: "bot-shard-0", 1: "bot-shard-1"}))
    assert fake.shards_connected() == [(0, 2), (1, 2)]
    assert len(fake.sent("PUT", "/commands")) == 1, "both processes synced the commands"
    for i, proc in procs.items():
        assert f"in 1 guild(s) on shard(s) {i} of 2" in proc.log(), proc.log()

    # a /generate in each guild, each answered by the process of its shard
    asked = {g: fake.slash("generate", [opt("persona", "alice"), opt("prompt", f"Shard {shard[g]} says"),
                                        opt("length", 40)], user=u, channel_id=c) for g, (u, c) in where.items()}
    for guild, ix in asked.items():
        msg = final_text(fake, ix)
        assert f"**Shard {shard[guild]} says**" in msg["content"] and custom_ids(msg)
        assert (shard[guild], "INTERACTION_CREATE", guild) in fake.delivered
        assert (1 - shard[guild], "INTERACTION_CREATE", guild) not in fake.delivered

    restart_with_texts_in_flight(stack, fake, env, procs, shard)
    assert len(fake.sent("PUT", "/commands")) == 1, "the restart synced the unchanged commands again"
    assert not fake.errors, fake.errors


def restart_with_texts_in_flight(stack, fake: FakeDiscord, env: dict, procs: dict[int, Proc],
                                 shard: dict[int, int]) -> None:
    """A text is asked for in each guild. Once both are in flight (remembered in SQL, the jobs running), the
    process of the first guild's shard dies (kill -9) and comes back while the other process is stopped
    (SIGSTOP), so the other's text is certainly still in flight when the restarted process resumes: it must
    resume its own text, and leave the other's alone (no edit of it until its process runs again, and then
    that process finishes it)."""
    users = {fake.guild_id: (fake.owner, fake.channel_id), fake.guild2_id: (fake.erin, fake.lobby_id)}
    prompts = {g: f"Streaming on shard {shard[g]}" for g in users}
    long = {g: long_generation(fake, prompts[g], u, c) for g, (u, c) in users.items()}
    tokens = {ix.token for ix in long.values()}
    fake.wait_for(lambda: tokens <= {r[1] for r in in_flight(stack.database_url)}, TIMEOUT, "both texts in flight")
    victim, other = shard[fake.guild_id], shard[fake.guild2_id]
    procs[other].proc.send_signal(signal.SIGSTOP)
    try:
        procs[victim].proc.kill()
        procs[victim].proc.wait(10)
        procs[victim].stop()
        killed = time.monotonic()
        others = long[fake.guild2_id]
        frozen = fake.message(others.original_id)
        assert tokens <= {r[1] for r in in_flight(stack.database_url)}, "a text was shown before the kill"
        procs.update(start_shards(fake, env, stack.logs, {victim: f"bot-shard-{victim}-restarted"}))
        restarted = procs[victim].log()
        assert f"resuming 1 generation(s) in flight when the bot last stopped (shard(s) {victim} of 2)" in restarted
        mine = final_text(fake, long[fake.guild_id], timeout=60)  # finished by the restarted process
        assert not [r for r in fake.sent(None, f"/{others.token}") if r.at > killed], \
            "the restarted process touched the other shard's text"
        assert fake.message(others.original_id) == frozen, "the other shard's text changed while its process slept"
    finally:
        procs[other].proc.send_signal(signal.SIGCONT)
    resumed = [r for r in fake.sent("PATCH", f"/{long[fake.guild_id].token}/messages/") if r.at > killed]
    assert resumed and "▌" not in mine["content"]
    for guild, ix in long.items():
        msg = final_text(fake, ix, timeout=60)
        assert f"**{prompts[guild]}**" in msg["content"] and "▌" not in msg["content"]
        assert "restarted" not in msg["content"] and custom_ids(msg)[0].startswith("improbable:regen:")
        assert generations_with_prompt(stack.database_url, prompts[guild]) == 1
        assert not edits_too_close(fake, ix), f"two processes edited {prompts[guild]!r}"
    assert procs[other].alive() and "resuming" not in procs[other].log()
    fake.wait_for(lambda: not {ix.token for ix in long.values()} & {r[1] for r in in_flight(stack.database_url)},
                  10, "both rows forgotten")
