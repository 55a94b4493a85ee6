"""The load benchmark's fake Discord (tests/bot/fake_load.py): its generated servers, its channel index, and
what it records of the bot's answers (the bot's side is simulated here; bench/speed/load.py runs the real one)."""

from __future__ import annotations

import collections
import time

from .fake_discord import custom_ids
from .fake_load import FakeLoad


def test_servers_are_generated_with_channels_members_and_ids_spread_over_shards():
    fake = FakeLoad(400, channels=3, members=4, users=500)
    assert len(fake.guilds) == 402 and len(fake.load_guilds) == 400  # FakeDiscord's two test guilds too
    guild = fake.load_guilds[7]
    payload = fake._guild(guild)
    assert [c["name"] for c in payload["channels"]] == ["general", "chat", "memes"]
    assert len(payload["members"]) == 6 and {m["user"]["id"] for m in payload["members"]} >= {str(fake.app_id)}
    for g in (fake.load_guilds[0], guild, fake.guilds[fake.guild2_id]):
        for c in g.channels:
            assert fake.channel(c.id) is c and fake.guild_of(c.id) is g
    per_shard = collections.Counter((g.id >> 22) % 4 for g in fake.load_guilds)
    assert sorted(per_shard.values()) == [100, 100, 100, 100]


def test_acknowledgements_and_finished_texts_are_timed_by_kind():
    fake = FakeLoad(10).start()
    try:
        fake.commands["generate"] = {"id": "1", "name": "generate"}
        channel = fake.load_guilds[0].channels[0].id
        user = fake.pool[0]

        async def scenario():
            future = await fake.send_slash("generate", "generate", [], user, channel, wait=True)
            await fake.send_message("mention", channel, user, "hello")
            ix = fake.sent_interactions[-1]
            fake._callback(ix.id, ix.token, {"type": 5, "data": {}}, [], time.monotonic())
            fake._edit(ix.original_id, {"content": "half"}, [])
            assert not future.done()  # no result buttons yet
            fake._edit(ix.original_id, {"content": "done", "components": [{"type": 1, "components": [
                {"type": 2, "style": 2, "label": "Info", "custom_id": "improbable:info:5"}]}]}, [])
            mention_id = max(k for k, (kind, _) in fake.sent_at.items() if kind == "mention")
            fake._message(channel, {"content": "reply", "message_reference": {"message_id": str(mention_id)},
                                    "components": [{"type": 1, "components": [
                                        {"type": 2, "style": 2, "label": "Info", "custom_id": "improbable:info:6"}]}]})
            refused = await fake.send_slash("generate", "generate", [], user, channel, wait=True)
            ix = fake.sent_interactions[-1]
            fake._callback(ix.id, ix.token, {"type": 4, "data": {"content": "Slow down", "flags": 64}}, [],
                           time.monotonic())
            assert refused.done() and refused.result() is None  # refused: no text will come
            return await future

        delay = fake.run_on_loop(scenario()).result(5)
        assert delay >= 0
        assert [kind for kind, _ in fake.acks] == ["generate", "generate"]
        assert [kind for kind, _ in fake.finished] == ["generate", "mention"]
        assert [custom_ids(m) for m in fake.results] == [["improbable:info:5"], ["improbable:info:6"]]
        assert fake.unanswered(older_than=0) == {}
    finally:
        fake.stop()
