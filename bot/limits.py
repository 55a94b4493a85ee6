"""Permission and rate checks: Manage Server or the trainer role, per-user cooldowns and caps on jobs in
flight, with each guild's own settings within the deployment's ceilings (service.policy, cached for a few
seconds), counted in SQL counters every bot process shares (service.quotas), jobs by their cost (core.cost).
Only the policy cache is kept in the process, per server, so in the process of the server's shard (core/shards.py):
a member of servers on two processes' shards meets the same cooldowns and caps in both.

The checks are discord.py app-command checks, so a refusal is raised before the command runs and becomes
an ephemeral reply (the interaction's only acknowledgement) in the tree's error handler. Buttons and
mentions call the same `Limits` methods directly.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import discord
from discord import app_commands

import service.policy
import service.quotas
from bot.formatting import user_error
from service.policy import Actor, Policy
from service.quotas import Quotas

log = logging.getLogger(__name__)
POLICY_TTL = 10.0
JOB_TTL = 900.0  # seconds a job's claim counts at most (longer than any job: bot_job_timeout is 300 s)


COOLDOWN_COST_CAP = 4.0


class Refusal(app_commands.CheckFailure):
    """A refused request; the message is shown to the user (ephemeral)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Claim:
    """A generate job counted against a member and a server by its cost until released."""

    id: str
    cost: float


class Limits:
    """The guild's policy (cached for a few seconds) and the counters every bot process shares
    (service.quotas: cooldowns, jobs in flight by cost, usage windows)."""

    def __init__(self, load: Callable[[int | None], Policy] = service.policy.policy, ttl: float = POLICY_TTL,
                 quotas: Quotas | None = None, job_ttl: float = JOB_TTL):
        self._load = load
        self._ttl = ttl
        self._cache: dict[int | None, tuple[float, Policy]] = {}
        self.quotas = quotas or Quotas()
        self.job_ttl = job_ttl  # a claim left by a bot that died expires after this
        self._background: set[asyncio.Task] = set()

    async def policy(self, guild_id: int | None) -> Policy:
        hit = self._cache.get(guild_id)
        if hit is not None and time.monotonic() - hit[0] < self._ttl:
            return hit[1]
        pol = await asyncio.to_thread(self._load, guild_id)
        self._cache[guild_id] = (time.monotonic(), pol)
        return pol

    def forget(self, guild_id: int | None) -> None:
        self._cache.pop(guild_id, None)

    async def check_generate(self, user_id: int, guild_id: int | None, in_flight: int = 0) -> None:
        """Refuse a generate request over the member's jobs in flight (units, every bot process together) or
        within their cooldown. `in_flight`: this process's own count (kept for callers; the shared one rules)."""
        pol = await self.policy(guild_id)
        seen = await asyncio.to_thread(self.quotas.in_flight, guild_id, user_id)
        if seen.member_jobs and seen.member_units >= pol.max_queued_jobs:
            raise Refusal(f"You already have {seen.member_units:g} job unit(s) waiting (the limit here is "
                          f"{pol.max_queued_jobs}). Wait for them to finish, or cancel one with `/queue`.")
        retry = await asyncio.to_thread(self.quotas.hit, _generate_key(guild_id, user_id), pol.cooldown_seconds)
        if retry > 0:
            raise app_commands.CommandOnCooldown(app_commands.Cooldown(1, pol.cooldown_seconds), retry)

    def refund(self, user_id: int, guild_id: int | None) -> None:
        """Give the cooldown back (the request failed before it cost anything); done in the background."""
        self._spawn(asyncio.to_thread(self.quotas.reset, _generate_key(guild_id, user_id)))

    async def admit(self, request, *, member_id: int | None, guild_id: int | None, cooldown: bool = True,
                    cost: float | None = None) -> Claim:
        """Count a prepared generate job (service.generation.PreparedGeneration) against the member and the
        server by its cost, or raise Refusal. `cooldown`: a job of n units makes the member's cooldown n
        times as long (at most COOLDOWN_COST_CAP times) (not for ambient replies, which the member did not ask for).
        `cost`: the units when the caller knows them (a dialogue admits all its turns at once; `request` unused)."""
        pol = await self.policy(guild_id)
        if cost is None:
            cost = await asyncio.to_thread(service.quotas.request_cost, request.payload, request.family)
        claim = Claim(uuid.uuid4().hex, cost)
        try:
            await asyncio.to_thread(self.quotas.claim, claim.id, guild_id, member_id, cost,
                                    member_cap=pol.max_queued_jobs, server_cap=pol.limits.jobs_per_server,
                                    ttl=self.job_ttl)
        except service.policy.UserError as e:
            raise Refusal(user_error(e)) from None
        if cooldown and member_id is not None and cost > 1 and pol.cooldown_seconds > 0:
            # a dear job cools down longer, at most COOLDOWN_COST_CAP times (its units already hold the member)
            await asyncio.to_thread(self.quotas.extend, _generate_key(guild_id, member_id),
                                    pol.cooldown_seconds * min(cost, COOLDOWN_COST_CAP))
        return claim

    async def release(self, claim: Claim | None) -> None:
        if claim is not None:
            try:
                await asyncio.to_thread(self.quotas.release, claim.id)
            except Exception:  # noqa: BLE001 - the claim expires by itself
                log.warning("could not release job claim %s", claim.id, exc_info=True)

    async def ambient_turn(self, guild_id: int, channel_id: int, cooldown_seconds: float) -> bool:
        """Whether an ambient reply may go out now: the channel's cooldown (at least the ceiling's) is free,
        and the server is under its replies per hour (the ceiling). Claims both when it may."""
        top = (await self.policy(guild_id)).limits
        per = max(cooldown_seconds, top.ambient_cooldown_seconds)
        if await asyncio.to_thread(self.quotas.hit, f"ambient:{channel_id}", per) > 0:
            return False
        taken = await asyncio.to_thread(self.quotas.take, f"ambient:guild:{guild_id}", 1,
                                        top.ambient_replies_per_hour, 3600)
        return taken is not None

    async def cooldown(self, key: str, per: float) -> float:
        """Claim a plain cooldown `key` for `per` seconds: 0 when free, else the seconds left."""
        return await asyncio.to_thread(self.quotas.hit, key, per)

    async def train_cooldown(self, actor: Actor) -> app_commands.CommandOnCooldown | None:
        """Claim the actor's training cooldown in their server (shared by every bot process, managers included;
        the operator has none): None when free, else the refusal to show."""
        if actor.operator:
            return None
        pol = await self.policy(actor.guild_id)
        retry = await self.cooldown(f"train:{actor.guild_id}:{actor.user_id}", pol.train_cooldown_seconds)
        if retry <= 0:
            return None
        return app_commands.CommandOnCooldown(app_commands.Cooldown(1, pol.train_cooldown_seconds), retry)

    async def may_train(self, actor: Actor) -> bool:
        return service.policy.may_train(actor, await self.policy(actor.guild_id))

    def _spawn(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _generate_key(guild_id: int | None, user_id: int | None) -> str:
    return f"generate:{guild_id}:{user_id}"


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
