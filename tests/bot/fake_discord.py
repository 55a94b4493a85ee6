"""A small fake Discord for end-to-end tests of the real bot process: REST routes + a websocket gateway.

It runs an aiohttp server in a background thread; tests drive it synchronously:

    fake = FakeDiscord().start()
    ix = fake.slash("generate", [opt("persona", "alice"), opt("prompt", "Alice")], user=fake.alice)
    msg = fake.wait_for(lambda: ix.final_message(), timeout=20)

What it enforces (what real Discord does and discord.py does not check):
- the first response to an interaction within 3 s of its dispatch (else 10062 Unknown interaction),
- a single acknowledgement (else 40060 Interaction has already been acknowledged),
- webhook calls only after the acknowledgement,
- every route it does not know is answered 404 and recorded in `errors` (the fixture fails the test).

It models the first follow-up after a "thinking" defer editing the loading message, ephemeral flags,
attachments (multipart `payload_json` + `files[n]`) and message edits, and records every request with its
time so tests can assert on payloads (allowed_mentions) and timing (edits ≥ 1 s apart).

Payload builders live in one place (`_user`, `_member`, `_message`, `_interaction`): a missing required field
kills the whole discord.py client, not just a handler.
"""

from __future__ import annotations

import asyncio
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

DISCORD_EPOCH_MS = 1420070400000
API = "/api/v10"
INTENTS_EXPECTED = 53608189  # default intents + MESSAGE_CONTENT
ACK_WINDOW = 3.0
EPHEMERAL = 64
MANAGE_GUILD = 1 << 5
MEMBER_PERMISSIONS = (1 << 10) | (1 << 11) | (1 << 14) | (1 << 15) | (1 << 16) | (1 << 31)  # view, send, ...


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


