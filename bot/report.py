"""Reporting a generated text to the bot's operator: the Report button under every result (bot/views.py) and
`/report text:<message link or generation id> reason:<why>`. The report (reporter, server, text, persona,
a snapshot of the text, the reason, the time) waits in the operator's list (`/operator reports`,
`improbable operator reports`)."""

from __future__ import annotations

import asyncio

import discord
from discord import app_commands

import service.operator
import service.policy
from bot import replies
from bot.formatting import user_error
from bot.limits import actor_of


async def report_generation(interaction: discord.Interaction, ref: str, reason: str) -> None:
    """File the report and tell the reporter alone."""
    await replies.defer(interaction, ephemeral=True)
    try:
        report_id = await asyncio.to_thread(service.operator.file_report, actor_of(interaction), ref, reason)
    except service.policy.UserError as e:
        await replies.fail(interaction, user_error(e))
        return
    await replies.send(interaction, f"Thank you: report #{report_id} is with the bot's operator. "
                                    "Add details with `/report` if you like.")


@app_commands.command(name="report", description="Report a generated text to the bot's operator.")
@app_commands.describe(text="A link to the bot's message, or the text's id (shown by Info)",
                       reason="What is wrong with it")
@app_commands.guild_only()
async def report_command(interaction: discord.Interaction, text: str,
                         reason: app_commands.Range[str, 1, 1000]) -> None:
    await report_generation(interaction, text, reason)


COMMANDS = (report_command,)
