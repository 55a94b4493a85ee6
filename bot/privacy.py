"""`/privacy show|export|delete`: what the bot stores about the user who asks, as a JSON file, and deleting
all of it (after a confirmation button). The service finds and deletes the rows and blobs
(service/privacy.py); the stored results of the user's jobs in the result backend are forgotten here
(worker.app.forget_results). Every answer is ephemeral."""

from __future__ import annotations

import asyncio
import io
import json

import discord
from discord import app_commands

import service.privacy
from bot import replies
from worker.app import forget_results

CONFIRM_SECONDS = 120

privacy_group = app_commands.Group(name="privacy", description="What the bot stores about you: see, export, delete.")


def describe(s: service.privacy.DataSummary) -> str:
    if s.empty:
        return "The bot stores nothing about you."
    lines = [f"- {s.generations} generated texts you asked for (prompt and text)",
             f"- {s.ambient_quotes} ambient replies that continued a message of yours",
             f"- {s.uploads} uploaded texts ({s.upload_bytes:,} bytes) and {s.training_runs} training runs you started",
             f"- {s.schedules} scheduled posts you made, {s.personas_created} personas you created",
             f"- {s.ambient_channels} channels where you switched ambient replies on, {s.reports} reports you filed",
             f"- {s.in_flight} texts being generated right now, {s.reactions} votes on the bot's texts (reactions)",
             f"- {s.voices} voices of you (`/voice me`), opted in to channel learning in {s.voice_optins} servers, "
             f"your messages in {s.learned_personas} personas learned from channels"]
    return "What the bot stores about you:\n" + "\n".join(lines) + \
        "\n`/privacy export` sends it all as a file, `/privacy delete` deletes it."


@privacy_group.command(name="show", description="What the bot stores about you.")
async def privacy_show(interaction: discord.Interaction) -> None:
    await replies.defer(interaction, ephemeral=True)
    found = await asyncio.to_thread(service.privacy.summary, interaction.user.id)
    await replies.send(interaction, describe(found))


@privacy_group.command(name="export", description="Everything the bot stores about you, as a JSON file.")
async def privacy_export(interaction: discord.Interaction) -> None:
    await replies.defer(interaction, ephemeral=True)
    data = await asyncio.to_thread(service.privacy.export, interaction.user.id)
    raw = json.dumps(data, indent=1, ensure_ascii=False).encode()
    file = discord.File(io.BytesIO(raw), filename=f"improbable-data-{interaction.user.id}.json")
    await replies.send(interaction, "Everything the bot stores about you is in this file.", attachments=[file])


async def delete_everything(user_id: int) -> service.privacy.Deleted:
    deleted = await asyncio.to_thread(service.privacy.delete_user_data, user_id)
    await asyncio.to_thread(forget_results, deleted.task_ids, user_id)
    return deleted


class ConfirmDelete(discord.ui.View):
    """The confirmation under `/privacy delete`: only the asker may press it."""

    def __init__(self, user_id: int):
        super().__init__(timeout=CONFIRM_SECONDS)
        self.user_id = user_id

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return interaction.user.id == self.user_id

    @discord.ui.button(label="Delete all my data", style=discord.ButtonStyle.danger,
                       custom_id="improbable:privacy:delete")
    async def confirm(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.defer()
        deleted = await delete_everything(self.user_id)
        retired = (f" Personas trained on your uploads now have no model (their server can train them again): "
                   f"{', '.join(deleted.retired)}." if deleted.retired else "")
        self.stop()
        await interaction.edit_original_response(
            content=f"Deleted: {deleted.generations} texts, {deleted.uploads} uploads, {deleted.schedules} "
                    f"schedules, {deleted.reports} reports, and your id from everything else.{retired}", view=None)


@privacy_group.command(name="delete", description="Delete everything the bot stores about you.")
async def privacy_delete(interaction: discord.Interaction) -> None:
    await replies.defer(interaction, ephemeral=True)
    found = await asyncio.to_thread(service.privacy.summary, interaction.user.id)
    await replies.send(interaction, describe(found) + "\n\nThis cannot be undone. Press the button within two "
                       "minutes to delete it all.", view=ConfirmDelete(interaction.user.id))


COMMANDS = (privacy_group,)
