"""The buttons under every generated text, persistent across restarts: one `DynamicItem` class whose
custom_id carries the action, the generation id and (for the actions that change the message) the
requester's user id. The class is registered at start-up (`Client.add_dynamic_items`), so a click on a
message posted before a restart still works.

    improbable:regen:<generation_id>:<user_id>   Regenerate: same parameters, new seed (edits the message)
    improbable:more:<generation_id>:<user_id>    More improbable: lower target probability (edits it)
    improbable:cont:<generation_id>              Continue: a new message continuing the text (anyone)
    improbable:info:<generation_id>              Info: how the text was made, shown to the presser alone
    improbable:del:<generation_id>               Delete: the requester or a manager (checked against the row)
    improbable:report:<generation_id>            Report: queue the text for the bot's operator (bot/report.py)

Regenerate and more-improbable edit the message, so only its requester may use them (`interaction_check`);
continue posts a new message and is open to everyone. User id 0: anybody may change it.

A click acts only when the generation in its custom_id is the one shown in the clicked message, in this
server (`shown_here`): a button id copied onto another message, or another server's generation, does
nothing. A member who may not send messages in the channel gets Continue's text ephemerally, and may not
change a public result.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

import discord
from discord import app_commands

import service.controls
import service.generation
from bot import replies
from bot.formatting import generation_info, user_error
from bot.limits import Refusal, actor_of, cooldown_message, member_may_post
from bot.pictures import picture_file
from bot.streaming import InteractionOutput, run_generation
from bot.webhooks import output_for


@dataclass(frozen=True)
class Action:
    key: str  # in the custom id
    mode: str  # service.generation.follow_up's mode
    label: str
    emoji: str
    style: discord.ButtonStyle
    verb: str  # "Only <@owner> … can {verb}."
    owner_only: bool  # edits the message, so only its requester may press it


ACTIONS = {a.key: a for a in (
    Action("regen", "regenerate", "Regenerate", "🎲", discord.ButtonStyle.secondary, "regenerate it", True),
    Action("cont", "continue", "Continue", "➡️", discord.ButtonStyle.primary, "continue it", False),
    Action("more", "improbable", "More improbable", "🌀", discord.ButtonStyle.secondary,
           "make it more improbable", True),
    # not owner_only by user id: Delete also lets managers in, so service.controls checks it against the row
    Action("info", "info", "Info", "ℹ️", discord.ButtonStyle.secondary, "inspect it", False),
    Action("del", "delete", "Delete", "🗑️", discord.ButtonStyle.danger, "delete it", False),
    Action("report", "report", "Report", "🚩", discord.ButtonStyle.secondary, "report it", False),
)}
CONTROLS = ("info", "del")  # answered here, not by a new generation


class ResultButton(discord.ui.DynamicItem[discord.ui.Button],
                   template=r"improbable:(?P<action>regen|cont|more|info|del|report):(?P<gid>[0-9]+)(?::(?P<uid>[0-9]+))?"):
    def __init__(self, action: str, generation_id: int, user_id: int = 0):
        self.action, self.generation_id, self.user_id = ACTIONS[action], generation_id, user_id
        custom_id = f"improbable:{action}:{generation_id}" + (f":{user_id}" if self.action.owner_only else "")
        super().__init__(discord.ui.Button(label=self.action.label, emoji=self.action.emoji,
                                           style=self.action.style, custom_id=custom_id))

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]):
        return cls(match["action"], int(match["gid"]), int(match["uid"] or 0))

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if not await shown_here(interaction, self.generation_id):
            await replies.fail(interaction, "This button does not belong to this message, so it does nothing here.")
            return False
        if self.action.owner_only and self.user_id and interaction.user.id != self.user_id:
            await replies.fail(interaction, f"Only <@{self.user_id}>, who asked for this text, can "
                                            f"{self.action.verb}. Press **Continue**, or ask for your own "
                                            "with `/generate`.")
            return False
        return True

    async def callback(self, interaction: discord.Interaction) -> None:
        if self.action.key == "info":
            await show_info(interaction, self.generation_id)
        elif self.action.key == "report":
            await report_result(interaction, self.generation_id)
        elif self.action.key == "del":
            await delete_result(interaction, self.generation_id)
        else:
            await follow_up(interaction, self.generation_id, self.action)


DYNAMIC_ITEMS = (ResultButton,)


WAIT_FOR_MESSAGE = (0.1, 0.2, 0.4, 0.8)  # seconds: a click can come before the result's message id is stored


async def shown_here(interaction: discord.Interaction, generation_id: int) -> bool:
    """Whether the generation is the one shown in the clicked message, in this server (the row's message and
    guild ids). No such row: True, and the service answers that the text is gone."""
    message = interaction.message
    if message is None:
        return False
    for delay in (*WAIT_FOR_MESSAGE, None):
        shown = await asyncio.to_thread(service.generation.where_shown, generation_id)
        if shown is None or shown.message_id is not None or delay is None:
            break
        await asyncio.sleep(delay)
    if shown is None:
        return True
    return shown.message_id == message.id and shown.guild_id == interaction.guild_id


def result_view(generation_id: int, user_id: int | None) -> discord.ui.View:
    """The buttons for one result (user_id 0 or None: anybody may change it)."""
    view = discord.ui.View(timeout=None)
    for key in ("regen", "cont", "more", "info", "del", "report"):
        view.add_item(ResultButton(key, generation_id, user_id or 0))
    return view


async def show_info(interaction: discord.Interaction, generation_id: int) -> None:
    """Info: an ephemeral summary of how the text was made (service.controls.generation_info), with the
    probability picture attached (bot/pictures.py). Acknowledged first: drawing takes a moment, longer on a
    busy host, and Discord drops an interaction not answered within 3 s."""
    await replies.defer(interaction, ephemeral=True)
    try:
        info = await asyncio.to_thread(service.controls.generation_info, generation_id, actor_of(interaction))
    except service.policy.UserError as e:
        await replies.fail(interaction, user_error(e))
        return
    picture = await picture_file(generation_id, actor_of(interaction))
    await replies.send(interaction, generation_info(info), attachments=[picture] if picture else [])


async def report_result(interaction: discord.Interaction, generation_id: int) -> None:
    """Report: anyone; the text goes to the operator's list (`/report` adds a reason)."""
    from bot.report import report_generation

    await report_generation(interaction, str(generation_id), "Reported with the button under the text.")


