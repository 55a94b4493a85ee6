"""The fake Discord at a big deployment's scale, for the load benchmark (bench/speed/load.py).

`FakeLoad(n_guilds)` is FakeDiscord (its two test guilds included) with `n_guilds` more servers, each with
`channels` text channels, an @everyone role and `members` members drawn from a pool of users; every member of
the pool may talk in every server (as @everyone). GUILD_CREATE announces the members it holds (owner, bot and
`members` others): more than Discord sends a bot without the privileged Server Members or Presence intent (the
bot's own member and the members in voice channels), so the bot parses at least as much as it would.

The events are sent from the fake's own loop (`send_message`, `send_slash`, `send_click` are coroutines for
`run_on_loop`), so a driver paces thousands a second without a thread hop each. What the bot makes of them is
recorded: the time to each interaction's first response (`acks`), and the time from a member's message or
command to the finished text, a message of the bot's carrying the result buttons (`finished`, by kind); the
last results (`results`) are there to be clicked.

Lookups that FakeDiscord makes by scanning every guild (a channel by id) go through an index here.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import random
import time
from concurrent.futures import Future

from .fake_discord import (
    DISCORD_EPOCH_MS,
    MEMBER_PERMISSIONS,
    Channel,
    FakeDiscord,
    Guild,
    Interaction,
    Role,
    User,
    custom_ids,
)

CHANNEL_NAMES = ("general", "chat", "memes", "art", "music", "games", "help", "off-topic", "news", "rules")
RESULT_BUTTON = "improbable:info:"  # on every finished text (bot/views.py)


class FakeLoad(FakeDiscord):
    def __init__(self, n_guilds: int, *, channels: int = 4, members: int = 5, users: int = 0, seed: int = 0,
                 **options) -> None:
        self._index: dict[int, Channel] = {}
        super().__init__(**options)
        rng = random.Random(seed)
        self.pool = [User(self.snowflake(), f"member{i}") for i in range(users or max(1000, 2 * n_guilds))]
        self.users.update((u.id, u) for u in self.pool)
        self.load_guilds: list[Guild] = []
        first_ms = int(time.time() * 1000) - DISCORD_EPOCH_MS - n_guilds
        for i in range(n_guilds):
            gid = (first_ms + i) << 22 | next(self._ids) & 0x3FFFFF  # one per millisecond: even over the shards
            names = [CHANNEL_NAMES[k % len(CHANNEL_NAMES)] + (f"-{k}" if k >= len(CHANNEL_NAMES) else "")
                     for k in range(channels)]
            owner, *others = rng.sample(self.pool, members + 1)
            guild = Guild(gid, f"Server {i}", owner, [Role(gid, "@everyone", MEMBER_PERMISSIONS)],
                          [Channel(self.snowflake(), name, gid) for name in names],
                          {u.id: () for u in (owner, *others, self.bot_user)})
            self.guilds[gid] = guild
            self.load_guilds.append(guild)
        self._index = {c.id: c for g in self.guilds.values() for c in g.channels}
        self.sent_at: dict[int, tuple[str, float]] = {}  # message or interaction id -> (kind, sent at)
        self._result_of: dict[int, int] = {}  # the bot's message id -> the message or interaction it answers
        self.acks: list[tuple[str, float]] = []  # (kind, seconds to the first response)
        self.finished: list[tuple[str, float]] = []  # (kind, seconds to the finished text)
        self.sent_interactions: list[Interaction] = []
        self.results: collections.deque[dict] = collections.deque(maxlen=500)
        self._waiters: dict[int, asyncio.Future] = {}  # message or interaction id -> its finished text's delay

    def channel(self, channel_id: int) -> Channel:
        found = self._index.get(channel_id)
        return found if found is not None else super().channel(channel_id)

    def run_on_loop(self, coro) -> Future:
        """Schedule a coroutine (a driver) on the fake's loop; its Future is for the calling thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    # -- events, sent from the fake's loop ------------------------------------------------------------------

    async def send_message(self, kind: str, channel_id: int, user: User, content: str, *,
                           mention_bot: bool = False, track: bool = True) -> None:
        """MESSAGE_CREATE from a member (not kept in the fake's messages: there are too many)."""
        msg = self._user_message(user, channel_id, content)
        if mention_bot:
            mention = self._user(self.bot_user)
            mention["member"] = self._member(self.bot_user, False, self.guild_of(channel_id))
            msg["mentions"] = [mention]
        if track:
            self.sent_at[int(msg["id"])] = (kind, time.monotonic())
        await self._dispatch("MESSAGE_CREATE", msg)

    async def send_slash(self, kind: str, command: str, options: list[dict], user: User, channel_id: int, *,
                         wait: bool = False) -> asyncio.Future | None:
        """A slash command (globally synced) as FakeDiscord.slash builds it; with `wait`, a future of the
        seconds until its finished text (None: refused, an ephemeral answer)."""
        top, _, sub = command.partition(" ")
        registered = self.commands[top]
        if sub:
            options = [{"name": sub, "type": 1, "options": options}]
        ix = self._new_interaction(2, user, channel_id)
        future = None
        if wait:
            self._waiters[ix.id] = future = asyncio.get_running_loop().create_future()
        await self._send_tracked(kind, ix, self._interaction_payload(
            ix, user, {"id": registered["id"], "name": top, "type": 1, "options": options}))
        return future

    def forget(self, future: asyncio.Future) -> None:
        """Stop waiting for a text that did not come."""
        for key, waiter in list(self._waiters.items()):
            if waiter is future:
                del self._waiters[key]

    async def send_click(self, kind: str, message: dict, custom_id: str, user: User) -> None:
        """A click on a button the message carries."""
        ix = self._new_interaction(3, user, int(message["channel_id"]), message_id=int(message["id"]))
        payload = self._interaction_payload(ix, user, {"custom_id": custom_id, "component_type": 2})
        payload["message"] = message
        await self._send_tracked(kind, ix, payload)

    async def _send_tracked(self, kind: str, ix: Interaction, payload: dict) -> None:
        ix.dispatched = time.monotonic()
        with self.cond:
            self.interactions[ix.id] = ix
            self.by_token[ix.token] = ix
        self.sent_at[ix.id] = (kind, ix.dispatched)
        self.sent_interactions.append(ix)
        await self._dispatch("INTERACTION_CREATE", payload)

    # -- what the bot answers ------------------------------------------------------------------------------

    def _callback(self, iid: int, token: str, payload: dict, files, at: float):
        response = super()._callback(iid, token, payload, files, at)
        ix, sent = self.interactions.get(iid), self.sent_at.get(iid)
        if ix is not None and sent is not None and len(ix.acks) == 1:
            self.acks.append((sent[0], ix.acks[0][1] - ix.dispatched))
            if ix.original_id is not None and payload.get("type") in (4, 5):  # its own message
                self._result_of[ix.original_id] = iid
            if ix.ephemeral and payload.get("type") == 4 and iid in self._waiters:  # a refusal: no text comes
                self._waiters.pop(iid).set_result(None)
        return response

    def _message(self, channel_id: int, payload: dict, *, author: User | None = None, **options) -> dict:
        msg = super()._message(channel_id, payload, author=author, **options)
        ref = payload.get("message_reference") if author is None else None
        if ref and int(ref["message_id"]) in self.sent_at:  # the bot's reply to a tracked message
            self._result_of[int(msg["id"])] = int(ref["message_id"])
            self._check_done(msg)
        return msg

    def _edit(self, mid: int, payload: dict, files) -> dict:
        msg = super()._edit(mid, payload, files)
        self._check_done(msg)
        return msg

    def _check_done(self, msg: dict) -> None:
        key = self._result_of.get(int(msg["id"]))
        if key is None or not any(c.startswith(RESULT_BUTTON) for c in custom_ids(msg)):
            return
        del self._result_of[int(msg["id"])]
        sent = self.sent_at.pop(key, None)
        if sent is not None:
            delay = time.monotonic() - sent[1]
            self.finished.append((sent[0], delay))
            self.results.append(copy.deepcopy(msg))
            waiter = self._waiters.pop(key, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(delay)

    def unanswered(self, older_than: float) -> dict[str, int]:
        """Interactions sent more than `older_than` seconds ago that have no response, by kind."""
        now, out = time.monotonic(), collections.Counter()
        for ix in list(self.sent_interactions):
            if not ix.acks and now - ix.dispatched > older_than:
                out[self.sent_at.get(ix.id, ("?", 0))[0]] += 1
        return dict(out)
