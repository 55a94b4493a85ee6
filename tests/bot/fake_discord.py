"""A small fake Discord for end-to-end tests of the real bot process: REST routes + a websocket gateway.

It runs an aiohttp server in a background thread; tests drive it synchronously:

    fake = FakeDiscord().start()
    ix = fake.slash("generate", [opt("persona", "alice"), opt("prompt", "Alice")], user=fake.alice)
    msg = fake.wait_for(lambda: ix.final_message(), timeout=20)

What it enforces (what real Discord does and discord.py does not check):
- the first response to an interaction within 3 s of its dispatch (else 10062 Unknown interaction),
- a single acknowledgement (else 40060 Interaction has already been acknowledged),
- webhook calls only after the acknowledgement,
- every route it does not know is answered 404 and recorded in `errors` (the fixture fails the test),
- with `rate_limit` set (requests a second, Discord's global limit is 50), at most that many requests in any
  second, interaction callbacks aside; more are answered 429 with Retry-After and `global`, as Discord does,
  and counted in `rate_limited`.

It models the first follow-up after a "thinking" defer editing the loading message, ephemeral flags,
attachments (multipart `payload_json` + `files[n]`) and message edits, and records every request with its
time so tests can assert on payloads (allowed_mentions) and timing (edits ≥ 1 s apart).

Two guilds (`guilds`): the test guild (`guild_id`, users owner/alice/bob/carol, channels `channel_id` and
`other_channel_id`) and a second one (`guild2_id`: owner dave, moderator erin, alice; channels `lobby_id`,
`readonly_id` where @everyone may not send, `hidden_id` only moderators may view). `permissions(user, channel)`
applies roles and overwrites as Discord does; interactions carry the result, and a bot post where the bot may
not view or send is answered 403. Also: DM channels (`dm_channel`), forwards (`forward`), pin notices (`pin`),
replies (`reply`), GUILD_DELETE/GUILD_CREATE (`remove_guild`, `restore_guild`), CDN reads per URL
(`cdn_reads`), clicks on a custom_id the message does not carry refused (`ClickRefused`), and slash commands
only where their sync target and `contexts` allow them (`CommandUnavailable`).

Sharding (`FakeDiscord(shards=n)`): GET /gateway/bot recommends `n` shards; a session that IDENTIFYs with
`shard: [id, count]` gets READY and GUILD_CREATE only for the guilds with `(guild_id >> 22) % count == id`, and
every event of a guild (messages, interactions, reactions, channel and guild events) goes to the session of
the guild's shard, a DM's to shard 0 (`delivered` records which shard got what). A session without `shard` is
shard [0, 1]: it gets everything, as before. The two guilds are on different shards of 2. `sync_delay`: seconds
a command sync (PUT …/commands) takes.

Payload builders live in one place (`_user`, `_member`, `_message`, `_interaction`): a missing required field
kills the whole discord.py client, not just a handler.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web

from tests.bot.fake_webhooks import Webhooks

DISCORD_EPOCH_MS = 1420070400000
API = "/api/v10"
INTENTS_EXPECTED = 53608189  # default intents + MESSAGE_CONTENT
ACK_WINDOW = 3.0
EPHEMERAL = 64
MANAGE_GUILD = 1 << 5
ADMINISTRATOR = 1 << 3
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
MEMBER_PERMISSIONS = VIEW_CHANNEL | SEND_MESSAGES | (1 << 14) | (1 << 15) | (1 << 16) | (1 << 31)  # ..., embed, attach
ALL_PERMISSIONS = (1 << 51) - 1
HAS_SNAPSHOT = 1 << 14  # message flag of a forward
DM, TEXT = 1, 0  # channel types


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def _json(data: Any, status: int = 200) -> web.Response:
    # discord.py compares Content-Type for equality: exactly application/json
    return web.Response(status=status, body=json.dumps(data).encode(), content_type="application/json")


@dataclass
class Recorded:
    method: str
    path: str
    query: dict
    json: Any
    files: list[tuple[str, bytes]]
    at: float
    status: int = 200


@dataclass
class Interaction:
    id: int
    token: str
    type: int
    user_id: int
    channel_id: int
    dispatched: float
    message_id: int | None = None  # components: the message the button is on
    acks: list[tuple[int, float]] = field(default_factory=list)  # (callback type, time)
    original_id: int | None = None
    state: str = "none"  # none | loading | sent | deleted | update
    ephemeral: bool = False
    followups: list[int] = field(default_factory=list)
    autocomplete: list | None = None

    @property
    def acked(self) -> bool:
        return bool(self.acks)


@dataclass
class User:
    id: int
    name: str
    roles: tuple[int, ...] = ()
    permissions: int = MEMBER_PERMISSIONS
    bot: bool = False  # another bot's account (its messages are a bot's)


@dataclass
class Role:
    id: int
    name: str
    permissions: int
    position: int = 0


@dataclass
class Channel:
    id: int
    name: str
    guild_id: int | None  # None: a DM
    type: int = TEXT
    # Discord's overwrite objects: {"id", "type": 0 role | 1 member, "allow": str, "deny": str}
    overwrites: list[dict] = field(default_factory=list)
    recipient: int | None = None  # a DM's other user


@dataclass
class Guild:
    id: int
    name: str
    owner: User
    roles: list[Role]  # the first is @everyone (its id is the guild's)
    channels: list[Channel]
    members: dict[int, tuple[int, ...]]  # user id -> role ids besides @everyone
    primary: bool = False  # the first guild: members' roles and permissions are their User's, as before
    joined: bool = True  # the bot is in it (GUILD_CREATE at connect)


class ClickRefused(Exception):
    """A component click Discord refuses (the custom_id is not on the message): never dispatched."""

    def __init__(self, custom_id: str, message_id: int, on_message: list[str]):
        super().__init__(f"400 Invalid Form Body (50035): custom_id {custom_id!r} is not on message {message_id} "
                         f"(its components: {on_message})")
        self.status, self.code, self.custom_id = 400, 50035, custom_id


class CommandUnavailable(Exception):
    """A slash command Discord would not offer there (synced to another guild, or not allowed in DMs)."""


def guild_shard(guild_id: int | None, shard_count: int) -> int:
    """Discord's routing of a guild's events to a shard (written here as Discord documents it, not taken from
    the project's core.shards, so the fake checks the bot rather than agreeing with it); DMs: shard 0."""
    return 0 if guild_id is None else (guild_id >> 22) % shard_count


class FakeDiscord(Webhooks):
    host = "127.0.0.1"  # where it listens and what its URLs name (the Docker smoke test: the bridge's address)

    def __init__(self, shards: int = 1) -> None:
        self.shard_count = shards  # what GET /gateway/bot recommends
        self.sync_delay = 0.0  # seconds a command sync takes (a wider window for two processes syncing at once)
        self._ids = itertools.count(1)
        self.app_id = self.snowflake()
        self.bot_user = User(self.app_id, "Improbable")
        self.guild_id = self.snowflake()
        self.trainer_role = self.snowflake()
        self.channel_id = self.snowflake()
        self.other_channel_id = self.snowflake()
        self.owner = User(self.snowflake(), "owner", permissions=MEMBER_PERMISSIONS | MANAGE_GUILD)
        self.alice = User(self.snowflake(), "alice")
        self.bob = User(self.snowflake(), "bob")
        self.carol = User(self.snowflake(), "carol")
        self.users = {u.id: u for u in (self.owner, self.alice, self.bob, self.carol)}
        self.guilds: dict[int, Guild] = {}
        self.cdn_hits: dict[str, int] = {}  # CDN URL -> times it was read
        self.refused_clicks: list[ClickRefused] = []
        self._add_guilds()
        self.requests: list[Recorded] = []
        self.errors: list[str] = []
        self.interactions: dict[int, Interaction] = {}
        self.by_token: dict[str, Interaction] = {}
        self.messages: dict[int, dict] = {}
        self.edits: dict[int, list[float]] = {}  # message id -> times it was edited
        self.files: dict[int, list[tuple[str, bytes]]] = {}  # message id -> attachments' bytes
        self.reacted: dict[int, dict[str, list[int]]] = {}  # message id -> emoji (name or id) -> user ids
        self.cdn: dict[str, bytes] = {}
        self.channel_webhooks: dict[int, dict] = {}  # webhook id -> record (tests/bot/fake_webhooks.py)
        self._dms: dict[int, Channel] = {}
        self.commands: dict[str, dict] = {}
        self.history_reads = 0  # GET /channels/{id}/messages answered (channel history read by the bot)
        self.application_flags = 1 << 19  # READY's application flags: the Message Content intent (limited)
        self.identify: dict | None = None  # the last IDENTIFY
        self.identifies: dict[tuple[int, int], dict] = {}  # (shard id, count) -> its last IDENTIFY
        self.delivered: list[tuple[int, str, int | None]] = []  # (shard id, event, guild id) per event sent
        self.cond = threading.Condition()
        self._ws: set[web.WebSocketResponse] = set()
        self._shards: dict[web.WebSocketResponse, tuple[int, int]] = {}  # a session's shard (id, count)
        self._seq: dict[web.WebSocketResponse, int] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port = 0
        self.rate_limit = 0  # requests a second across all routes, as Discord's global limit (0: none)
        self.rate_limited = 0  # requests answered 429 for it
        self._recent: collections.deque[float] = collections.deque()  # times of the last second's requests

    def _add_guilds(self) -> None:
        """The test guild (as before), and a second one: its owner dave, erin (a moderator) and alice (in both),
        with channels `lobby` (open), `readonly` (@everyone may not send) and `hidden` (@everyone may not
        view it; moderators may)."""
        gid = self.guild_id
        self.guilds[gid] = Guild(
            gid, "Test Guild", self.owner,
            [Role(gid, "@everyone", MEMBER_PERMISSIONS), Role(self.trainer_role, "trainer", MEMBER_PERMISSIONS, 1)],
            [Channel(self.channel_id, "general", gid), Channel(self.other_channel_id, "posts", gid)],
            {u.id: () for u in (self.owner, self.alice, self.bob, self.carol, self.bot_user)}, primary=True)
        self.guild2_id = g2 = self.snowflake()
        if guild_shard(g2, 2) == guild_shard(gid, 2):  # the next millisecond's id: the other shard of 2
            self.guild2_id = g2 = g2 + (1 << 22)
        self.mod_role2 = self.snowflake()
        self.lobby_id, self.readonly_id, self.hidden_id = self.snowflake(), self.snowflake(), self.snowflake()
        self.dave = User(self.snowflake(), "dave")
        self.erin = User(self.snowflake(), "erin")
        self.users.update({self.dave.id: self.dave, self.erin.id: self.erin})
        deny_send = {"id": str(g2), "type": 0, "allow": "0", "deny": str(SEND_MESSAGES)}
        deny_view = {"id": str(g2), "type": 0, "allow": "0", "deny": str(VIEW_CHANNEL)}
        mods_view = {"id": str(self.mod_role2), "type": 0, "allow": str(VIEW_CHANNEL), "deny": "0"}
        self.guilds[g2] = Guild(
            g2, "Second Guild", self.dave,
            [Role(g2, "@everyone", MEMBER_PERMISSIONS), Role(self.mod_role2, "mods", MANAGE_GUILD, 1)],
            [Channel(self.lobby_id, "lobby", g2), Channel(self.readonly_id, "readonly", g2, overwrites=[deny_send]),
             Channel(self.hidden_id, "hidden", g2, overwrites=[deny_view, mods_view])],
            {self.dave.id: (), self.erin.id: (self.mod_role2,), self.alice.id: (), self.bot_user.id: ()})

    # -- guilds, channels and permissions ------------------------------------------------------------------

    def channel(self, channel_id: int) -> Channel:
        """The channel with this id; an id the fake does not know is a text channel of the test guild."""
        for guild in self.guilds.values():
            for channel in guild.channels:
                if channel.id == channel_id:
                    return channel
        return self._dms.get(channel_id) or Channel(channel_id, "general", self.guild_id)

    def guild_of(self, channel_id: int) -> Guild | None:
        """The guild a channel belongs to; None for a DM."""
        gid = self.channel(channel_id).guild_id
        return None if gid is None else self.guilds[gid]

    def member_roles(self, guild: Guild, user: User) -> tuple[int, ...]:
        return user.roles if guild.primary else guild.members.get(user.id, ())

    def permissions(self, user: User, channel_id: int) -> int:
        """Discord's computation: @everyone and the member's roles, then the channel's overwrites (@everyone,
        the roles together, the member). In the test guild the base is the User's `permissions`."""
        channel = self.channel(channel_id)
        if channel.guild_id is None:
            return MEMBER_PERMISSIONS
        guild = self.guilds[channel.guild_id]
        roles = self.member_roles(guild, user)
        if guild.primary:
            base = user.permissions
        elif user.id == guild.owner.id:
            return ALL_PERMISSIONS
        else:
            base = 0
            for role in guild.roles:
                if role.id == guild.id or role.id in roles:
                    base |= role.permissions
        if base & ADMINISTRATOR:
            return ALL_PERMISSIONS
        by_id = {int(o["id"]): o for o in channel.overwrites}
        role_allow = role_deny = 0
        for rid in roles:
            if rid in by_id and by_id[rid]["type"] == 0:
                role_allow, role_deny = role_allow | int(by_id[rid]["allow"]), role_deny | int(by_id[rid]["deny"])
        steps = [by_id.get(guild.id), {"allow": role_allow, "deny": role_deny}, by_id.get(user.id)]
        for overwrite in steps:
            if overwrite is not None:
                base = (base & ~int(overwrite["deny"])) | int(overwrite["allow"])
        return base

    def overwrite(self, channel_id: int, target_id: int, *, allow: int = 0, deny: int = 0,
                  member: bool = False) -> None:
        """Set a channel's permission overwrite for a role (or a member) and tell the bot (CHANNEL_UPDATE)."""
        channel = self.channel(channel_id)
        with self.cond:
            channel.overwrites = [o for o in channel.overwrites if int(o["id"]) != target_id]
            channel.overwrites.append({"id": str(target_id), "type": 1 if member else 0, "allow": str(allow),
                                       "deny": str(deny)})
        self.dispatch("CHANNEL_UPDATE", self._channel(channel_id))

    def add_channel(self, guild_id: int, name: str, overwrites: list[dict] | None = None) -> int:
        """A new text channel in a guild, with these overwrites (Discord's objects), told to the bot
        (CHANNEL_CREATE): a test that needs its own permissions leaves the shared channels alone."""
        channel = Channel(self.snowflake(), name, guild_id, overwrites=list(overwrites or []))
        with self.cond:
            self.guilds[guild_id].channels.append(channel)
        self.dispatch("CHANNEL_CREATE", self._channel(channel.id))
        return channel.id

    def dm_channel(self, user: User) -> int:
        """The DM channel between the bot and `user` (created on first use)."""
        with self.cond:
            for channel in self._dms.values():
                if channel.recipient == user.id:
                    return channel.id
            channel = Channel(self.snowflake(), "", None, DM, recipient=user.id)
            self._dms[channel.id] = channel
            return channel.id

    def remove_guild(self, guild_id: int, *, unavailable: bool = False) -> None:
        """GUILD_DELETE: an outage (`unavailable: true`; the bot stays in the guild) or the bot removed."""
        guild = self.guilds[guild_id]
        if not unavailable:
            guild.joined = False
        self.dispatch("GUILD_DELETE", {"id": str(guild_id), "unavailable": True} if unavailable
                      else {"id": str(guild_id)})

    def restore_guild(self, guild_id: int) -> None:
        """GUILD_CREATE: the guild is available again (`unavailable: false`), or the bot was added back after
        a removal (a join: Discord leaves `unavailable` out, and discord.py calls on_guild_join)."""
        guild = self.guilds[guild_id]
        rejoined, guild.joined = not guild.joined, True
        data = self._guild(guild)
        if rejoined:
            del data["unavailable"]
        self.dispatch("GUILD_CREATE", data)

    # -- ids and payloads ----------------------------------------------------------------------------------

    def snowflake(self) -> int:
        return ((int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22) | (next(self._ids) & 0x3FFFFF)

    def _user(self, user: User) -> dict:
        return {"id": str(user.id), "username": user.name, "discriminator": "0", "global_name": user.name,
                "avatar": None, "bot": user.id == self.app_id or user.bot, "public_flags": 0}

    def _member(self, user: User, with_user: bool = True, guild: Guild | None = None) -> dict:
        roles = self.member_roles(guild or self.guilds[self.guild_id], user)
        data = {"roles": [str(r) for r in roles], "joined_at": "2024-01-01T00:00:00+00:00", "deaf": False,
                "mute": False, "flags": 0, "nick": None, "avatar": None, "pending": False,
                "communication_disabled_until": None, "premium_since": None}
        if with_user:
            data["user"] = self._user(user)
        return data

    def _channel(self, channel_id: int) -> dict:
        channel = self.channel(channel_id)
        if channel.guild_id is None:
            return {"id": str(channel_id), "type": DM, "last_message_id": None, "flags": 0,
                    "recipients": [self._user(self.users[channel.recipient])]}
        return {"id": str(channel_id), "type": channel.type, "name": channel.name, "position": 0,
                "guild_id": str(channel.guild_id), "permission_overwrites": copy.deepcopy(channel.overwrites),
                "nsfw": False, "parent_id": None, "topic": None, "last_message_id": None, "rate_limit_per_user": 0}

    def _guild(self, guild: Guild | None = None) -> dict:
        guild = guild or self.guilds[self.guild_id]
        roles = [{"id": str(r.id), "name": r.name, "permissions": str(r.permissions), "position": r.position,
                  "color": 0, "hoist": False, "managed": False, "mentionable": False, "flags": 0} for r in guild.roles]
        members = [self.users.get(uid, self.bot_user) for uid in guild.members]
        return {"id": str(guild.id), "name": guild.name, "icon": None, "owner_id": str(guild.owner.id),
                "roles": roles, "emojis": [], "stickers": [], "features": [], "member_count": len(members),
                "channels": [self._channel(c.id) for c in guild.channels],
                "threads": [], "members": [self._member(u, guild=guild) for u in members],
                "voice_states": [], "presences": [], "large": False, "unavailable": False,
                "verification_level": 0, "default_message_notifications": 0, "explicit_content_filter": 0,
                "mfa_level": 0, "premium_tier": 0, "system_channel_flags": 0, "preferred_locale": "en-US",
                "nsfw_level": 0, "stage_instances": [], "guild_scheduled_events": [], "soundboard_sounds": [],
                "joined_at": "2024-01-01T00:00:00+00:00", "afk_timeout": 300}

    def _message(self, channel_id: int, payload: dict, *, author: User | None = None, flags: int = 0,
                 message_id: int | None = None, webhook: bool = False) -> dict:
        author = author or self.bot_user
        guild = self.guild_of(channel_id)
        msg = {"id": str(message_id or self.snowflake()), "channel_id": str(channel_id), "author": self._user(author),
               "content": payload.get("content") or "",
               "timestamp": _now_iso(), "edited_timestamp": None, "tts": False, "mention_everyone": False,
               "mentions": [], "mention_roles": [], "attachments": [], "embeds": payload.get("embeds") or [],
               "pinned": False, "type": 0, "flags": flags, "components": payload.get("components") or []}
        if guild is not None:
            msg["guild_id"] = str(guild.id)
        if webhook:
            msg["webhook_id"] = str(self.app_id)
            msg["application_id"] = str(self.app_id)
        ref = payload.get("message_reference")
        if ref:
            msg["type"] = 19
            msg["message_reference"] = self._reference(self.messages.get(int(ref["message_id"]))
                                                       or {"id": ref["message_id"], "channel_id": channel_id})
            if int(ref["message_id"]) in self.messages:
                msg["referenced_message"] = copy.deepcopy(self.messages[int(ref["message_id"])])
                msg["referenced_message"].pop("referenced_message", None)  # one level, as Discord sends it
        return msg

    def _reference(self, message: dict, kind: int = 0) -> dict:
        """A message_reference to `message`: type 0 a reply (or a pin notice's pinned message), 1 a forward."""
        ref = {"type": kind, "message_id": str(message["id"]), "channel_id": str(message["channel_id"])}
        guild = self.guild_of(int(message["channel_id"]))
        if guild is not None:
            ref["guild_id"] = str(guild.id)
        return ref

    # -- the server ----------------------------------------------------------------------------------------

    def start(self) -> FakeDiscord:
        ready = threading.Event()

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            app = web.Application(client_max_size=64 * 2**20)
            app.router.add_route("GET", "/gateway", self._gateway)
            app.router.add_route("GET", "/cdn/{name}", self._cdn)
            app.router.add_route("*", "/{tail:.*}", self._rest)
            self._runner = web.AppRunner(app, access_log=None)
            self.loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, self.host, 0)
            self.loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]
            ready.set()
            self.loop.run_forever()
            self.loop.run_until_complete(self._runner.cleanup())
            self.loop.close()

        self._thread = threading.Thread(target=run, name="fake-discord", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self.loop is not None:
            async def close_all():
                for ws in list(self._ws):
                    await ws.close()
            asyncio.run_coroutine_threadsafe(close_all(), self.loop).result(5)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)

    @property
    def api_base(self) -> str:
        return f"http://{self.host}:{self.port}{API}"

    @property
    def gateway_url(self) -> str:
        return f"ws://{self.host}:{self.port}/gateway"

    def env(self) -> dict[str, str]:
        return {"DISCORD_TOKEN": "fake-token", "DISCORD_API_BASE": self.api_base,
                "DISCORD_GATEWAY_URL": self.gateway_url, "DISCORD_SYNC_GUILD": str(self.guild_id)}

    def _record(self, rec: Recorded) -> None:
        with self.cond:
            self.requests.append(rec)
            self.cond.notify_all()

    def _error(self, text: str) -> None:
        with self.cond:
            self.errors.append(text)
            self.cond.notify_all()

    # -- gateway -------------------------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._ws.add(ws)
        await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}, "s": None, "t": None}))
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                op = data.get("op")
                if op == 1:  # acknowledged a moment later: discord.py notes the send time after sending
                    asyncio.get_running_loop().call_later(0.05, self._ack, ws)
                elif op == 2:
                    await self._identified(ws, data["d"])
                elif op == 6:  # the session's shard is in its id (see _identified)
                    _, _, shard = str(data["d"].get("session_id", "")).partition("fake-session-")
                    if shard:
                        self._shards[ws] = tuple(int(n) for n in shard.split("-"))
                    await self._send(ws, "RESUMED", {})
        finally:
            self._ws.discard(ws)
            self._shards.pop(ws, None)
            self._seq.pop(ws, None)
        return ws

    async def _identified(self, ws: web.WebSocketResponse, identify: dict) -> None:
        """READY and a GUILD_CREATE per guild of the session's shard (IDENTIFY's `shard`, else [0, 1]); an
        invalid shard is closed with 4010, as Discord does."""
        shard_id, count = identify.get("shard") or (0, 1)
        if not 0 <= shard_id < count:
            self._error(f"IDENTIFY with an invalid shard {[shard_id, count]}")
            await ws.close(code=4010, message=b"Invalid shard")
            return
        with self.cond:
            self.identify = self.identifies[(shard_id, count)] = identify
            self._shards[ws], self._seq[ws] = (shard_id, count), 0
            self.cond.notify_all()
        joined = [g for g in self.guilds.values() if g.joined and guild_shard(g.id, count) == shard_id]
        await self._send(ws, "READY", {
            "v": 10, "user": self._user(self.bot_user),
            "guilds": [{"id": str(g.id), "unavailable": True} for g in joined],
            "session_id": f"fake-session-{shard_id}-{count}", "resume_gateway_url": self.gateway_url,
            # GATEWAY_MESSAGE_CONTENT_LIMITED: the intent switched on for an app in < 100 servers
            "application": {"id": str(self.app_id), "flags": self.application_flags}, "shard": [shard_id, count],
            "private_channels": [], "relationships": []})
        for guild in joined:
            await self._send(ws, "GUILD_CREATE", self._guild(guild))

    def shards_connected(self) -> list[tuple[int, int]]:
        """The (shard id, count) of every session that has identified, sorted."""
        with self.cond:
            return sorted(self._shards.values())

    def _ack(self, ws: web.WebSocketResponse) -> None:
        if not ws.closed:
            asyncio.ensure_future(ws.send_str(json.dumps({"op": 11, "d": None, "s": None, "t": None})))

    async def _send(self, ws: web.WebSocketResponse, event: str, data: dict) -> None:
        self._seq[ws] = seq = self._seq.get(ws, 0) + 1
        await ws.send_str(json.dumps({"op": 0, "t": event, "s": seq, "d": data}))

    async def _dispatch(self, event: str, data: dict) -> None:
        """Send an event to the session of its guild's shard (a DM's: shard 0); a session that has not
        identified yet gets everything."""
        gid = data.get("id") if event in ("GUILD_CREATE", "GUILD_UPDATE", "GUILD_DELETE") else data.get("guild_id")
        gid = None if gid is None else int(gid)
        for ws in list(self._ws):
            shard_id, count = self._shards.get(ws, (0, 1))
            if guild_shard(gid, count) == shard_id:
                with self.cond:
                    self.delivered.append((shard_id, event, gid))
                await self._send(ws, event, data)

    def dispatch(self, event: str, data: dict, before=None) -> None:
        """Send a gateway event from the test thread (`before()` runs on the fake's loop first)."""
        async def go():
            if before is not None:
                before()
            await self._dispatch(event, data)
        asyncio.run_coroutine_threadsafe(go(), self.loop).result(5)

    def wait_identified(self, timeout: float = 20) -> dict:
        return self.wait_for(lambda: self.identify and self.commands and self.identify, timeout, "IDENTIFY")

    # -- test-side actions ---------------------------------------------------------------------------------

    def _new_interaction(self, kind: int, user: User, channel_id: int, message_id: int | None = None) -> Interaction:
        ix = Interaction(self.snowflake(), f"tok-{next(self._ids)}-{int(time.time() * 1000)}", kind, user.id,
                         channel_id, 0.0, message_id=message_id)
        return ix

    def _interaction_payload(self, ix: Interaction, user: User, data: dict) -> dict:
        guild = self.guild_of(ix.channel_id)
        perms = str(self.permissions(user, ix.channel_id))
        payload = {"id": str(ix.id), "application_id": str(self.app_id), "type": ix.type, "token": ix.token,
                   "version": 1, "channel_id": str(ix.channel_id),
                   "channel": {**self._channel(ix.channel_id), "permissions": perms},
                   "app_permissions": str(self.permissions(self.bot_user, ix.channel_id)), "locale": "en-US",
                   "entitlements": [], "attachment_size_limit": 26214400, "data": data}
        if guild is None:  # a DM: the user, no member; the app is a guild install, so a guild owns it
            return {**payload, "user": self._user(user), "context": 1, "authorizing_integration_owners": {}}
        return {**payload, "guild_id": str(guild.id), "guild_locale": "en-US", "context": 0,
                "member": {**self._member(user, guild=guild), "permissions": perms},
                "authorizing_integration_owners": {"0": str(guild.id)}}

    def _send_interaction(self, ix: Interaction, payload: dict) -> Interaction:
        def register():
            ix.dispatched = time.monotonic()
            with self.cond:
                self.interactions[ix.id] = ix
                self.by_token[ix.token] = ix

        self.dispatch("INTERACTION_CREATE", payload, before=register)
        return ix

    def slash(self, command: str, options: list[dict] | None = None, *, user: User | None = None,
              channel_id: int | None = None, resolved: dict | None = None, autocomplete: bool = False) -> Interaction:
        """A slash command: `command` is 'generate' or 'persona create' (group + subcommand)."""
        user = user or self.alice
        top, _, sub = command.partition(" ")
        registered = self.commands.get(top)
        if registered is None:
            raise AssertionError(f"/{top} was not synced; synced: {sorted(self.commands)}")
        channel_id = channel_id or self.channel_id
        self._check_available(registered, channel_id)
        options = options or []
        if sub:
            options = [{"name": sub, "type": 1, "options": options}]
        data = {"id": registered["id"], "name": top, "type": 1, "options": options}
        if registered.get("guild_id"):
            data["guild_id"] = registered["guild_id"]
        if resolved:
            data["resolved"] = resolved
        ix = self._new_interaction(4 if autocomplete else 2, user, channel_id)
        return self._send_interaction(ix, self._interaction_payload(ix, user, data))

    def _check_available(self, command: dict, channel_id: int) -> None:
        """CommandUnavailable where Discord would not offer the command: a guild command in another guild or
        a DM, a command whose `contexts` leave out this kind of channel."""
        guild = self.guild_of(channel_id)
        where = "a DM" if guild is None else f"guild {guild.id}"
        if command.get("guild_id") and (guild is None or int(command["guild_id"]) != guild.id):
            raise CommandUnavailable(f"/{command['name']} is synced to guild {command['guild_id']}, not {where}")
        contexts = command.get("contexts")
        if contexts is not None and (1 if guild is None else 0) not in contexts:
            raise CommandUnavailable(f"/{command['name']} is not allowed in {where} (contexts {contexts})")

    def click(self, message: dict, custom_id: str, *, user: User | None = None, force: bool = False) -> Interaction:
        """A button click. Discord refuses a custom_id that is not on the message as it is now (ClickRefused,
        and nothing reaches the bot). `force`: dispatched anyway, with the message as the bot is shown it
        carrying that button (a message whose buttons name another message's generation), which the bot
        itself must refuse."""
        user = user or self.alice
        with self.cond:
            current = self.messages.get(int(message["id"]), message)
            on_message = custom_ids(current)
            if custom_id not in on_message and not force:
                refused = ClickRefused(custom_id, int(message["id"]), on_message)
                self.refused_clicks.append(refused)
                raise refused
        if force and custom_id not in on_message:
            message = {**copy.deepcopy(message), "components": [{"type": 1, "components": [
                {"type": 2, "style": 2, "label": "Forged", "custom_id": custom_id, "disabled": False}]}]}
        channel_id = int(message["channel_id"])
        ix = self._new_interaction(3, user, channel_id, message_id=int(message["id"]))
        payload = self._interaction_payload(ix, user, {"custom_id": custom_id, "component_type": 2})
        payload["message"] = message
        return self._send_interaction(ix, payload)

    def say(self, content: str, *, user: User | None = None, channel_id: int | None = None,
            reply_to: dict | None = None, mention_bot: bool = False) -> dict:
        """A user's message (MESSAGE_CREATE)."""
        user = user or self.alice
        msg = self._user_message(user, channel_id or self.channel_id, content)
        if mention_bot:
            guild = self.guild_of(int(msg["channel_id"]))
            mention = self._user(self.bot_user)
            if guild is not None:
                mention["member"] = self._member(self.bot_user, False, guild)
            msg["mentions"] = [mention]
        if reply_to is not None:
            msg["type"] = 19
            msg["message_reference"] = self._reference(reply_to)
            msg["referenced_message"] = reply_to
        return self._post(msg)

    def _user_message(self, user: User, channel_id: int, content: str) -> dict:
        msg = self._message(channel_id, {"content": content}, author=user)
        guild = self.guild_of(channel_id)
        if guild is not None:
            msg["member"] = self._member(user, with_user=False, guild=guild)
        return msg

    def seed_history(self, channel_id: int, user: User, content: str) -> dict:
        """A message written earlier in a channel: in its history (GET /channels/{id}/messages), never dispatched."""
        msg = self._user_message(user, channel_id, content)
        with self.cond:
            self.messages[int(msg["id"])] = msg
        return msg

    def resolved_channels(self, user: User, *channel_ids: int) -> dict:
        """`resolved.channels` of a command's channel options, as Discord sends it: each channel with the invoking
        member's permissions there."""
        return {str(cid): {**self._channel(cid), "permissions": str(self.permissions(user, cid))}
                for cid in channel_ids}

    def _post(self, msg: dict) -> dict:
        with self.cond:
            self.messages[int(msg["id"])] = msg
        self.dispatch("MESSAGE_CREATE", msg)
        return msg

    def reply(self, message: dict, content: str, *, user: User | None = None) -> dict:
        """A user's reply (type 19, message_reference type 0, the referenced message included)."""
        return self.say(content, user=user, channel_id=int(message["channel_id"]), reply_to=message)

    def forward(self, message: dict, *, user: User | None = None, channel_id: int | None = None) -> dict:
        """A user forwards `message` (MESSAGE_CREATE): type 0, empty content, message_reference type 1 to the
        original, no referenced_message; the original's content is in message_snapshots."""
        msg = self._user_message(user or self.alice, channel_id or self.channel_id, "")
        msg["flags"] = HAS_SNAPSHOT
        msg["message_reference"] = self._reference(message, kind=1)
        snapshot = {key: copy.deepcopy(message.get(key, default)) for key, default in (
            ("type", 0), ("content", ""), ("embeds", []), ("attachments", []), ("timestamp", _now_iso()),
            ("edited_timestamp", None), ("flags", 0), ("mentions", []), ("mention_roles", []),
            ("components", []))}
        msg["message_snapshots"] = [{"message": snapshot}]
        return self._post(msg)

    def pin(self, message: dict, *, user: User | None = None) -> dict:
        """A user pins `message`: it is marked pinned, CHANNEL_PINS_UPDATE is dispatched and the system notice
        (type 6, empty content, message_reference type 0 to the pinned message) is posted."""
        channel_id = int(message["channel_id"])
        with self.cond:
            if int(message["id"]) in self.messages:
                self.messages[int(message["id"])]["pinned"] = True
        guild = self.guild_of(channel_id)
        pins = {"channel_id": str(channel_id), "last_pin_timestamp": _now_iso()}
        if guild is not None:
            pins["guild_id"] = str(guild.id)
        self.dispatch("CHANNEL_PINS_UPDATE", pins)
        notice = self._user_message(user or self.alice, channel_id, "")
        notice["type"] = 6
        notice["message_reference"] = self._reference(message)
        return self._post(notice)

    @staticmethod
    def _emoji(emoji: str | tuple[str, int]) -> dict:
        """Discord's emoji object: a Unicode emoji (`id` null) or a custom one given as (name, id)."""
        if isinstance(emoji, tuple):
            return {"id": str(emoji[1]), "name": emoji[0], "animated": False}
        return {"id": None, "name": emoji}

    def _reaction_event(self, message: dict, emoji: str | tuple[str, int], user: User) -> dict:
        channel_id = int(message["channel_id"])
        data = {"user_id": str(user.id), "channel_id": str(channel_id), "message_id": str(message["id"]),
                "emoji": self._emoji(emoji), "burst": False, "type": 0}
        guild = self.guild_of(channel_id)
        if guild is not None:
            data["guild_id"] = str(guild.id)
        return data

    def react(self, message: dict, emoji: str | tuple[str, int] = "👍", *, user: User | None = None) -> None:
        """A user adds a reaction (MESSAGE_REACTION_ADD, with `member` in a guild and the message's author id), as
        Discord does: once per user and emoji; the message's `reactions` counts are kept."""
        user = user or self.alice
        data = self._reaction_event(message, emoji, user)
        data.update(message_author_id=str((message.get("author") or {}).get("id", self.app_id)), burst_colors=[])
        if "guild_id" in data:
            data["member"] = self._member(user, guild=self.guild_of(int(message["channel_id"])))
        key = self._emoji_key(data["emoji"])
        with self.cond:
            users = self.reacted.setdefault(int(message["id"]), {}).setdefault(key, [])
            if user.id in users:
                return  # Discord adds a user's reaction once
            users.append(user.id)
            self._count_reactions(int(message["id"]))
        self.dispatch("MESSAGE_REACTION_ADD", data)

    def unreact(self, message: dict, emoji: str | tuple[str, int] = "👍", *, user: User | None = None) -> None:
        """A user removes their reaction (MESSAGE_REACTION_REMOVE: no member, as Discord sends it)."""
        user = user or self.alice
        data = self._reaction_event(message, emoji, user)
        key = self._emoji_key(data["emoji"])
        with self.cond:
            users = self.reacted.get(int(message["id"]), {}).get(key, [])
            if user.id not in users:
                return
            users.remove(user.id)
            self._count_reactions(int(message["id"]))
        self.dispatch("MESSAGE_REACTION_REMOVE", data)

    @staticmethod
    def _emoji_key(emoji: dict) -> str:
        return f"{emoji['name']}:{emoji['id']}" if emoji["id"] else emoji["name"]

    def _count_reactions(self, message_id: int) -> None:
        """The message's `reactions` as Discord shows them (count per emoji, `me` for the bot's own)."""
        message = self.messages.get(message_id)
        if message is None:
            return
        message["reactions"] = [
            {"emoji": {"id": key.partition(":")[2] or None, "name": key.partition(":")[0]},
             "count": len(users), "me": self.app_id in users, "burst_colors": [], "me_burst": False,
             "count_details": {"burst": 0, "normal": len(users)}}
            for key, users in self.reacted.get(message_id, {}).items() if users]

    def attachment(self, filename: str, data: bytes, content_type: str = "text/plain") -> tuple[str, dict]:
        """(attachment id, resolved attachment object) served from the fake CDN."""
        att_id = str(self.snowflake())
        name = f"{att_id}-{filename}"
        self.cdn[name] = data
        url = f"http://{self.host}:{self.port}/cdn/{name}"
        return att_id, {"id": att_id, "filename": filename, "size": len(data), "url": url, "proxy_url": url,
                        "content_type": content_type}

    def wait_for(self, predicate, timeout: float = 20, what: str = "condition"):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                if self.errors:
                    raise AssertionError(f"fake Discord errors while waiting for {what}: {self.errors}")
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    recent = "\n".join(f"  {r.method} {r.path} -> {r.status}: {str(r.json)[:300]}"
                                        for r in self.requests[-8:])
                    raise TimeoutError(f"timed out after {timeout} s waiting for {what}; last requests:\n{recent}")
                self.cond.wait(min(left, 0.5))

    def sent(self, method: str | None = None, path_part: str = "") -> list[Recorded]:
        with self.cond:
            return [r for r in self.requests if (method is None or r.method == method) and path_part in r.path]

    # -- REST ----------------------------------------------------------------------------------------------

    async def _cdn(self, request: web.Request) -> web.Response:
        data = self.cdn.get(request.match_info["name"])
        if data is None:
            self._error(f"GET unknown attachment {request.path}")
            return web.Response(status=404)
        with self.cond:
            url = f"http://{self.host}:{self.port}{request.path}"
            self.cdn_hits[url] = self.cdn_hits.get(url, 0) + 1
        self._record(Recorded("GET", request.path, dict(request.query), None, [], time.monotonic()))
        return web.Response(body=data, content_type="application/octet-stream")

    async def _rest(self, request: web.Request) -> web.Response:
        at = time.monotonic()
        payload, files = await self._body(request)
        path = request.path
        rec = Recorded(request.method, path, dict(request.query), payload, files, at)
        try:
            response = self._over_rate_limit(path, at) or await self._route(
                request.method, path.removeprefix(API).strip("/").split("/"), payload, files, at, rec)
        except Exception as e:  # noqa: BLE001 - a bug in the fake must fail the test, loudly
            self._error(f"fake crashed on {request.method} {path}: {e!r}")
            response = _json({"message": "fake error", "code": 0}, 500)
        rec.status = response.status
        self._record(rec)
        return response

    def _over_rate_limit(self, path: str, at: float) -> web.Response | None:
        """Discord's global rate limit: a 429 past `rate_limit` requests in the last second (interaction
        callbacks are outside it), with the headers and body discord.py reads (Via, retry_after, global)."""
        if not self.rate_limit or path.removeprefix(API).startswith("/interactions/"):
            return None
        while self._recent and self._recent[0] <= at - 1.0:
            self._recent.popleft()
        if len(self._recent) < self.rate_limit:
            self._recent.append(at)
            return None
        self.rate_limited += 1
        retry_after = round(self._recent[0] + 1.0 - at, 3)
        response = _json({"message": "You are being rate limited.", "retry_after": retry_after, "global": True}, 429)
        response.headers.update({"Retry-After": str(retry_after), "X-RateLimit-Global": "true",
                                 "X-RateLimit-Scope": "global", "Via": "1.1 google"})
        return response

    async def _body(self, request: web.Request) -> tuple[Any, list[tuple[str, bytes]]]:
        files: list[tuple[str, bytes]] = []
        if request.content_type.startswith("multipart/"):
            payload = None
            reader = await request.multipart()
            async for part in reader:
                if part.name == "payload_json":
                    payload = json.loads(await part.text())
                else:
                    files.append((part.filename or part.name, bytes(await part.read())))
            return payload, files
        if request.can_read_body:
            raw = await request.read()
            if raw:
                try:
                    return json.loads(raw), files
                except ValueError:
                    return raw.decode("utf-8", "replace"), files
        return None, files

    def _unknown(self, method: str, parts: list[str]) -> web.Response:
        self._error(f"unknown route {method} /{'/'.join(parts)}")
        return _json({"message": "404: Not Found", "code": 0}, 404)

    async def _route(self, method: str, p: list[str], payload: Any, files, at: float, rec: Recorded) -> web.Response:
        n = len(p)
        if method == "GET" and p == ["users", "@me"]:
            return _json(self._user(self.bot_user))
        if method == "GET" and p == ["oauth2", "applications", "@me"]:
            return _json({"id": str(self.app_id), "name": "Improbable", "description": "", "icon": None,
                          "bot_public": True, "bot_require_code_grant": False, "owner": self._user(self.owner),
                          "verify_key": "00", "flags": self.application_flags, "summary": "", "team": None})
        if method == "GET" and p == ["gateway", "bot"]:
            return _json({"url": self.gateway_url, "shards": self.shard_count, "session_start_limit": {
                "total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}})
        if method == "PUT" and p[0] == "applications" and p[-1] == "commands":
            await asyncio.sleep(self.sync_delay)
            out = []
            with self.cond:
                for cmd in payload or []:
                    cmd = {**cmd, "id": str(self.snowflake()), "application_id": str(self.app_id), "version": "1",
                           "type": cmd.get("type", 1), "default_member_permissions": None}
                    if n == 5:
                        cmd["guild_id"] = p[3]
                    self.commands[cmd["name"]] = cmd
                    out.append(cmd)
                self.cond.notify_all()
            return _json(out)
        if method == "DELETE" and n == 4 and p[:3] == ["users", "@me", "guilds"]:
            return self._leave_guild(int(p[3]))
        if method == "POST" and p == ["users", "@me", "channels"]:
            user = self.users.get(int((payload or {}).get("recipient_id", 0)))
            if user is None:
                return _json({"message": "Unknown User", "code": 10013}, 404)
            return _json(self._channel(self.dm_channel(user)))
        if method == "POST" and n == 4 and p[0] == "interactions" and p[3] == "callback":
            return self._callback(int(p[1]), p[2], payload or {}, files, at)
        routed = self._webhook_route(method, p, payload, files, rec.query)
        if routed is not None:
            return routed
        if p[0] == "webhooks" and n >= 3:
            ix = self.by_token.get(p[2])
            if ix is None:
                self._error(f"webhook call for an unknown interaction token: {method} /{'/'.join(p)}")
                return _json({"message": "Unknown Webhook", "code": 10015}, 404)
            if not ix.acked:
                self._error(f"webhook call before the interaction {ix.id} was acknowledged")
                return _json({"message": "Unknown Webhook", "code": 10015}, 404)
            if n == 3 and method == "POST":
                return self._followup(ix, payload or {}, files)
            if n == 5 and p[3] == "messages":
                target = ix.original_id if p[4] == "@original" else int(p[4])
                return self._webhook_message(method, ix, target, payload, files, p[4] == "@original")
        if p[0] == "channels" and n >= 3:
            channel_id = int(p[1])
            if method == "POST" and p[2] == "typing" and n == 3:
                return web.Response(status=204)
            if method == "GET" and p[2] == "messages" and n == 3:
                return _json(self._history(channel_id, rec.query))
            if method == "POST" and p[2] == "messages" and n == 3:
                refused = self._cannot_post(channel_id)
                if refused is not None:
                    return refused
                msg = self._message(channel_id, payload or {}, flags=0)
                self._attach(msg, payload or {}, files)
                with self.cond:
                    self.messages[int(msg["id"])] = msg
                    self.cond.notify_all()
                return _json(msg)
            if p[2] == "messages" and n == 4:
                mid = int(p[3])
                if mid not in self.messages:
                    return _json({"message": "Unknown Message", "code": 10008}, 404)
                if method == "PATCH":
                    return _json(self._edit(mid, payload or {}, files))
                if method == "DELETE":
                    with self.cond:
                        self.messages.pop(mid, None)
                        self.cond.notify_all()
                    return web.Response(status=204)
                if method == "GET":
                    return _json(self.messages[mid])
        return self._unknown(method, p)

    def _leave_guild(self, guild_id: int) -> web.Response:
        """The bot leaves a guild (Guild.leave): 204, then GUILD_DELETE without `unavailable`, as Discord
        does; a guild the bot is not in is 404 Unknown Guild."""
        guild = self.guilds.get(guild_id)
        if guild is None or not guild.joined:
            return _json({"message": "Unknown Guild", "code": 10004}, 404)
        with self.cond:
            guild.joined = False
            self.cond.notify_all()
        asyncio.get_running_loop().call_later(0.05, lambda: asyncio.ensure_future(
            self._dispatch("GUILD_DELETE", {"id": str(guild_id)})))
        return web.Response(status=204)

    def _cannot_post(self, channel_id: int) -> web.Response | None:
        """Discord's 403 when the bot may not post there: not in the guild or no View Channel (50001 Missing
        Access), or no Send Messages (50013 Missing Permissions). Answers, not fake errors: the bot must cope."""
        guild = self.guild_of(channel_id)
        if guild is None:
            return None
        perms = self.permissions(self.bot_user, channel_id)
        if not guild.joined or not perms & VIEW_CHANNEL:
            return _json({"message": "Missing Access", "code": 50001}, 403)
        if not perms & SEND_MESSAGES:
            return _json({"message": "Missing Permissions", "code": 50013}, 403)
        return None

    def _history(self, channel_id: int, query: dict) -> list[dict]:
        """GET /channels/{id}/messages: newest first, as Discord answers; `after` gives the `limit` messages
        just after it, `before` those just before it (the fake's messages are created with rising ids)."""
        limit = min(int(query.get("limit", 50)), 100)
        with self.cond:
            self.history_reads += 1
            ids = sorted(mid for mid, m in self.messages.items() if int(m["channel_id"]) == channel_id)
            if "after" in query:
                ids = [i for i in ids if i > int(query["after"])][:limit]
            else:
                ids = [i for i in ids if i < int(query.get("before", 1 << 63))][-limit:]
            return [self.messages[i] for i in reversed(ids)]

    def _attach(self, msg: dict, payload: dict, files: list[tuple[str, bytes]], keep: list[dict] | None = None) -> None:
        atts = list(keep or [])
        stored = []
        for i, (name, data) in enumerate(files):
            meta = (payload.get("attachments") or [{}] * len(files))
            filename = next((a.get("filename") for a in meta if str(a.get("id")) == str(i)), None) or name
            att_id = str(self.snowflake())
            url = f"http://{self.host}:{self.port}/cdn/{att_id}-{filename}"
            self.cdn[f"{att_id}-{filename}"] = data
            atts.append({"id": att_id, "filename": filename, "size": len(data), "url": url, "proxy_url": url})
            stored.append((filename, data))
        msg["attachments"] = atts
        if stored or keep is not None:
            self.files[int(msg["id"])] = [(a["filename"], self.cdn[a["url"].rsplit("/", 1)[1]]) for a in atts]

    def _edit(self, mid: int, payload: dict, files) -> dict:
        with self.cond:
            msg = self.messages[mid]
            for key in ("content", "components", "embeds", "flags"):
                if key in payload:
                    msg[key] = payload[key] if payload[key] is not None else ([] if key != "content" else "")
            if "attachments" in payload or files:
                keep_ids = {str(a.get("id")) for a in payload.get("attachments") or []}
                keep = [a for a in msg["attachments"] if a["id"] in keep_ids]
                self._attach(msg, payload, files, keep)
            msg["edited_timestamp"] = _now_iso()
            self.edits.setdefault(mid, []).append(time.monotonic())
            self.cond.notify_all()
            return dict(msg)

    def _callback(self, iid: int, token: str, payload: dict, files, at: float) -> web.Response:
        ix = self.interactions.get(iid)
        if ix is None or ix.token != token:
            self._error(f"callback for an unknown interaction {iid}")
            return _json({"message": "Unknown interaction", "code": 10062}, 404)
        kind = payload.get("type")
        if ix.acked:
            self._error(f"interaction {iid} acknowledged twice (callback type {kind})")
            return _json({"message": "Interaction has already been acknowledged.", "code": 40060}, 400)
        if at - ix.dispatched > ACK_WINDOW:
            self._error(f"interaction {iid} acknowledged after {at - ix.dispatched:.2f} s (limit {ACK_WINDOW} s)")
            return _json({"message": "Unknown interaction", "code": 10062}, 404)
        data = payload.get("data") or {}
        flags = int(data.get("flags") or 0)
        resource: dict = {"type": kind}
        with self.cond:
            ix.acks.append((kind, at))
            if kind in (4, 5):
                ix.ephemeral = bool(flags & EPHEMERAL)
                msg = self._message(ix.channel_id, data if kind == 4 else {}, flags=flags | (128 if kind == 5 else 0),
                                    webhook=True)
                msg["interaction_metadata"] = {"id": str(ix.id), "type": ix.type,
                                               "user": self._user(self.users[ix.user_id])}
                if kind == 4:
                    self._attach(msg, data, files)
                self.messages[int(msg["id"])] = msg
                ix.original_id = int(msg["id"])
                ix.state = "sent" if kind == 4 else "loading"
                resource["message"] = msg
            elif kind in (6, 7):
                if ix.type != 3:
                    self._error(f"callback type {kind} on a non-component interaction {iid}")
                ix.original_id, ix.state = ix.message_id, "update"
                if kind == 7:
                    resource["message"] = self._edit(ix.message_id, data, files)
            elif kind == 8:
                ix.autocomplete = data.get("choices", [])
            else:
                self._error(f"unsupported callback type {kind}")
            self.cond.notify_all()
        return _json({"interaction": {"id": str(ix.id), "type": ix.type, "response_message_id":
                                      str(ix.original_id) if ix.original_id else None,
                                      "response_message_loading": kind == 5,
                                      "response_message_ephemeral": ix.ephemeral},
                      "resource": resource})

    def _followup(self, ix: Interaction, payload: dict, files) -> web.Response:
        with self.cond:
            if ix.state == "loading":  # the first follow-up after a thinking defer edits the loading message
                mid = ix.original_id
                msg = self.messages[mid]
                msg["flags"] = msg["flags"] & ~128
                ix.state = "sent"
                ix.followups.append(mid)
                self.cond.notify_all()
                return _json(self._edit(mid, {**payload, "attachments": payload.get("attachments", [])}, files))
            flags = int(payload.get("flags") or 0)
            msg = self._message(ix.channel_id, payload, flags=flags, webhook=True)
            self._attach(msg, payload, files)
            self.messages[int(msg["id"])] = msg
            ix.followups.append(int(msg["id"]))
            self.cond.notify_all()
            return _json(msg)

    def _webhook_message(self, method: str, ix: Interaction, mid: int | None, payload, files,
                         original: bool) -> web.Response:
        if mid is None or mid not in self.messages:
            return _json({"message": "Unknown Message", "code": 10008}, 404)
        if method == "GET":
            return _json(self.messages[mid])
        if method == "DELETE":
            with self.cond:
                self.messages.pop(mid, None)
                if original:
                    ix.state = "deleted"
                self.cond.notify_all()
            return web.Response(status=204)
        if method == "PATCH":
            with self.cond:  # the loading message edited as @original or by its id (a restarted bot's way)
                if (original or mid == ix.original_id) and ix.state == "loading":
                    ix.state = "sent"
                    self.messages[mid]["flags"] &= ~128
            return _json(self._edit(mid, payload or {}, files))
        return self._unknown(method, ["webhooks", "…", "messages", str(mid)])

    # -- what tests look at --------------------------------------------------------------------------------

    def message(self, message_id: int | None) -> dict | None:
        with self.cond:
            msg = None if message_id is None else self.messages.get(message_id)
            return copy.deepcopy(msg)

    def cdn_reads(self, url: str) -> int:
        """How many times the fake's CDN served this attachment URL."""
        with self.cond:
            return self.cdn_hits.get(url, 0)

    def channel_messages(self, channel_id: int) -> list[dict]:
        with self.cond:
            return [copy.deepcopy(m) for m in self.messages.values() if int(m["channel_id"]) == channel_id
                    and int(m["author"]["id"]) == self.app_id]


def opt(name: str, value: Any, kind: int | None = None) -> dict:
    """A command option; the type is inferred (str 3, bool 5, int 4, float 10) unless given."""
    if kind is None:
        kind = 5 if isinstance(value, bool) else 4 if isinstance(value, int) else 10 if isinstance(value, float) else 3
    return {"name": name, "type": kind, "value": value}


def custom_ids(message: dict) -> list[str]:
    return [c.get("custom_id", "") for row in message.get("components") or [] for c in row.get("components", [])]
