"""`/dialogue persona_a:… persona_b:… topic:… turns:…`: two personas of the server talk to each other. The first
continues the topic, then each answers the other's last text (service/dialogue.py builds the turns). Each turn
is one message in the channel, posted as its persona (`turn_output`), with the result buttons (Info, Report…)
of an ordinary generation. The whole dialogue is admitted at once by the cost of all its turns (bot.limits),
and held until the last turn ends. The member must be able to post in the channel themselves."""

from __future__ import annotations

import asyncio
import contextlib

import discord
from discord import app_commands
from discord.utils import MISSING

import service.dialogue
import service.policy
from bot import replies
from bot.autocomplete import persona_autocomplete
from bot.formatting import Rendered, user_error
from bot.limits import Claim, Refusal, actor_of, generate_limits, member_may_post
from bot.streaming import NO_MENTIONS, Output, _files, run_generation
from bot.views import result_view
from bot.webhooks import output_for
from core.markdown import escape
from service.dialogue import DEFAULT_TURNS, MAX_TURNS, MIN_TURNS


class ChannelOutput(Output):
    """A new message of the bot in a channel (not a reply), created on the first edit. The persona's name leads
    it (render_generation's header), so a turn posted as the bot still says whose it is."""

    def __init__(self, channel: discord.abc.Messageable, channel_id: int):
        self.channel, self.channel_id = channel, channel_id
        self.message: discord.Message | None = None

    def where(self) -> dict:
        return {"channel_id": self.channel_id}  # not reopened by a restarted bot: the dialogue stops there

    async def edit(self, rendered: Rendered, view: discord.ui.View | None = MISSING) -> int | None:
        if self.message is None:
            extra = {"view": view} if isinstance(view, discord.ui.View) else {}
            self.message = await self.channel.send(rendered.content, files=_files(rendered),
                                                   allowed_mentions=NO_MENTIONS, **extra)
            if self.on_posted is not None:
                self.on_posted(self.message.id)
        else:
            self.message = await self.message.edit(content=rendered.content, attachments=_files(rendered),
                                                   view=view, allowed_mentions=NO_MENTIONS)
        self.shown, self.last = True, rendered.content
        return self.message.id

    async def error(self, message: str) -> None:
        with contextlib.suppress(discord.HTTPException):
            if self.message is not None:
                await self.message.edit(content=self.stopped(message), view=None, allowed_mentions=NO_MENTIONS)
            else:
                await self.channel.send(f"⚠️ {message}", allowed_mentions=NO_MENTIONS)


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
    that fails ends the dialogue there."""
    previous: str | None = None
    done: list[int] = []
    for turn in range(dialogue.turns):
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
    return done


COMMANDS = (dialogue_command,)
