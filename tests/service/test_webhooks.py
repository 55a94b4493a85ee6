"""The persona webhooks' records (service/webhooks.py, db/webhooks.py): one per channel and persona, the
least recently used evicted first, a token that never shows in a repr and goes with the server's data, and
the persona's label and avatar (core/avatar.py)."""

from __future__ import annotations

import time

import service.webhooks as webhooks
from core.avatar import avatar_png, initials, webhook_name
from db.retention import purge_guild

from .test_service import GUILD, env  # noqa: F401 - pytest fixtures used by name

CHANNEL, OTHER_CHANNEL = 5, 6


def _hook(n: int) -> webhooks.Hook:
    return webhooks.Hook(1000 + n, f"secret-token-{n}", "digest")


def test_one_webhook_per_channel_and_persona_and_the_least_recently_used_goes_first(env):  # noqa: F811
    for n, slug in enumerate(("alice", "hatter", "queen")):
        webhooks.keep_hook(GUILD, CHANNEL, slug, _hook(n))
        time.sleep(0.01)
    webhooks.keep_hook(GUILD, OTHER_CHANNEL, "alice", _hook(9))
    assert webhooks.hook_for(CHANNEL, "alice") == _hook(0)  # used now: the newest
    assert webhooks.hook_for(CHANNEL, "nobody") is None
    assert [h.webhook_id for h in webhooks.evictable(CHANNEL, keep=1)] == [1002, 1001]
    assert webhooks.evictable(CHANNEL) == []  # under the cap
    webhooks.keep_hook(GUILD, CHANNEL, "alice", _hook(5))  # a new one replaces the channel's old one
    assert webhooks.hook_for(CHANNEL, "alice") == _hook(5)
    webhooks.forget_hook(1005)
    assert webhooks.hook_for(CHANNEL, "alice") is None
    assert "secret-token" not in repr(_hook(1)) and "secret-token" not in str([_hook(1)])


def test_a_server_purge_deletes_its_webhook_tokens(env):  # noqa: F811
    webhooks.keep_hook(GUILD, CHANNEL, "alice", _hook(1))
    webhooks.keep_hook(GUILD + 1, OTHER_CHANNEL, "alice", _hook(2))
    purge_guild(GUILD)
    assert webhooks.hook_for(CHANNEL, "alice") is None
    assert webhooks.hook_for(OTHER_CHANNEL, "alice") == _hook(2)


def test_the_label_and_the_avatar():
    assert webhook_name("Alice") == "Alice · AI"
    assert webhook_name("Discord Clyde") == "persona · AI"  # Discord refuses these words in a webhook's name
    assert len(webhook_name("x" * 200)) == 80
    assert initials("Mad Hatter") == "MH" and initials("alice") == "AL" and initials("!!") == "?"
    png = avatar_png("Alice", "alice")
    assert png.startswith(b"\x89PNG") and png == avatar_png("Alice", "alice") != avatar_png("Alice", "alice2")
