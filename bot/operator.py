"""`/operator …`: the deployment operator's tools in Discord, for the users in IMPROBABLE_OWNER_IDS only
(hidden from everyone else: no default permissions, and a check). `servers`, `reports`, `disable-persona`,
`enable-persona`, `block-server` (the bot leaves the server and its data is purged), `unblock-server`.
The same tools are `improbable operator …` and the console's commands (service/operator.py).

Also here: the bot's side of its standing in servers (removed: the purge waits for the grace period; added
to a blocked server: it leaves at once) and the retention sweep when jobs run in this process."""

from __future__ import annotations

import asyncio
import logging

import discord
from discord import app_commands

import service.operator
import service.policy
from bot import replies
from bot.formatting import user_error
from bot.limits import actor_of
from worker.app import forget_results, is_eager

log = logging.getLogger(__name__)
MAX_SHOWN = 25
SWEEP_CLAIM = "sweep:embedded"  # the claim of the process that sweeps now (see sweep_loop)


def is_owner(interaction: discord.Interaction) -> bool:
    return interaction.user.id in interaction.client.settings.owner_ids


operator_group = app_commands.Group(name="operator", description="The bot operator's tools.",
                                    default_permissions=discord.Permissions.none())


@operator_group.error
async def _refused(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
    await replies.fail(interaction, "Only the bot's operator can use `/operator`."
                       if isinstance(error, app_commands.CheckFailure) else "That did not work (it has been logged).")
    if not isinstance(error, app_commands.CheckFailure):
        log.error("operator command failed", exc_info=error)


async def _run(interaction: discord.Interaction, func, *args):
    """Defer (ephemeral), call the service in a thread; a refusal is shown and None returned."""
    await replies.defer(interaction, ephemeral=True)
    try:
        return await asyncio.to_thread(func, actor_of(interaction), *args)
    except service.policy.UserError as e:
        await replies.fail(interaction, user_error(e))
        return None


def server_lines(views, limit: int = MAX_SHOWN) -> list[str]:
    lines = []
    for v in views[:limit]:
        state = " BLOCKED" if v.blocked else (" (left)" if v.left_at else "")
        lines.append(f"{v.guild_id} {v.name or '?'}{state}: personas {', '.join(v.personas) or 'none'}; "
                     f"{v.uploads} uploads, {v.jobs} texts, {v.stored_bytes:,} bytes, {v.open_reports} open reports")
    return lines


def report_lines(reports, limit: int = MAX_SHOWN) -> list[str]:
    return [f"#{r.id} {r.created_at:%Y-%m-%d %H:%M} server {r.guild_id} by {r.reporter_id}, persona {r.persona}, "
            f"text {r.generation_id}: {r.reason[:200]!r} — {r.text[:200]!r}" for r in reports[:limit]]


def _block(text: str) -> str:
    return "```\n" + text.replace("```", "'''")[:1900] + "\n```"


@operator_group.command(name="servers", description="Servers with their personas, uploads, jobs and reports.")
@app_commands.check(is_owner)
async def op_servers(interaction: discord.Interaction) -> None:
    known = {g.id: g.name for g in interaction.client.guilds}
    views = await _run(interaction, service.operator.servers, known)
    if views is not None:
        await replies.send(interaction, _block("\n".join(server_lines(views)) or "No servers."))


@operator_group.command(name="reports", description="Open reports of generated texts.")
@app_commands.check(is_owner)
async def op_reports(interaction: discord.Interaction) -> None:
    found = await _run(interaction, service.operator.reports)
    if found is not None:
        await replies.send(interaction, _block("\n".join(report_lines(found)) or "No open reports."))


async def _set_disabled(interaction: discord.Interaction, persona: str, server: str | None, disabled: bool) -> None:
    guild_id = int(server) if server and server.isdigit() else None
    slug = await _run(interaction, service.operator.set_persona_disabled, persona, guild_id, disabled)
    if slug is not None:
        await replies.send(interaction, f"`{slug}` is {'disabled' if disabled else 'enabled again'}.")


@operator_group.command(name="disable-persona", description="Refuse a persona everywhere (built-ins included).")
@app_commands.describe(persona="The persona's name", server="The server id of a server's own persona")
@app_commands.check(is_owner)
async def op_disable(interaction: discord.Interaction, persona: str, server: str | None = None) -> None:
    await _set_disabled(interaction, persona, server, True)


@operator_group.command(name="enable-persona", description="Allow a disabled persona again.")
@app_commands.describe(persona="The persona's name", server="The server id of a server's own persona")
@app_commands.check(is_owner)
async def op_enable(interaction: discord.Interaction, persona: str, server: str | None = None) -> None:
    await _set_disabled(interaction, persona, server, False)


async def block(bot: discord.Client, actor: service.policy.Actor, guild_id: int) -> service.operator.Purged:
    """Block the server: purge its data, forget its jobs' results, leave it."""
    purged = await asyncio.to_thread(service.operator.block_server, actor, guild_id)
    bot.blocked_guilds.add(guild_id)
    await asyncio.to_thread(forget_results, purged.task_ids)
    if bot.get_guild(guild_id) is not None or not bot.settings.shards.owns(guild_id):
        await _leave(bot, guild_id)  # a server on another process's shard is left through the REST API too
    return purged


async def _leave(bot: discord.Client, guild_id: int) -> None:
    try:
        await bot.http.leave_guild(guild_id)
    except discord.NotFound:  # the bot is not in it (any more)
        pass


@operator_group.command(name="block-server", description="Leave a server for good and purge its data.")
@app_commands.describe(server="The server's id")
@app_commands.check(is_owner)
async def op_block(interaction: discord.Interaction, server: str) -> None:
    if not server.isdigit():
        await replies.fail(interaction, "Give the server's id (a number; see `/operator servers`).")
        return
    await replies.defer(interaction, ephemeral=True)
    purged = await block(interaction.client, actor_of(interaction), int(server))
    await replies.send(interaction, f"Server {server} is blocked: left, {purged.personas} personas and "
                                    f"{purged.generations} texts purged.")


@operator_group.command(name="unblock-server", description="Let a blocked server add the bot again.")
@app_commands.describe(server="The server's id")
@app_commands.check(is_owner)
async def op_unblock(interaction: discord.Interaction, server: str) -> None:
    done = await _run(interaction, service.operator.unblock_server, int(server) if server.isdigit() else 0)
    interaction.client.blocked_guilds.discard(int(server) if server.isdigit() else 0)
    if done is not None:
        await replies.send(interaction, f"Server {server} is " + ("unblocked." if done else "not blocked."))


# -- the bot's standing in servers, and the sweep ------------------------------------------------------------

async def guild_removed(guild: discord.Guild) -> None:
    """The bot was removed from the server (discord.py calls on_guild_remove only then, not for an outage)."""
    await asyncio.to_thread(service.operator.guild_left, guild.id, guild.name or "")


async def guild_joined(guild: discord.Guild) -> None:
    """Added (back) to a server: a pending purge is cancelled; a blocked server is left at once."""
    if not await asyncio.to_thread(service.operator.guild_joined, guild.id, guild.name or ""):
        log.info("left blocked server %s", guild.id)
        await guild.leave()


async def sweep_once() -> None:
    result = await asyncio.to_thread(service.operator.sweep)
    await asyncio.to_thread(forget_results, result.task_ids)
    if result.generations or result.guilds:
        log.info("retention sweep: %d texts deleted, servers purged: %s", result.generations, result.guilds)


async def sweep_loop(bot: discord.Client) -> None:
    """Embedded (jobs in this process, no beat): the retention sweep at start-up and every sweep_seconds, by
    one bot process at a time. The processes of a sharded bot each try, and the one that takes the sweep's
    claim in the shared SQL counters (bot.limits) sweeps: embedded means no broker, so no Redis lock, and a
    rule such as "the process of shard 0" would stop sweeping while that process is down."""
    if not is_eager():
        return
    every = bot.settings.sweep_seconds
    while not bot.is_closed():
        try:
            if await bot.limits.cooldown(SWEEP_CLAIM, every * 0.9) == 0:  # else another process swept lately
                await sweep_once()
        except Exception:  # noqa: BLE001 - a failed sweep is tried again next time
            log.exception("retention sweep failed")
        await asyncio.sleep(every)


COMMANDS = (operator_group,)