class FakeDiscord:
    def __init__(self) -> None:
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
        self.requests: list[Recorded] = []
        self.errors: list[str] = []
        self.interactions: dict[int, Interaction] = {}
        self.by_token: dict[str, Interaction] = {}
        self.messages: dict[int, dict] = {}
        self.edits: dict[int, list[float]] = {}  # message id -> times it was edited
        self.files: dict[int, list[tuple[str, bytes]]] = {}  # message id -> attachments' bytes
        self.cdn: dict[str, bytes] = {}
        self.commands: dict[str, dict] = {}
        self.identify: dict | None = None
        self.cond = threading.Condition()
        self._ws: set[web.WebSocketResponse] = set()
        self._seq = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port = 0

    # -- ids and payloads ----------------------------------------------------------------------------------

    def snowflake(self) -> int:
        return ((int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22) | (next(self._ids) & 0x3FFFFF)

    def _user(self, user: User) -> dict:
        return {"id": str(user.id), "username": user.name, "discriminator": "0", "global_name": user.name,
                "avatar": None, "bot": user.id == self.app_id, "public_flags": 0}

    def _member(self, user: User, with_user: bool = True) -> dict:
        data = {"roles": [str(r) for r in user.roles], "joined_at": "2024-01-01T00:00:00+00:00", "deaf": False,
                "mute": False, "flags": 0, "nick": None, "avatar": None, "pending": False,
                "communication_disabled_until": None, "premium_since": None}
        if with_user:
            data["user"] = self._user(user)
        return data

    def _channel(self, channel_id: int, name: str = "general") -> dict:
        return {"id": str(channel_id), "type": 0, "name": name, "position": 0, "guild_id": str(self.guild_id),
                "permission_overwrites": [], "nsfw": False, "parent_id": None, "topic": None,
                "last_message_id": None, "rate_limit_per_user": 0}

    def _guild(self) -> dict:
        everyone = {"id": str(self.guild_id), "name": "@everyone", "permissions": str(MEMBER_PERMISSIONS),
                    "position": 0, "color": 0, "hoist": False, "managed": False, "mentionable": False, "flags": 0}
        trainer = {**everyone, "id": str(self.trainer_role), "name": "trainer", "position": 1}
        return {"id": str(self.guild_id), "name": "Test Guild", "icon": None, "owner_id": str(self.owner.id),
                "roles": [everyone, trainer], "emojis": [], "stickers": [], "features": [], "member_count": 5,
                "channels": [self._channel(self.channel_id), self._channel(self.other_channel_id, "posts")],
                "threads": [], "members": [self._member(u) for u in (*self.users.values(), self.bot_user)],
                "voice_states": [], "presences": [], "large": False, "unavailable": False,
                "verification_level": 0, "default_message_notifications": 0, "explicit_content_filter": 0,
                "mfa_level": 0, "premium_tier": 0, "system_channel_flags": 0, "preferred_locale": "en-US",
                "nsfw_level": 0, "stage_instances": [], "guild_scheduled_events": [], "soundboard_sounds": [],
                "joined_at": "2024-01-01T00:00:00+00:00", "afk_timeout": 300}

    def _message(self, channel_id: int, payload: dict, *, author: User | None = None, flags: int = 0,
                 message_id: int | None = None, webhook: bool = False) -> dict:
        author = author or self.bot_user
        msg = {"id": str(message_id or self.snowflake()), "channel_id": str(channel_id),
               "guild_id": str(self.guild_id), "author": self._user(author), "content": payload.get("content") or "",
               "timestamp": _now_iso(), "edited_timestamp": None, "tts": False, "mention_everyone": False,
               "mentions": [], "mention_roles": [], "attachments": [], "embeds": payload.get("embeds") or [],
               "pinned": False, "type": 0, "flags": flags, "components": payload.get("components") or []}
        if webhook:
            msg["webhook_id"] = str(self.app_id)
            msg["application_id"] = str(self.app_id)
        ref = payload.get("message_reference")
        if ref:
            msg["type"] = 19
            msg["message_reference"] = {"message_id": str(ref["message_id"]), "channel_id": str(channel_id),
                                        "guild_id": str(self.guild_id)}
        return msg

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
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
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
        return f"http://127.0.0.1:{self.port}{API}"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

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
                    with self.cond:
                        self.identify = data["d"]
                        self._seq = 0
                        self.cond.notify_all()
                    await self._send(ws, "READY", {
                        "v": 10, "user": self._user(self.bot_user), "guilds": [{"id": str(self.guild_id),
                                                                               "unavailable": True}],
                        "session_id": "fake-session", "resume_gateway_url": self.gateway_url,
                        "application": {"id": str(self.app_id), "flags": 0}, "shard": [0, 1],
                        "private_channels": [], "relationships": []})
                    await self._send(ws, "GUILD_CREATE", self._guild())
                elif op == 6:
                    await self._send(ws, "RESUMED", {})
        finally:
            self._ws.discard(ws)
        return ws

    def _ack(self, ws: web.WebSocketResponse) -> None:
        if not ws.closed:
            asyncio.ensure_future(ws.send_str(json.dumps({"op": 11, "d": None, "s": None, "t": None})))

    async def _send(self, ws: web.WebSocketResponse, event: str, data: dict) -> None:
        self._seq += 1
        await ws.send_str(json.dumps({"op": 0, "t": event, "s": self._seq, "d": data}))

    async def _dispatch(self, event: str, data: dict) -> None:
        for ws in list(self._ws):
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
        perms = str(user.permissions)
        member = {**self._member(user), "permissions": perms}
        return {"id": str(ix.id), "application_id": str(self.app_id), "type": ix.type, "token": ix.token,
                "version": 1, "guild_id": str(self.guild_id), "channel_id": str(ix.channel_id),
                "channel": {**self._channel(ix.channel_id), "permissions": perms}, "member": member,
                "app_permissions": str(MEMBER_PERMISSIONS), "locale": "en-US", "guild_locale": "en-US",
                "entitlements": [], "authorizing_integration_owners": {"0": str(self.guild_id)}, "context": 0,
                "attachment_size_limit": 26214400, "data": data}

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
        options = options or []
        if sub:
            options = [{"name": sub, "type": 1, "options": options}]
        data = {"id": registered["id"], "name": top, "type": 1, "options": options, "guild_id": str(self.guild_id)}
        if resolved:
            data["resolved"] = resolved
        ix = self._new_interaction(4 if autocomplete else 2, user, channel_id or self.channel_id)
        return self._send_interaction(ix, self._interaction_payload(ix, user, data))

    def click(self, message: dict, custom_id: str, *, user: User | None = None) -> Interaction:
        user = user or self.alice
        channel_id = int(message["channel_id"])
        ix = self._new_interaction(3, user, channel_id, message_id=int(message["id"]))
        payload = self._interaction_payload(ix, user, {"custom_id": custom_id, "component_type": 2})
        payload["message"] = message
        return self._send_interaction(ix, payload)

    def say(self, content: str, *, user: User | None = None, channel_id: int | None = None,
            reply_to: dict | None = None, mention_bot: bool = False) -> dict:
        """A user's message (MESSAGE_CREATE)."""
        user = user or self.alice
        msg = self._message(channel_id or self.channel_id, {"content": content}, author=user)
        msg["member"] = self._member(user, with_user=False)
        if mention_bot:
            msg["mentions"] = [{**self._user(self.bot_user), "member": self._member(self.bot_user, False)}]
        if reply_to is not None:
            msg["type"] = 19
            msg["message_reference"] = {"message_id": reply_to["id"], "channel_id": reply_to["channel_id"],
                                        "guild_id": str(self.guild_id)}
            msg["referenced_message"] = reply_to
        with self.cond:
            self.messages[int(msg["id"])] = msg
        self.dispatch("MESSAGE_CREATE", msg)
        return msg

    def attachment(self, filename: str, data: bytes, content_type: str = "text/plain") -> tuple[str, dict]:
        """(attachment id, resolved attachment object) served from the fake CDN."""
        att_id = str(self.snowflake())
        name = f"{att_id}-{filename}"
        self.cdn[name] = data
        url = f"http://127.0.0.1:{self.port}/cdn/{name}"
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
        self._record(Recorded("GET", request.path, dict(request.query), None, [], time.monotonic()))
        return web.Response(body=data, content_type="application/octet-stream")

    async def _rest(self, request: web.Request) -> web.Response:
        at = time.monotonic()
        payload, files = await self._body(request)
        path = request.path
        rec = Recorded(request.method, path, dict(request.query), payload, files, at)
        try:
            response = await self._route(request.method, path.removeprefix(API).strip("/").split("/"), payload,
                                         files, at, rec)
        except Exception as e:  # noqa: BLE001 - a bug in the fake must fail the test, loudly
            self._error(f"fake crashed on {request.method} {path}: {e!r}")
            response = _json({"message": "fake error", "code": 0}, 500)
        rec.status = response.status
        self._record(rec)
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
                          "verify_key": "00", "flags": 0, "summary": "", "team": None})
        if method == "PUT" and p[0] == "applications" and p[-1] == "commands":
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
        if method == "POST" and n == 4 and p[0] == "interactions" and p[3] == "callback":
            return self._callback(int(p[1]), p[2], payload or {}, files, at)
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

    def _history(self, channel_id: int, query: dict) -> list[dict]:
        """GET /channels/{id}/messages: newest first, as Discord answers; `after` gives the `limit` messages
        just after it, `before` those just before it (the fake's messages are created with rising ids)."""
        limit = min(int(query.get("limit", 50)), 100)
        with self.cond:
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
            url = f"http://127.0.0.1:{self.port}/cdn/{att_id}-{filename}"
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
            with self.cond:
                if original and ix.state == "loading":
                    ix.state = "sent"
                    self.messages[mid]["flags"] &= ~128
            return _json(self._edit(mid, payload or {}, files))
        return self._unknown(method, ["webhooks", "…", "messages", str(mid)])

    # -- what tests look at --------------------------------------------------------------------------------

    def message(self, message_id: int | None) -> dict | None:
        with self.cond:
            msg = None if message_id is None else self.messages.get(message_id)
            return copy.deepcopy(msg)

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
