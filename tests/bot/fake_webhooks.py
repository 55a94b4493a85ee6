"""Channel webhooks for the fake Discord (a mixin of tests/bot/fake_discord.FakeDiscord), as Discord has them:

- POST /channels/{id}/webhooks creates one (Manage Webhooks in the channel, else 403 50013; 15 per channel,
  else 400 30007; a name with "discord" or "clyde" is 400 50035), with its avatar (a data URI) kept as bytes;
  GET lists a channel's webhooks;
- POST /webhooks/{id}/{token}?wait=true executes it: the message carries `webhook_id`, the application id
  (the bot created it, so it is application-owned and may carry buttons) and an author named by `username`
  (else the webhook's name), with the webhook's avatar; clicks on its components reach the bot like any
  message's (FakeDiscord.click);
- GET/PATCH/DELETE /webhooks/{id}/{token}/messages/{message_id} reads, edits or deletes one of its messages
  (another webhook's message is 404 Unknown Message);
- PATCH and DELETE /webhooks/{id}[/{token}] modify or delete it; a wrong token is 401 50027;
- DELETE /channels/{id}/messages/{message_id} of a message the bot did not author needs Manage Messages.

`grant_webhooks(channel_id)` gives the bot Manage Webhooks in a channel (a member overwrite); without it the
bot has no Manage Webhooks anywhere. `add_webhook(channel_id, name)` makes one as another member would.
"""

from __future__ import annotations

import base64
import copy
import hashlib
from typing import Any

from aiohttp import web

MANAGE_MESSAGES = 1 << 13
MANAGE_WEBHOOKS = 1 << 29
MAX_WEBHOOKS = 15


def _reply(data: Any, status: int = 200) -> web.Response:
    from tests.bot.fake_discord import _json

    return _json(data, status)


