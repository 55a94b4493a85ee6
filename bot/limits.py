"""Permission and rate checks: Manage Server or the trainer role, per-user cooldowns and queued-job caps
with each guild's own settings (db guild_settings, cached for a few seconds).

The checks are discord.py app-command checks, so a refusal is raised before the command runs and becomes
an ephemeral reply (the interaction's only acknowledgement) in the tree's error handler. Buttons and
mentions call the same `Limits` methods directly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable

import discord
from discord import app_commands

import service.policy
from service.policy import Actor, Policy

POLICY_TTL = 10.0


class Refusal(app_commands.CheckFailure):
    """A refused request; the message is shown to the user (ephemeral)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class Cooldowns:
    """One `app_commands.Cooldown(1, per)` bucket per key; `per` comes from the guild's settings at the
    time of the request, so a changed setting applies to the next request."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self._buckets: dict[Hashable, app_commands.Cooldown] = {}
        self._clock = clock

    def hit(self, key: Hashable, per: float) -> app_commands.Cooldown | None:
        """Consume the key's token. Returns the exhausted bucket when the key is cooling down, else None."""
        if per <= 0:
            self._buckets.pop(key, None)
            return None
        now = self._clock()
        self._prune(now)
        bucket = self._buckets.get(key)
        if bucket is None or bucket.per != per:
            bucket = self._buckets[key] = app_commands.Cooldown(1, per)
        return bucket if bucket.update_rate_limit(now) is not None else None

    def retry_after(self, key: Hashable) -> float:
        bucket = self._buckets.get(key)
        return 0.0 if bucket is None else bucket.get_retry_after(self._clock())

    def reset(self, key: Hashable) -> None:
        """Give the token back (the request failed before it cost anything)."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.reset()

    def _prune(self, now: float) -> None:
        if len(self._buckets) > 1000:
            for key in [k for k, b in self._buckets.items() if now > b._last + b.per]:
                del self._buckets[key]


class Limits:
    def __init__(self, load: Callable[[int | None], Policy] = service.policy.policy, ttl: float = POLICY_TTL):
        self._load = load
        self._ttl = ttl
        self._cache: dict[int | None, tuple[float, Policy]] = {}
        self.cooldowns = Cooldowns()

    async def policy(self, guild_id: int | None) -> Policy:
        hit = self._cache.get(guild_id)
        if hit is not None and time.monotonic() - hit[0] < self._ttl:
            return hit[1]
        pol = await asyncio.to_thread(self._load, guild_id)
        self._cache[guild_id] = (time.monotonic(), pol)
        return pol

    def forget(self, guild_id: int | None) -> None:
        self._cache.pop(guild_id, None)

    async def check_generate(self, user_id: int, guild_id: int | None, in_flight: int) -> None:
        """Refuse a generate request over the user's queued-job cap or within their cooldown."""
        pol = await self.policy(guild_id)
        if in_flight >= max(pol.max_queued_jobs, 1):
            raise Refusal(f"You already have {in_flight} job(s) waiting (the limit here is {pol.max_queued_jobs}). "
                          "Wait for it to finish, or cancel it with `/queue`.")
        bucket = self.cooldowns.hit(("generate", guild_id, user_id), pol.cooldown_seconds)
        if bucket is not None:
            retry = bucket.get_retry_after()
            raise app_commands.CommandOnCooldown(bucket, retry)

    def refund(self, user_id: int, guild_id: int | None) -> None:
        self.cooldowns.reset(("generate", guild_id, user_id))

    async def may_train(self, actor: Actor) -> bool:
        return service.policy.may_train(actor, await self.policy(actor.guild_id))


def actor_of(interaction: discord.Interaction) -> Actor:
    """Who is asking, from the interaction (permissions as Discord resolved them in that channel)."""
    user = interaction.user
    roles = frozenset(r.id for r in getattr(user, "roles", ()) if not r.is_default())
    raw = getattr(user, "_roles", None)  # role ids as sent, even when the guild cache lacks a role
    if raw is not None:
        roles = roles | frozenset(int(r) for r in raw)
    perms = interaction.permissions
    operator = user.id in getattr(getattr(interaction.client, "settings", None), "owner_ids", ())
    return Actor(user.id, interaction.guild_id, interaction.channel_id,
                 can_manage=bool(perms.manage_guild or perms.administrator), role_ids=roles, operator=operator)


def may_post(permissions: discord.Permissions, channel: object = None) -> bool:
    """Whether a member with these permissions (resolved in the channel) may post there: View Channel and
    Send Messages (in a thread: Send Messages in Threads)."""
    send = permissions.send_messages_in_threads if isinstance(channel, discord.Thread) else permissions.send_messages
    return bool(permissions.view_channel and send)


def member_may_post(interaction: discord.Interaction) -> bool:
    """Whether the member may post in the interaction's channel themselves. Discord lets a member without
    Send Messages use a guild install's commands there; a public answer would then post for them. In a DM:
    yes."""
    return interaction.guild_id is None or may_post(interaction.permissions, interaction.channel)


def cooldown_message(error: app_commands.CommandOnCooldown) -> str:
    return f"Easy there: you can ask again <t:{int(time.time() + error.retry_after + 0.999)}:R>."


# -- app-command checks ------------------------------------------------------------------------------------

def generate_limits():
    """Cooldown and queued-job cap of the guild's settings, keyed on the user."""
    async def predicate(interaction: discord.Interaction) -> bool:
        bot = interaction.client
        await bot.limits.check_generate(interaction.user.id, interaction.guild_id,
                                        bot.jobs.in_flight(interaction.user.id))
        return True

    return app_commands.check(predicate)


def trainer_only():
    """Manage Server, or the guild's configured trainer role."""
    async def predicate(interaction: discord.Interaction) -> bool:
        if interaction.guild_id is None:
            raise Refusal("Use this command in a server.")
        actor = actor_of(interaction)
        if await interaction.client.limits.may_train(actor):
            return True
        pol = await interaction.client.limits.policy(interaction.guild_id)
        role = f" or the <@&{pol.trainer_role_id}> role" if pol.trainer_role_id else ""
        raise Refusal(f"You need the **Manage Server** permission{role} to do that.")

    return app_commands.check(predicate)


def upload_limit():
    """An attachment larger than the guild's cap is refused before anything is downloaded."""
    async def predicate(interaction: discord.Interaction) -> bool:
        resolved = (interaction.data or {}).get("resolved", {}).get("attachments", {})
        if resolved:
            pol = await interaction.client.limits.policy(interaction.guild_id)
            for att in resolved.values():
                if int(att.get("size", 0)) > pol.max_upload_bytes:
                    raise Refusal(f"`{att.get('filename', 'the file')}` is {int(att['size']) / 1e6:.1f} MB; the "
                                  f"limit here is {pol.max_upload_bytes / 1e6:.1f} MB.")
            total = sum(int(att.get("size", 0)) for att in resolved.values())  # several files: one corpus
            if total > pol.max_upload_bytes:
                raise Refusal(f"The {len(resolved)} files are {total / 1e6:.1f} MB together; the limit here is "
                              f"{pol.max_upload_bytes / 1e6:.1f} MB.")
        return True

    return app_commands.check(predicate)
