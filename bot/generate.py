"""`/generate`: a persona continues a prompt (the result buttons are bot/views.py). A member who may not
send messages in the channel gets the text ephemerally: the bot does not post for them."""

from __future__ import annotations

import asyncio
import logging

import discord
from discord import app_commands

import service.generation
import service.policy
from bot import replies
from bot.autocomplete import persona_autocomplete
from bot.formatting import user_error
from bot.limits import actor_of, generate_limits, member_may_post
from bot.pictures import picture_file
from bot.streaming import InteractionOutput, Output, WebhookOutput, run_generation
from bot.views import result_view
from bot.webhooks import output_for
from core.contracts import bounds, help_of
from core.settings import Settings

log = logging.getLogger(__name__)
DISCORD_INT_MAX = 2**53  # the largest integer option Discord accepts
MAX_LENGTH = int(Settings.model_fields["max_generate_tokens"].default)  # a deployment may cap it lower


def _range(kind: type, field: str, high: float | None = None):
    """A Discord option range from the contract's bounds (core.contracts.SamplingParams)."""
    low, top = bounds(field)
    return app_commands.Range[kind, kind(low), kind(min(top if high is None else high, DISCORD_INT_MAX))]


def _describe(field: str) -> str:
    return help_of(field)[:100]  # Discord's limit on an option description


@app_commands.command(name="generate", description="Continue a prompt in a persona's voice.")
@app_commands.describe(
    persona="Whose voice (see /personas)", prompt="Text to continue (may be empty)",
    length=_describe("max_tokens"), temperature=_describe("temperature"), top_k=_describe("top_k"),
    top_p=_describe("top_p"), improbability=_describe("improbability"), tolerance=_describe("tolerance"),
    seed=_describe("seed"), show="probabilities: attach a picture of each word's probability")
@app_commands.choices(show=[app_commands.Choice(name="probabilities", value="probabilities")])
@app_commands.autocomplete(persona=persona_autocomplete)
@generate_limits()
async def generate_command(interaction: discord.Interaction, persona: str, prompt: str = "",
                           length: _range(int, "max_tokens", MAX_LENGTH) | None = None,
                           temperature: _range(float, "temperature") | None = None,
                           top_k: _range(int, "top_k") | None = None,
                           top_p: _range(float, "top_p") | None = None,
                           improbability: _range(float, "improbability") | None = None,
                           tolerance: _range(float, "tolerance") | None = None,
                           seed: _range(int, "seed") | None = None, show: str | None = None) -> None:
    await replies.defer(interaction, ephemeral=not member_may_post(interaction))
    bot = interaction.client
    actor = actor_of(interaction)
    overrides = {"max_tokens": length, "temperature": temperature, "top_k": top_k, "top_p": top_p,
                 "improbability": improbability, "tolerance": tolerance, "seed": seed}
    try:
        request = await asyncio.to_thread(service.generation.prepare_generation, persona, prompt, actor, overrides)
    except service.policy.UserError as e:
        bot.limits.refund(actor.user_id, actor.guild_id)
        await replies.fail(interaction, user_error(e))
        return
    output = InteractionOutput(interaction)
    if member_may_post(interaction):  # as the persona, through the channel's webhook, where the bot may
        output = await output_for(bot, interaction.channel, request, output, interaction=interaction)
    generation_id = await run_generation(bot, output, request, result_view, user_id=actor.user_id,
                                         guild_id=actor.guild_id)
    if show == "probabilities" and generation_id:
        await attach_picture(interaction, generation_id, output)


PICTURE_EDIT_GAP = 1.1  # seconds after the result's last edit: Discord rate-limits edits of one message


async def attach_picture(interaction: discord.Interaction, generation_id: int, output: Output | None = None) -> None:
    """Add the probability picture (bot/pictures.py) to the result message, keeping its attachments (a
    message posted as the persona is edited through its webhook)."""
    picture = await picture_file(generation_id, actor_of(interaction))
    if picture is None:
        await replies.followup(interaction, "The probability picture of this text could not be drawn.",
                               ephemeral=True)
        return
    await asyncio.sleep(PICTURE_EDIT_GAP)
    try:
        if isinstance(output, WebhookOutput) and not output.fell_back:
            await output.add_files([picture])
            return
        message = await interaction.original_response()
        await interaction.edit_original_response(attachments=[*message.attachments,
                                                              picture])
    except discord.HTTPException:
        log.warning("could not attach the probability picture of generation %s", generation_id, exc_info=True)


COMMANDS = (generate_command,)