class Webhooks:
    """Mixin: needs FakeDiscord's `cond`, `messages`, `permissions`, `bot_user`, `app_id`, `snowflake`,
    `guild_of`, `_message`, `_attach`, `_edit`, and `channel_webhooks` (webhook id -> record)."""

    channel_webhooks: dict[int, dict]

    def grant_webhooks(self, channel_id: int) -> None:
        """The bot gets Manage Webhooks in this channel (an overwrite for its member), told to the bot."""
        current = self.permissions(self.bot_user, channel_id)
        self.overwrite(channel_id, self.bot_user.id, allow=MANAGE_WEBHOOKS, member=True)
        assert self.permissions(self.bot_user, channel_id) == current | MANAGE_WEBHOOKS

    def add_webhook(self, channel_id: int, name: str, avatar: str | None = None) -> dict:
        """A new webhook in the channel, as Discord keeps it (called directly: one made by a member or another
        integration); `avatar`: a data URI."""
        data, avatar_hash = self._avatar(avatar)
        hook = {"id": self.snowflake(), "token": f"whtok-{self.snowflake()}", "name": name, "avatar": data,
                "avatar_hash": avatar_hash, "channel_id": channel_id, "guild_id": self.guild_of(channel_id).id}
        with self.cond:
            self.channel_webhooks[hook["id"]] = hook
            self.cond.notify_all()
        return copy.deepcopy(hook)

    def webhooks_in(self, channel_id: int) -> list[dict]:
        with self.cond:
            return [copy.deepcopy(w) for w in self.channel_webhooks.values() if w["channel_id"] == channel_id]

    def webhook_messages(self, channel_id: int) -> list[dict]:
        """Messages posted in the channel through a channel webhook (not interaction responses)."""
        with self.cond:
            return [copy.deepcopy(m) for m in self.messages.values() if int(m["channel_id"]) == channel_id
                    and int(m.get("webhook_id") or 0) in self.channel_webhooks]

    def _webhook_object(self, hook: dict, with_token: bool = True) -> dict:
        data = {"id": str(hook["id"]), "type": 1, "guild_id": str(hook["guild_id"]),
                "channel_id": str(hook["channel_id"]), "name": hook["name"], "avatar": hook["avatar_hash"],
                "application_id": str(self.app_id), "user": self._user(self.bot_user)}
        if with_token:
            data["token"] = hook["token"]
        return data

    @staticmethod
    def _avatar(value: str | None) -> tuple[bytes | None, str | None]:
        if not value:
            return None, None
        data = base64.b64decode(value.split(",", 1)[1])
        return data, hashlib.md5(data).hexdigest()  # noqa: S324 - a name, as Discord's avatar hashes are

    def _webhook_route(self, method: str, p: list[str], payload: Any, files, query: dict) -> web.Response | None:
        """The answer to a webhook route, or None for a route this mixin does not serve."""
        n = len(p)
        if p[0] == "channels" and n == 3 and p[2] == "webhooks":
            return self._channel_webhooks(method, int(p[1]), payload or {})
        if p[0] == "channels" and n == 4 and p[2] == "messages" and method == "DELETE":
            msg = self.messages.get(int(p[3]))
            mine = msg is None or int(msg["author"]["id"]) == self.app_id
            if not mine and not self.permissions(self.bot_user, int(p[1])) & MANAGE_MESSAGES:
                return _reply({"message": "Missing Permissions", "code": 50013}, 403)
            return None
        if p[0] != "webhooks" or n < 2 or not p[1].isdigit() or int(p[1]) not in self.channel_webhooks:
            return None
        hook = self.channel_webhooks[int(p[1])]
        if n >= 3 and p[2] != hook["token"]:
            return _reply({"message": "Invalid Webhook Token", "code": 50027}, 401)
        if n <= 3:
            return self._one_webhook(method, hook, payload or {}, files, query)
        if n == 5 and p[3] == "messages":
            return self._webhook_message_route(method, hook, int(p[4]), payload or {}, files)
        return None

    def _channel_webhooks(self, method: str, channel_id: int, payload: dict) -> web.Response:
        if not self.permissions(self.bot_user, channel_id) & MANAGE_WEBHOOKS:
            return _reply({"message": "Missing Permissions", "code": 50013}, 403)
        if method == "GET":
            return _reply([self._webhook_object(w) for w in self.webhooks_in(channel_id)])
        if method != "POST":
            return _reply({"message": "405: Method Not Allowed", "code": 0}, 405)
        name = str(payload.get("name") or "")
        if not 1 <= len(name) <= 80 or any(bad in name.lower() for bad in ("discord", "clyde")):
            return _reply({"message": "Invalid Form Body", "code": 50035}, 400)
        if len(self.webhooks_in(channel_id)) >= MAX_WEBHOOKS:
            return _reply({"message": "Maximum number of webhooks reached (15)", "code": 30007}, 400)
        return _reply(self._webhook_object(self.add_webhook(channel_id, name, payload.get("avatar"))))

    def _one_webhook(self, method: str, hook: dict, payload: dict, files, query: dict) -> web.Response:
        if method == "POST":
            return self._execute(hook, payload, files, query)
        if method == "GET":
            return _reply(self._webhook_object(hook))
        if method == "DELETE":
            with self.cond:
                self.channel_webhooks.pop(hook["id"], None)
                self.cond.notify_all()
            return web.Response(status=204)
        if method == "PATCH":
            with self.cond:
                if "name" in payload:
                    hook["name"] = payload["name"]
                if "avatar" in payload:
                    hook["avatar"], hook["avatar_hash"] = self._avatar(payload["avatar"])
            return _reply(self._webhook_object(hook))
        return _reply({"message": "405: Method Not Allowed", "code": 0}, 405)

    def _execute(self, hook: dict, payload: dict, files, query: dict) -> web.Response:
        msg = self._message(hook["channel_id"], payload)
        msg.pop("message_reference", None)  # a webhook cannot reply
        msg["type"] = 0
        msg["author"] = {"id": str(hook["id"]), "username": payload.get("username") or hook["name"],
                         "discriminator": "0000", "global_name": None, "avatar": hook["avatar_hash"], "bot": True,
                         "public_flags": 0}
        msg["webhook_id"] = str(hook["id"])
        msg["application_id"] = str(self.app_id)
        msg["avatar_url"] = payload.get("avatar_url")  # recorded for tests: Discord would fetch it
        self._attach(msg, payload, files)
        with self.cond:
            self.messages[int(msg["id"])] = msg
            self.cond.notify_all()
        if str(query.get("wait", "")).lower() not in ("1", "true"):
            return web.Response(status=204)
        return _reply(msg)

    def _webhook_message_route(self, method: str, hook: dict, mid: int, payload: dict, files) -> web.Response:
        msg = self.messages.get(mid)
        if msg is None or int(msg.get("webhook_id") or 0) != hook["id"]:
            return _reply({"message": "Unknown Message", "code": 10008}, 404)
        if method == "GET":
            return _reply(msg)
        if method == "PATCH":
            return _reply(self._edit(mid, payload, files))
        if method == "DELETE":
            with self.cond:
                self.messages.pop(mid, None)
                self.cond.notify_all()
            return web.Response(status=204)
        return _reply({"message": "405: Method Not Allowed", "code": 0}, 405)
