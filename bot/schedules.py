"""`/schedule add|list|remove`: a persona posts into a channel every interval or on a cron expression.

A member schedules posts only into a channel where they may view and send messages themselves
(`member_can_post`), and only where the bot may too (`bot_can_post`, checked by the service).

The bot only manages the schedule rows; the worker's beat-driven `improbable.dispatch_schedules` claims each
due slot once and `improbable.post_scheduled` posts it.
"""

from __future__ import annotations

import asyncio

import discord
from discord import app_commands

import service.schedules
from bot import replies
from bot.autocomplete import persona_autocomplete
from bot.formatting import describe_every, escape, split_message, truncate
from bot.limits import actor_of, may_post, trainer_only

schedule_group = app_commands.Group(name="schedule", description="Scheduled posts of a persona into a channel.",
                                    guild_only=True)


def bot_can_post(channel) -> bool | None:
    """Whether the bot may view and send messages in the channel, from the cached guild and its overwrites;
    None when the cache cannot tell (the worker then pauses the schedule at its first refused post)."""
    guild = getattr(channel, "guild", None)
    me = guild.me if guild is not None else None
    if me is None or not isinstance(channel, discord.abc.GuildChannel):
        return None
    permissions = channel.permissions_for(me)
    return permissions.view_channel and permissions.send_messages


def member_can_post(channel, member) -> bool:
    """Whether the member may view and send messages in the channel (roles and overwrites from the cache)."""
    if not isinstance(member, discord.Member) or not isinstance(channel, discord.abc.GuildChannel):
        return False
    return may_post(channel.permissions_for(member), channel)


def _every(view: service.schedules.ScheduleView, markup: bool = True) -> str:
    return describe_every(view.interval_seconds, view.cron, markup=markup)


@schedule_group.command(name="add", description="Post a persona's text into a channel on a schedule.")
@app_commands.describe(persona="Whose voice", channel="Where to post",
                       every="An interval: 30m, 2h, 1h30m, 1d (or use cron)",
                       cron="A 5-field cron expression in UTC, e.g. '0 9 * * 1-5' (or use every)",
                       prompt="Text each post continues (optional)")
@app_commands.autocomplete(persona=persona_autocomplete)
@trainer_only()
async def add(interaction: discord.Interaction, persona: str, channel: discord.TextChannel,
              every: str | None = None, cron: str | None = None, prompt: str = "") -> None:
    if not member_can_post(channel, interaction.user):
        await replies.fail(interaction, f"You cannot post in {channel.mention} yourself (you need **View Channel** "
                                        "and **Send Messages** there), so you cannot schedule posts into it.")
        return
    await replies.defer(interaction, ephemeral=True)
    sched = await asyncio.to_thread(service.schedules.add_schedule, actor_of(interaction), persona, channel.id,
                                    every=every, cron=cron, prompt=prompt, bot_can_post=bot_can_post(channel))
    await replies.send(interaction, f"Schedule {sched.id}: `{sched.persona_slug}` posts in <#{sched.channel_id}> "
                                    f"{_every(sched)}" + (f", continuing “{escape(truncate(prompt, 200))}”." if prompt
                                                        else "."))


@schedule_group.command(name="list", description="This server's scheduled posts.")
async def list_(interaction: discord.Interaction) -> None:
    await replies.defer(interaction, ephemeral=True)
    rows = await asyncio.to_thread(service.schedules.list_schedules, interaction.guild_id)
    if not rows:
        await replies.send(interaction, "No scheduled posts here. Add one with `/schedule add`.")
        return
    lines = [f"**{s.id}** · `{s.persona_slug}` in <#{s.channel_id}> · {_every(s)}"
             + (f" · “{escape(truncate(s.prompt, 80))}”" if s.prompt else "")
             + ("" if s.enabled else f"\n  ⏸ paused: {escape(truncate(s.problem or 'posting failed', 150))} "
                "(fix the channel's permissions, then remove it and add it again)") for s in rows]
    chunks = split_message("\n".join(lines))
    await replies.send(interaction, chunks[0])
    for chunk in chunks[1:]:
        await replies.followup(interaction, chunk, ephemeral=True)



async def schedule_autocomplete(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[int]]:
    rows = await asyncio.to_thread(service.schedules.list_schedules, interaction.guild_id)
    return [app_commands.Choice(name=f"{s.id}: {s.persona_slug} {_every(s, markup=False)}"[:100], value=s.id)
            for s in rows if current in str(s.id) or current.lower() in s.persona_slug][:25]


@schedule_group.command(name="remove", description="Stop a scheduled post.")
@app_commands.describe(schedule="The schedule's number (see /schedule list)")
@app_commands.autocomplete(schedule=schedule_autocomplete)
@trainer_only()
async def remove(interaction: discord.Interaction, schedule: int) -> None:
    await replies.defer(interaction, ephemeral=True)
    removed = await asyncio.to_thread(service.schedules.remove_schedule, actor_of(interaction), schedule)
    await replies.send(interaction, f"Removed schedule {removed.id} ({removed.persona_slug} in "
                                    f"<#{removed.channel_id}>, {_every(removed)}).")


COMMANDS = (schedule_group,)