async def delete_result(interaction: discord.Interaction, generation_id: int) -> None:
    """Delete: the requester or a manager; the row is marked deleted, then the message removed."""
    try:
        await asyncio.to_thread(service.controls.delete_generation, generation_id, actor_of(interaction))
    except service.policy.UserError as e:
        await replies.fail(interaction, user_error(e))
        return
    await replies.defer_update(interaction)
    try:
        if interaction.message.webhook_id is not None:  # posted as a persona: the bot is not its author
            await interaction.delete_original_response()
        else:
            await interaction.message.delete()
    except discord.NotFound:
        pass  # already gone (deleted twice, or by a moderator)


async def follow_up(interaction: discord.Interaction, generation_id: int, action: Action) -> None:
    """A pressed result button: the same limits as /generate, then the derived request, streamed. Continue
    answers ephemerally when the member may not post in the channel; a public result is not changed for them."""
    bot = interaction.client
    public = member_may_post(interaction)
    if action.owner_only and not public and not (interaction.message and interaction.message.flags.ephemeral):
        await replies.fail(interaction, "You cannot send messages in this channel, so you cannot change this text.")
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
    if action.owner_only:
        await replies.defer_update(interaction)
    else:
        await replies.defer(interaction, ephemeral=not public)
    actor = actor_of(interaction)
    try:
        request = await asyncio.to_thread(service.generation.follow_up, generation_id, action.mode, actor)
    except service.policy.UserError as e:
        bot.limits.refund(actor.user_id, actor.guild_id)
        await replies.fail(interaction, user_error(e))
        return
    output = InteractionOutput(interaction)
    if not action.owner_only and public:  # a new message: as the persona, where the bot may
        output = await output_for(bot, interaction.channel, request, output, interaction=interaction)
    await run_generation(bot, output, request, result_view, user_id=actor.user_id,
                         guild_id=actor.guild_id, source=f"button:{action.mode}")
