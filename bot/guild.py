"""`/settings show|set`: a server's limits (trainer role, cooldowns, queued jobs, upload size)."""

from __future__ import annotations

import asyncio

import discord
from discord import app_commands

import service.policy
from bot import replies
from bot.limits import actor_of


def describe_policy(pol: service.policy.Policy) -> str:
    """The server's effective limits, each with the deployment's ceiling it cannot pass."""
    top = pol.limits
    role = f"<@&{pol.trainer_role_id}>" if pol.trainer_role_id else "none (Manage Server only)"
    lines = [f"Trainer role: {role}",
             f"Cooldown between generations: {pol.cooldown_seconds} s per member, times the job's cost in units "
             f"(at least {top.min_cooldown_seconds} s)",
             f"Cooldown between training runs: {pol.train_cooldown_seconds} s per member "
             f"(at least {top.min_train_cooldown_seconds} s)",
             f"Jobs a member may have waiting: {pol.max_queued_jobs} units (at most {top.jobs_per_member}; a "
             "default request is 1 unit, a long, blended or improbable one more)",
             f"Job units running for the whole server: at most {top.jobs_per_server}",
             f"Largest upload: {pol.max_upload_bytes / 1e6:g} MB (at most {top.upload_bytes / 1e6:g} MB)",
             f"Texts and models kept: at most {top.stored_bytes / 1e6:g} MB · training: at most "
             f"{top.train_minutes_per_day:g} minutes a day",
             f"Schedules: at most {top.schedules}, each at most once every {top.min_schedule_interval_seconds} s",
             f"Ambient replies: chance at most {top.ambient_chance:g}, at least {top.ambient_cooldown_seconds} s "
             f"apart in a channel, at most {top.ambient_replies_per_hour} an hour"]
    return "\n".join([*(f"⚠️ {note}" for note in pol.notes), *lines])


settings_group = app_commands.Group(name="settings", description="This server's Improbable limits.",
                                    guild_only=True, default_permissions=discord.Permissions(manage_guild=True))


@settings_group.command(name="show", description="Who may train, cooldowns, job and upload limits.")
async def show(interaction: discord.Interaction) -> None:
    await replies.defer(interaction, ephemeral=True)
    pol = await asyncio.to_thread(service.policy.policy, interaction.guild_id)
    await replies.send(interaction, describe_policy(pol))


@settings_group.command(name="set", description="Change this server's limits (Manage Server).")
@app_commands.describe(trainer_role="Members with this role may train, delete and schedule personas",
                       clear_trainer_role="Only Manage Server may train again",
                       cooldown="Seconds between one member's generations (0 = none)",
                       train_cooldown="Seconds between one member's training runs",
                       max_jobs="Jobs one member may have waiting", max_upload_mb="Largest text upload, in MB")
async def set_(interaction: discord.Interaction, trainer_role: discord.Role | None = None,
               clear_trainer_role: bool = False, cooldown: app_commands.Range[int, 0, 86400] | None = None,
               train_cooldown: app_commands.Range[int, 0, 604800] | None = None,
               max_jobs: app_commands.Range[int, 1, 100] | None = None,
               max_upload_mb: app_commands.Range[float, 0.01, 100.0] | None = None) -> None:
    await replies.defer(interaction, ephemeral=True)
    pol = await asyncio.to_thread(service.policy.update_policy, actor_of(interaction),
                                  trainer_role_id=trainer_role.id if trainer_role else None,
                                  clear_trainer_role=clear_trainer_role, cooldown_seconds=cooldown,
                                  train_cooldown_seconds=train_cooldown, max_queued_jobs=max_jobs,
                                  max_upload_mb=max_upload_mb)
    interaction.client.limits.forget(interaction.guild_id)
    await replies.send(interaction, "Saved.\n" + describe_policy(pol))


COMMANDS = (settings_group,)
