"""`/dialogue persona_a:… persona_b:… topic:… turns:…`: two personas of the server talk to each other. The first
continues the topic, then each answers the other's last text (service/dialogue.py builds the turns). Each turn
is one message in the channel, posted as its persona (`turn_output`), with the result buttons (Info, Report…)
of an ordinary generation. The whole dialogue is admitted at once by the cost of all its turns (bot.limits),
and held until the last turn ends. The member must be able to post in the channel themselves. A dialogue that
a bot restart interrupts is not resumed: it ends with a note saying so (`end_interrupted_dialogues`)."""

from __future__ import annotations

import asyncio
import logging

import discord
from discord import app_commands

import service.dialogue
import service.policy
from bot import replies
from bot.autocomplete import persona_autocomplete
from bot.formatting import user_error
from bot.limits import Claim, Refusal, actor_of, generate_limits, member_may_post
from bot.streaming import NO_MENTIONS, ChannelOutput, Output, run_generation
from bot.views import result_view
from bot.webhooks import output_for
from core.markdown import escape
from service.dialogue import DEFAULT_TURNS, MAX_TURNS, MIN_TURNS

log = logging.getLogger(__name__)


async def turn_output(bot, interaction: discord.Interaction, request) -> Output:
    """Where one turn is posted: the one place that decides how a persona speaks in the dialogue. As the persona
    through the channel's webhook where the bot may (bot/webhooks.py: its name and avatar), else as the bot (a
    new message led by the persona's name in bold)."""
    return await output_for(bot, interaction.channel, request, ChannelOutput(interaction.channel,
                                                                            interaction.channel_id))


def _opening(dialogue: service.dialogue.Dialogue) -> str:
    a, b = dialogue.speakers
    return (f"🎭 A dialogue of {dialogue.turns} turns between **{escape(a.display_name)}** and "
            f"**{escape(b.display_name)}** on *{escape(dialogue.topic)}*. Generated text, not their words.")


@app_commands.command(name="dialogue", description="Two personas talk to each other about a topic.")
@app_commands.describe(persona_a="Who speaks first", persona_b="Who answers",
                       topic="The first persona's opening words", turns=f"How many messages ({MIN_TURNS}-{MAX_TURNS})")
@app_commands.autocomplete(persona_a=persona_autocomplete, persona_b=persona_autocomplete)
@app_commands.guild_only()
@generate_limits()
async def dialogue_command(interaction: discord.Interaction, persona_a: str, persona_b: str, topic: str,
                           turns: app_commands.Range[int, MIN_TURNS, MAX_TURNS] = DEFAULT_TURNS) -> None:
    bot = interaction.client
    actor = actor_of(interaction)
    if not member_may_post(interaction):  # the turns would post where the member may not
        bot.limits.refund(actor.user_id, actor.guild_id)
        raise Refusal("You cannot send messages in this channel, so a dialogue cannot be posted here.")
    await replies.defer(interaction)
    try:
        dialogue = await asyncio.to_thread(service.dialogue.plan_dialogue, actor, persona_a, persona_b, topic, turns)
        cost = await asyncio.to_thread(service.dialogue.dialogue_cost, dialogue, actor)
        claim = await bot.limits.admit(None, member_id=actor.user_id, guild_id=actor.guild_id, cost=cost)
    except service.policy.UserError as e:
        bot.limits.refund(actor.user_id, actor.guild_id)
        await replies.fail(interaction, user_error(e))
        return
    except Refusal as e:
        bot.limits.refund(actor.user_id, actor.guild_id)
        await replies.fail(interaction, e.message)
        return
    await replies.send(interaction, _opening(dialogue))
    try:
        await run_dialogue(bot, interaction, dialogue, actor, claim)
    finally:
        await bot.limits.release(claim)


async def run_dialogue(bot, interaction: discord.Interaction, dialogue: service.dialogue.Dialogue,
                       actor: service.policy.Actor, claim: Claim) -> list[int]:
    """Post the turns one after another, each prompted with the previous turn's text; the generation ids.
    Every turn's job runs under the dialogue's claim (its own claim, of no cost, only names the job); a turn
    that fails ends the dialogue there. The dialogue is kept in SQL while it runs (by its claim's id): a bot
    stopped meanwhile leaves it there, and its next start ends it with a note (`end_interrupted_dialogues`)."""
    done: list[int] = []
    await _kept(service.dialogue.remember_dialogue, claim.id, dialogue, interaction.guild_id, interaction.channel_id)
    stopping = False
    try:
        await _post_turns(bot, interaction, dialogue, actor, claim, done)
    except asyncio.CancelledError:
        stopping = True
        raise
    finally:
        if not stopping:
            await _kept(service.dialogue.forget_dialogue, claim.id)
    return done


async def _post_turns(bot, interaction: discord.Interaction, dialogue: service.dialogue.Dialogue,
                      actor: service.policy.Actor, claim: Claim, done: list[int]) -> None:
    previous: str | None = None
    for turn in range(dialogue.turns):
        await _kept(service.dialogue.turn_started, claim.id, turn)
        try:
            request = await asyncio.to_thread(service.dialogue.turn_request, dialogue, turn, previous, actor)
        except service.policy.UserError as e:  # a persona retired or disabled meanwhile
            await replies.followup(interaction, user_error(e), ephemeral=True)
            break
        output = await turn_output(bot, interaction, request)
        gid = await run_generation(bot, output, request, result_view, user_id=actor.user_id,
                                   guild_id=actor.guild_id, source="dialogue",
                                   claim=Claim(f"{claim.id}-{turn}", 0.0))
        if gid is None:
            break
        done.append(gid)
        previous = await asyncio.to_thread(service.dialogue.turn_text, gid)


async def _kept(call, *args) -> None:
    """Keep the dialogue's row up to date, best effort: without the database the dialogue still runs (a
    restart then stops it without a note)."""
    try:
        await asyncio.to_thread(call, *args)
    except Exception as e:  # noqa: BLE001 - the database being away must not fail the dialogue
        log.warning("could not keep dialogue %s for a restart: %s", args[0], e)


def interrupted_note(row: service.dialogue.Interrupted) -> str:
    where = f"at turn {row.started} of {row.turns}" if row.started else "before its first turn"
    return (f"⚠️ The bot restarted while posting this dialogue of {escape(row.speakers)}, so it stops {where}. "
            "Run `/dialogue` again for a new one.")


async def end_interrupted_dialogues(bot) -> int:
    """At start-up: each dialogue an earlier run of the bot was posting when it stopped (on this process's
    shards) ends with a note in its channel, and its claim on the limits is released. It is not resumed; its
    interrupted turn is finished like any generation in flight (bot/resume.py). Returns how many."""
    try:
        rows = await asyncio.to_thread(service.dialogue.interrupted_dialogues, bot.settings.shards)
    except Exception as e:  # noqa: BLE001 - the database being away must not keep the bot from starting
        log.warning("could not read the dialogues being posted before the restart: %s", e)
        return 0
    for row in rows:
        channel = bot.get_partial_messageable(row.channel_id, guild_id=row.guild_id)
        try:
            await channel.send(interrupted_note(row), allowed_mentions=NO_MENTIONS)
        except discord.HTTPException as e:
            log.warning("could not end dialogue %s with a note: %s", row.id, e)
        await bot.limits.release(Claim(row.id, 0.0))
        await _kept(service.dialogue.forget_dialogue, row.id)
    return len(rows)


COMMANDS = (dialogue_command,)
