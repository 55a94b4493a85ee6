"""The fake Discord's multi-server features: a second guild with its own members, roles and overwrites, DMs,
forwards, pin notices and replies, GUILD_DELETE, CDN reads and refused clicks. First through the fake's own
API (its REST routes and a gateway client of our own), then with the real bot process."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request

import aiohttp
import pytest

from .fake_discord import (
    ALL_PERMISSIONS,
    HAS_SNAPSHOT,
    MEMBER_PERMISSIONS,
    SEND_MESSAGES,
    VIEW_CHANNEL,
    ClickRefused,
    CommandUnavailable,
    FakeDiscord,
    custom_ids,
    opt,
)

TIMEOUT = 30


class Gateway:
    """A minimal gateway client: identifies, then keeps every dispatched (event, data) in `events`."""

    def __init__(self, fake: FakeDiscord):
        self.events: list[tuple[str, dict]] = []
        self.cond = threading.Condition()
        self.loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self.loop.run_until_complete, args=(self._run(fake.gateway_url),),
                                        daemon=True)
        self._thread.start()

    async def _run(self, url: str) -> None:
        self._stop = asyncio.Event()
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            await ws.send_str(json.dumps({"op": 2, "d": {"token": "t", "intents": 0, "properties": {}}}))
            reader = asyncio.ensure_future(self._read(ws))
            await self._stop.wait()
            reader.cancel()

    async def _read(self, ws) -> None:
        async for msg in ws:
            data = json.loads(msg.data)
            if data.get("op") == 0:
                with self.cond:
                    self.events.append((data["t"], data["d"]))
                    self.cond.notify_all()

    def wait(self, event: str, predicate=lambda d: True, timeout: float = 10) -> dict:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = [d for t, d in self.events if t == event and predicate(d)]
                if found:
                    return found[-1]
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no {event}; got {[t for t, _ in self.events]}")
                self.cond.wait(0.2)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)


@pytest.fixture
def fake():
    fake = FakeDiscord().start()
    yield fake
    fake.stop()


@pytest.fixture
def gateway(fake):
    client = Gateway(fake)
    client.wait("GUILD_CREATE", lambda d: d["id"] == str(fake.guild2_id))
    yield client
    client.close()


def rest(fake: FakeDiscord, method: str, path: str, body=None) -> tuple[int, object]:
    request = urllib.request.Request(fake.api_base + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def sync_commands(fake: FakeDiscord, commands: list[dict], guild_id: int | None = None) -> None:
    where = f"/guilds/{guild_id}" if guild_id else ""
    status, _ = rest(fake, "PUT", f"/applications/{fake.app_id}{where}/commands", commands)
    assert status == 200


def test_both_guilds_arrive_at_connect_with_their_own_members_roles_and_overwrites(fake, gateway):
    ready = gateway.wait("READY")
    assert {g["id"] for g in ready["guilds"]} == {str(fake.guild_id), str(fake.guild2_id)}
    second = gateway.wait("GUILD_CREATE", lambda d: d["id"] == str(fake.guild2_id))
    members = {m["user"]["username"]: m["roles"] for m in second["members"]}
    assert members == {"dave": [], "erin": [str(fake.mod_role2)], "alice": [], "Improbable": []}
    assert second["owner_id"] == str(fake.dave.id)
    channels = {c["name"]: c for c in second["channels"]}
    assert set(channels) == {"lobby", "readonly", "hidden"} and all(c["guild_id"] == second["id"]
                                                                    for c in channels.values())
    assert channels["readonly"]["permission_overwrites"] == [
        {"id": str(fake.guild2_id), "type": 0, "allow": "0", "deny": str(SEND_MESSAGES)}]
    first = gateway.wait("GUILD_CREATE", lambda d: d["id"] == str(fake.guild_id))
    assert {m["user"]["username"] for m in first["members"]} == {"owner", "alice", "bob", "carol", "Improbable"}


def test_permissions_follow_roles_and_channel_overwrites(fake):
    alice, erin, dave = fake.alice, fake.erin, fake.dave
    assert fake.permissions(alice, fake.channel_id) == MEMBER_PERMISSIONS  # the test guild as before
    assert fake.permissions(alice, fake.lobby_id) == MEMBER_PERMISSIONS
    assert not fake.permissions(alice, fake.readonly_id) & SEND_MESSAGES
    assert fake.permissions(alice, fake.readonly_id) & VIEW_CHANNEL
    assert not fake.permissions(alice, fake.hidden_id) & VIEW_CHANNEL
    assert fake.permissions(erin, fake.hidden_id) & VIEW_CHANNEL  # the moderators' role is allowed
    assert fake.permissions(dave, fake.hidden_id) == ALL_PERMISSIONS  # the owner
    fake.overwrite(fake.lobby_id, alice.id, deny=VIEW_CHANNEL, member=True)
    assert not fake.permissions(alice, fake.lobby_id) & VIEW_CHANNEL
    assert fake.permissions(erin, fake.lobby_id) & VIEW_CHANNEL


def test_interactions_carry_the_guild_and_the_members_permissions_there(fake, gateway):
    sync_commands(fake, [{"name": "generate", "description": "d", "contexts": [0], "integration_types": [0]}])
    ix = fake.slash("generate", [opt("prompt", "x")], user=fake.alice, channel_id=fake.readonly_id)
    payload = gateway.wait("INTERACTION_CREATE", lambda d: d["id"] == str(ix.id))
    assert payload["guild_id"] == str(fake.guild2_id)
    assert not int(payload["member"]["permissions"]) & SEND_MESSAGES
    assert int(payload["channel"]["permissions"]) == fake.permissions(fake.alice, fake.readonly_id)
    assert not int(payload["app_permissions"]) & SEND_MESSAGES  # @everyone's overwrite binds the bot too


def test_commands_only_where_discord_offers_them(fake):
    sync_commands(fake, [{"name": "generate", "description": "d"}], fake.guild_id)
    with pytest.raises(CommandUnavailable, match="synced to guild"):
        fake.slash("generate", [], user=fake.alice, channel_id=fake.lobby_id)
    with pytest.raises(CommandUnavailable):
        fake.slash("generate", [], user=fake.alice, channel_id=fake.dm_channel(fake.alice))
    sync_commands(fake, [{"name": "generate", "description": "d", "contexts": [0]}])  # global, servers only
    assert fake.slash("generate", [], user=fake.alice, channel_id=fake.lobby_id)
    with pytest.raises(CommandUnavailable, match="not allowed in a DM"):
        fake.slash("generate", [], user=fake.alice, channel_id=fake.dm_channel(fake.alice))


def test_bot_posts_are_refused_where_it_may_not_view_or_send(fake):
    assert rest(fake, "POST", f"/channels/{fake.lobby_id}/messages", {"content": "hi"})[0] == 200
    status, body = rest(fake, "POST", f"/channels/{fake.readonly_id}/messages", {"content": "hi"})
    assert (status, body["code"]) == (403, 50013)
    status, body = rest(fake, "POST", f"/channels/{fake.hidden_id}/messages", {"content": "hi"})
    assert (status, body["code"]) == (403, 50001)
    assert not fake.errors  # refusals are Discord's answers, not the fake's complaints


def test_dm_channel_and_its_messages_have_no_guild(fake, gateway):
    status, channel = rest(fake, "POST", "/users/@me/channels", {"recipient_id": str(fake.bob.id)})
    assert status == 200 and channel["type"] == 1 and channel["recipients"][0]["id"] == str(fake.bob.id)
    assert int(channel["id"]) == fake.dm_channel(fake.bob)
    said = fake.say("hello bot", user=fake.bob, channel_id=int(channel["id"]))
    seen = gateway.wait("MESSAGE_CREATE", lambda d: d["id"] == said["id"])
    assert "guild_id" not in seen and "member" not in seen
    assert rest(fake, "POST", f"/channels/{channel['id']}/messages", {"content": "hi"})[0] == 200


def test_forward_pin_and_reply_as_discord_sends_them(fake, gateway):
    original = fake.say("a book, she thought", user=fake.alice, channel_id=fake.channel_id)
    forward = fake.forward(original, user=fake.alice, channel_id=fake.lobby_id)
    seen = gateway.wait("MESSAGE_CREATE", lambda d: d["id"] == forward["id"])
    assert seen["type"] == 0 and seen["content"] == "" and seen["flags"] & HAS_SNAPSHOT
    assert seen["message_reference"] == {"type": 1, "message_id": original["id"], "channel_id": str(fake.channel_id),
                                         "guild_id": str(fake.guild_id)}
    assert "referenced_message" not in seen and seen["guild_id"] == str(fake.guild2_id)
    assert seen["message_snapshots"][0]["message"]["content"] == "a book, she thought"

    notice = fake.pin(original, user=fake.bob)
    seen = gateway.wait("MESSAGE_CREATE", lambda d: d["id"] == notice["id"])
    assert seen["type"] == 6 and seen["content"] == "" and seen["message_reference"]["type"] == 0
    assert seen["message_reference"]["message_id"] == original["id"]
    assert gateway.wait("CHANNEL_PINS_UPDATE")["channel_id"] == str(fake.channel_id)
    assert fake.message(int(original["id"]))["pinned"]

    reply = fake.reply(original, "and then", user=fake.carol)
    seen = gateway.wait("MESSAGE_CREATE", lambda d: d["id"] == reply["id"])
    assert seen["type"] == 19 and seen["message_reference"]["type"] == 0
    assert seen["referenced_message"]["id"] == original["id"]


def test_guild_delete_for_an_outage_and_for_a_removal(fake, gateway):
    fake.remove_guild(fake.guild2_id, unavailable=True)
    assert gateway.wait("GUILD_DELETE") == {"id": str(fake.guild2_id), "unavailable": True}
    assert rest(fake, "POST", f"/channels/{fake.lobby_id}/messages", {"content": "hi"})[0] == 200  # still in it
    fake.restore_guild(fake.guild2_id)
    fake.remove_guild(fake.guild2_id)
    assert gateway.wait("GUILD_DELETE", lambda d: "unavailable" not in d) == {"id": str(fake.guild2_id)}
    assert rest(fake, "POST", f"/channels/{fake.lobby_id}/messages", {"content": "hi"})[0] == 403
    fake.restore_guild(fake.guild2_id)
    assert gateway.wait("GUILD_CREATE", lambda d: d["id"] == str(fake.guild2_id)) and fake.guilds[fake.guild2_id].joined


def test_cdn_reads_are_counted_per_url(fake):
    _, first = fake.attachment("a.txt", b"first")
    _, second = fake.attachment("b.txt", b"second")
    assert fake.cdn_reads(first["url"]) == 0
    for _ in range(2):
        with urllib.request.urlopen(first["url"], timeout=10) as response:
            assert response.read() == b"first"
    assert fake.cdn_reads(first["url"]) == 2 and fake.cdn_reads(second["url"]) == 0


def test_a_click_on_a_custom_id_the_message_lacks_is_refused(fake, gateway):
    button = {"type": 2, "style": 1, "label": "Again", "custom_id": "improbable:regen:1:2"}
    status, msg = rest(fake, "POST", f"/channels/{fake.channel_id}/messages",
                       {"content": "text", "components": [{"type": 1, "components": [button]}]})
    assert status == 200
    with pytest.raises(ClickRefused) as refused:
        fake.click(msg, "improbable:del:1", user=fake.alice)
    assert refused.value.code == 50035 and fake.refused_clicks == [refused.value]
    clicked = fake.click(msg, "improbable:regen:1:2", user=fake.alice)
    seen = gateway.wait("INTERACTION_CREATE")
    assert seen["id"] == str(clicked.id)  # the refused click never reached the gateway
    assert [t for t, _ in gateway.events].count("INTERACTION_CREATE") == 1


# -- with the real bot ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_synced_commands_are_guild_installs_used_in_servers_only(e2e):
    commands = e2e.fake.commands
    assert commands
    for name, command in commands.items():
        assert command["integration_types"] == [0], name
        assert command["contexts"] == [0], name


@pytest.mark.slow
def test_bot_takes_forwards_pins_and_replies_and_answers_in_the_second_guild(e2e):
    """Each message shape reaches the bot; discord.py parses it without dropping the connection, and the bot
    still answers a mention, in the second guild's channel."""
    fake = e2e.fake
    original = fake.say("Curiouser and curiouser", user=fake.alice, channel_id=fake.lobby_id)
    fake.forward(original, user=fake.dave, channel_id=fake.lobby_id)
    fake.pin(original, user=fake.dave)
    fake.reply(original, "said Alice", user=fake.erin)
    said = fake.say(f"<@{fake.app_id}> alice: The Queen", user=fake.erin, channel_id=fake.lobby_id,
                    mention_bot=True)

    def answer():
        for m in fake.channel_messages(fake.lobby_id):
            if (m.get("message_reference") or {}).get("message_id") == said["id"] and custom_ids(m):
                return m
        return None

    reply = fake.wait_for(answer, TIMEOUT, "the bot's answer in the second guild")
    assert "**The Queen**" in reply["content"] and reply["guild_id"] == str(fake.guild2_id)


@pytest.mark.slow
def test_bot_result_refuses_a_click_on_a_foreign_button(e2e):
    fake = e2e.fake
    ix = fake.slash("generate", [opt("persona", "alice"), opt("prompt", "Alice"), opt("length", 20)],
                    user=fake.bob)
    msg = fake.wait_for(lambda: (m := fake.message(ix.original_id)) and ix.state != "loading" and custom_ids(m)
                        and m, TIMEOUT, "the result with buttons")
    gid = custom_ids(msg)[0].split(":")[2]
    foreign = f"improbable:del:{int(gid) + 1}"  # another generation's delete button
    before = len(fake.interactions)
    with pytest.raises(ClickRefused):
        fake.click(msg, foreign, user=fake.bob)
    assert len(fake.interactions) == before and fake.message(int(msg["id"])) is not None
