"""Acknowledging interactions and showing errors, whatever state an interaction is in.

Every command defers first (Discord allows 3 s for the first response, and only one), then edits the
deferred message or follows up. A defer is public or ephemeral for good, so errors after a *public*
defer are shown by deleting the "thinking…" message and sending an ephemeral follow-up (Discord turns the
first follow-up after a thinking defer into an edit of that message, which would be public). Errors after
an ephemeral defer simply edit it. Refusals before the defer are the ephemeral first response itself.

Every send carries AllowedMentions.none().
"""

from __future__ import annotations

import logging

import discord

log = logging.getLogger(__name__)
NO_MENTIONS = discord.AllowedMentions.none()
MODE = "improbable.mode"  # interaction.extras key: "public" | "ephemeral" | "update"


async def defer(interaction: discord.Interaction, *, ephemeral: bool = False) -> None:
    """Acknowledge at once with "thinking…" (a component click that edits its message: `defer_update`)."""
    if interaction.response.is_done():
        return
    interaction.extras[MODE] = "ephemeral" if ephemeral else "public"
    await interaction.response.defer(ephemeral=ephemeral, thinking=True)


async def defer_update(interaction: discord.Interaction) -> None:
    """A component interaction that will edit the message it is on."""
    if interaction.response.is_done():
        return
    interaction.extras[MODE] = "update"
    await interaction.response.defer()


async def fail(interaction: discord.Interaction, message: str) -> None:
    """Show `message` to the user alone, and leave nothing 'thinking…'."""
    try:
        if not interaction.response.is_done():
            await interaction.response.send_message(message, ephemeral=True, allowed_mentions=NO_MENTIONS)
            return
        mode = interaction.extras.get(MODE, "public")
        if mode == "ephemeral":
            await interaction.edit_original_response(content=message, attachments=[], view=None,
                                                     allowed_mentions=NO_MENTIONS)
            return
        if mode == "public":
            try:
                await interaction.delete_original_response()
            except discord.NotFound:
                pass
            interaction.extras[MODE] = "deleted"
        await interaction.followup.send(message, ephemeral=True, allowed_mentions=NO_MENTIONS)
    except discord.HTTPException:
        log.warning("could not show an error to %s: %s", interaction.user, message, exc_info=True)


async def send(interaction: discord.Interaction, content: str | None = None, **kwargs) -> discord.Message | None:
    """The (first) answer of a deferred interaction: edits the deferred message."""
    kwargs.setdefault("allowed_mentions", NO_MENTIONS)
    if not interaction.response.is_done():
        await interaction.response.send_message(content, **kwargs)
        return None
    kwargs.pop("ephemeral", None)
    return await interaction.edit_original_response(content=content, **kwargs)


async def followup(interaction: discord.Interaction, content: str | None = None, **kwargs) -> discord.Message:
    kwargs.setdefault("allowed_mentions", NO_MENTIONS)
    return await interaction.followup.send(content, wait=True, **kwargs)
