"""`/queue`: your generate jobs and training runs with their positions; `cancel` one of them."""

from __future__ import annotations

import asyncio

import discord
from discord import app_commands

import service.policy
import service.training
from bot import replies
from bot.formatting import escape, split_message, user_error
from bot.limits import actor_of


async def job_autocomplete(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
    bot = interaction.client
    choices = [(f"generate {escape(j.label)}"[:100], f"job:{j.id}") for j in my_jobs(bot, interaction.user.id,
                                                                                     interaction.guild_id)]
    runs = await asyncio.to_thread(service.training.training_runs, actor_of(interaction), mine=True)
    choices += [(f"training run {r.id}: {r.persona_slug} ({r.status})"[:100], f"run:{r.id}") for r in runs]
    return [app_commands.Choice(name=n, value=v) for n, v in choices if current.lower() in n.lower()][:25]


def my_jobs(bot, user_id: int, guild_id: int | None) -> list:
    """The user's generate jobs asked for in this server (a DM's: outside any server); a job of another server
    is neither listed nor cancellable here."""
    return [j for j in bot.jobs.of_user(user_id) if j.guild_id == guild_id]


@app_commands.command(name="queue", description="Your jobs and their places in the queue; cancel one.")
@app_commands.describe(cancel="A job to cancel (pick from the list)")
@app_commands.autocomplete(cancel=job_autocomplete)
async def queue(interaction: discord.Interaction, cancel: str | None = None) -> None:
    await replies.defer(interaction, ephemeral=True)
    bot = interaction.client
    actor = actor_of(interaction)
    if cancel:
        kind, _, ident = cancel.partition(":")
        if kind == "job" and (job := bot.jobs.get(ident)) is not None and job.user_id == actor.user_id \
                and job.guild_id == actor.guild_id:
            await bot.jobs.cancel(job)
            await replies.send(interaction, f"Cancelled generate job {escape(job.label)}.")
            return
        if kind == "run" and ident.isdigit():
            try:
                view = await asyncio.to_thread(service.training.cancel_training, actor, int(ident))
            except service.policy.UserError as e:
                await replies.fail(interaction, user_error(e))
                return
            await replies.send(interaction, f"Run {view.id} (`{view.persona_slug}`): {view.status}"
                                            + (" (stopping)" if view.status == "running" else "") + ".")
            return
        await replies.fail(interaction, "That job is not waiting any more (or is not yours).")
        return
    jobs = my_jobs(bot, actor.user_id, actor.guild_id)
    runs = await asyncio.to_thread(service.training.training_runs, actor, mine=True)
    if not jobs and not runs:
        await replies.send(interaction, "You have nothing queued.")
        return
    lines = ["**Your jobs**"]
    for j in jobs:
        where = f"position {bot.jobs.position(j)}" if j.state == "PENDING" else j.state.lower()
        lines.append(f"generate · {escape(j.label)} · {where}")
    for r in runs:
        where = f"position {r.position}" if r.position else f"{r.status}, {r.progress.done_fraction() or 0:.0%}"
        lines.append(f"training run {r.id} · `{r.persona_slug}` · {where}")
    lines.append("-# Cancel one with `/queue cancel:`.")
    await replies.send(interaction, split_message("\n".join(lines))[0])


COMMANDS = (queue,)
