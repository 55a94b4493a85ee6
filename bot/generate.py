"""`/generate` and the result buttons (regenerate, continue, more improbable)."""

from __future__ import annotations

import asyncio

import discord
from discord import app_commands

from bot import replies, service
from bot.autocomplete import persona_autocomplete
from bot.limits import Refusal, actor_of, cooldown_message, generate_limits
from bot.streaming import InteractionOutput, run_generation

MAX_LENGTH = 2000


@app_commands.command(name="generate", description="Continue a prompt in a persona's voice.")
@app_commands.describe(
    persona="Whose voice (see /personas)", prompt="Text to continue (may be empty)",
    length="How many characters (character personas) or words (word personas)",
    temperature="0 = always the likeliest token; higher = wilder (default: the persona's)",
    top_k="Sample among the k likeliest tokens only (0 = off)", top_p="Nucleus sampling mass (1 = off)",
    improbability="Improbability drive: pick tokens whose probability is nearest this (0 = off)",
    tolerance="Improbability band: sample among tokens within p·(1±tolerance)",
    seed="Same persona, prompt, settings and seed ⇒ same text")
@app_commands.autocomplete(persona=persona_autocomplete)
@generate_limits()
async def generate(interaction: discord.Interaction, persona: str, prompt: str = "",
                   length: app_commands.Range[int, 1, MAX_LENGTH] | None = None,
                   temperature: app_commands.Range[float, 0.0, 5.0] | None = None,
                   top_k: app_commands.Range[int, 0, 1000] | None = None,
                   top_p: app_commands.Range[float, 0.01, 1.0] | None = None,
                   improbability: app_commands.Range[float, 0.0, 1.0] | None = None,
                   tolerance: app_commands.Range[float, 0.0, 10.0] | None = None,
                   seed: app_commands.Range[int, 0, 2**31 - 1] | None = None) -> None:
    await replies.defer(interaction)
    bot = interaction.client
    actor = actor_of(interaction)
    overrides = {"max_tokens": length, "temperature": temperature, "top_k": top_k, "top_p": top_p,
                 "improbability": improbability, "tolerance": tolerance, "seed": seed}
    try:
        request = await asyncio.to_thread(service.prepare_generation, persona, prompt, actor, overrides)
    except service.UserError as e:
        bot.limits.refund(actor.user_id, actor.guild_id)
        await replies.fail(interaction, e.message)
        return
    await run_generation(bot, InteractionOutput(interaction), request, user_id=actor.user_id,
                         guild_id=actor.guild_id)


ACTIONS = {"regenerate": "regenerate", "improbable": "make more improbable", "continue": "continue"}


async def follow_up(interaction: discord.Interaction, generation_id: int, mode: str, *,
                    owner_id: int | None) -> None:
    """A result button. Regenerate and more-improbable edit the message, so only its requester may use
    them; continue posts a new message and is open to everyone."""
    bot = interaction.client
    if owner_id and interaction.user.id != owner_id:
        await replies.fail(interaction, f"Only <@{owner_id}>, who asked for this text, can {ACTIONS[mode]} it. "
                                        "Press **Continue**, or ask for your own with `/generate`.")
        return
    try:
        await bot.limits.check_generate(interaction.user.id, interaction.guild_id,
                                        bot.jobs.in_flight(interaction.user.id))
    except Refusal as e:
        await replies.fail(interaction, e.message)
        return
    except app_commands.CommandOnCooldown as e:
        await replies.fail(interaction, cooldown_message(e))
        return
    if mode == "continue":
        await replies.defer(interaction)
    else:
        await replies.defer_update(interaction)
    actor = actor_of(interaction)
    try:
        request = await asyncio.to_thread(service.follow_up, generation_id, mode, actor)
    except service.UserError as e:
        bot.limits.refund(actor.user_id, actor.guild_id)
        await replies.fail(interaction, e.message)
        return
    await run_generation(bot, InteractionOutput(interaction), request, user_id=actor.user_id,
                         guild_id=actor.guild_id, source=f"button:{mode}")


COMMANDS = (generate,)
