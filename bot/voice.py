"""`/voice me|show|delete|optin|optout` (a member's own parody voice, and consent to be learned from) and
`/persona learn` (a persona trained on the messages of members who opted in; off unless the operator turned
channel learning on, as it needs Discord's express permission)."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import discord
from discord import app_commands

import service.policy
import service.quotas
import service.voices
from bot import replies
from bot.autocomplete import forget_names
from bot.formatting import escape, user_error
from bot.limits import actor_of, cooldown_message
from bot.personas import MINUTES, _download, _ingests, persona_group
from bot.training import start_run
from core.datapackage import clean_message, is_command

PROGRESS_SECONDS = 1.5  # between edits of the history-reading message (Discord's edits: at least 1 s apart)
MAX_MESSAGES = 50_000  # read at most this many messages in one /persona learn
INTENT_MISSING = ("Reading channel history needs the **Message Content** intent, which this bot does not have "
                  "(Developer Portal → Bot → Privileged Gateway Intents). Nothing was read.")
LEARN_OFF = ("Learning from channels is off in this deployment. Training on messages read through Discord's API "
             "needs Discord's express permission (Developer Policy), so the bot's operator turns it on with "
             "`IMPROBABLE_CHANNEL_LEARNING` only where Discord granted it. Members can still train their own voice "
             "from text they supply: `/voice me`.")


def message_content_granted(bot: discord.Client) -> bool:
    """Whether the bot receives message text: it asked for the intent and Discord's application flags grant it
    (the full intent of a verified app, or the limited one of an app in fewer than 100 servers)."""
    if not bot.intents.message_content:
        return False
    flags = bot.application_flags
    return bool(flags.gateway_message_content or flags.gateway_message_content_limited)


voice_group = app_commands.Group(name="voice", description="Your own parody voice, and being learned from.",
                                 guild_only=True)


async def _checked(interaction: discord.Interaction, file: discord.Attachment, minutes: float | None) -> bool:
    """The upload's limits before a byte is read (service.quotas.check_upload), then the train cooldown."""
    actor = actor_of(interaction)
    try:
        await asyncio.to_thread(service.voices.check_voice_upload, actor, [file.size], minutes)
    except service.policy.UserError as e:
        await replies.fail(interaction, user_error(e))
        return False
    refused = await interaction.client.limits.train_cooldown(actor)
    if refused is not None:
        await replies.fail(interaction, cooldown_message(refused))
        return False
    return True


@voice_group.command(name="me", description="Train a parody voice of you from text you supply.")
@app_commands.describe(file="Your Discord data package (.zip), a messages.json / messages.csv from it, or a .txt "
                            "of your own writing",
                       this_server_only="Keep only the messages you wrote in this server (needs the package .zip)",
                       minutes="Training time budget (default: the recipe's)")
async def me(interaction: discord.Interaction, file: discord.Attachment, this_server_only: bool = False,
             minutes: MINUTES | None = None) -> None:
    await replies.defer(interaction)
    if not await _checked(interaction, file, minutes):
        return
    actor = actor_of(interaction)
    pol = await interaction.client.limits.policy(interaction.guild_id)
    async with _ingests(interaction.client):
        files = await _download(interaction, [file])
        if files is None:
            return
        (data, filename), = files
        text = await asyncio.to_thread(service.voices.voice_text, data, filename,
                                       interaction.guild_id if this_server_only else None, pol.max_upload_bytes)
        new = await asyncio.to_thread(service.voices.train_voice, actor, interaction.user.display_name, text,
                                      minutes)
    await asyncio.to_thread(service.quotas.record_training, interaction.guild_id, minutes)
    kept = f"{text.kept:,} of your {text.read:,} messages" if text.read else "your text"
    new.warnings = (*new.warnings, f"Trained on {kept}; mentions, links and custom emoji left out. Only you can use "
                    f"it (`/generate persona:{new.persona_slug}`); every post is labelled as a parody.")
    await start_run(interaction, new)


@voice_group.command(name="show", description="Your voice here, and whether you opted in to being learned from.")
async def show(interaction: discord.Interaction) -> None:
    await replies.defer(interaction, ephemeral=True)
    view = await asyncio.to_thread(service.voices.show_voice, actor_of(interaction))
    voice = ("You have no voice here yet: `/voice me` with your data package or a text of yours." if not view.slug
             else f"Your voice: **{escape(view.display_name)}** (`{view.slug}`), "
                  + ("training" if view.training else "ready" if view.ready else "no model yet") + ".")
    optin = ("You opted in: managers' `/persona learn` may use your messages here (`/voice optout` to withdraw)."
             if view.opted_in else "You have not opted in to being learned from here (`/voice optin`).")
    await replies.send(interaction, f"{voice}\n{optin}")


@voice_group.command(name="delete", description="Delete your voice here, its texts and models.")
async def delete(interaction: discord.Interaction) -> None:
    await replies.defer(interaction, ephemeral=True)
    slug = await asyncio.to_thread(service.voices.delete_voice, actor_of(interaction))
    forget_names(interaction.guild_id)
    await replies.send(interaction, f"Deleted your voice `{slug}` with its texts and models." if slug
                       else "You have no voice here.")


@voice_group.command(name="optin", description="Let managers' /persona learn use your messages in this server.")
async def optin(interaction: discord.Interaction) -> None:
    await replies.defer(interaction, ephemeral=True)
    new = await asyncio.to_thread(service.voices.opt_in, actor_of(interaction))
    note = "" if interaction.client.settings.channel_learning else \
        " (Learning from channels is off in this deployment, so nothing reads them now.)"
    await replies.send(interaction, ("You opted in" if new else "You had already opted in") + ": a persona a manager "
                       "learns from channels here may include your messages. `/voice optout` removes them again."
                       + note)


@voice_group.command(name="optout", description="Withdraw: your voice and your messages in learned personas go.")
async def optout(interaction: discord.Interaction) -> None:
    await replies.defer(interaction, ephemeral=True)
    out = await asyncio.to_thread(service.voices.opt_out, actor_of(interaction))
    forget_names(interaction.guild_id)
    lines = ["You are opted out here." + ("" if out.was_opted_in else " (You had not opted in.)")]
    if out.voice:
        lines.append(f"Deleted your voice `{out.voice}` with its texts and models.")
    if out.retired:
        names = ", ".join(f"`{s}`" for s in out.retired)
        lines.append(f"Removed your messages from {names} and retired {'it' if len(out.retired) == 1 else 'them'}: "
                     "its models are deleted, and it has none until a manager trains it again.")
    await replies.send(interaction, "\n".join(lines))


# -- /persona learn ------------------------------------------------------------------------------------------

CHANNEL = "A text channel to learn from"


class Reading:
    """The history read so far, shown in the deferred response at most every PROGRESS_SECONDS."""

    def __init__(self, interaction: discord.Interaction):
        self.interaction, self.read, self.kept, self.skipped = interaction, 0, 0, 0
        self.members: dict[int, list[str]] = {}
        self.channel, self.last_edit = "", 0.0

    async def show(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_edit < PROGRESS_SECONDS:
            return
        if now - self.last_edit < 1.0:
            await asyncio.sleep(1.0 - (now - self.last_edit))
        await replies.send(self.interaction, f"Reading {self.channel}: {self.read:,} messages read, {self.kept:,} "
                           f"kept from {len(self.members)} member(s) who opted in.")
        self.last_edit = time.monotonic()


def _keep(message: discord.Message, opted: set[int], bot_id: int) -> str:
    """The cleaned text of a message to learn from, or "": an opted-in member's own message, not a bot's, a
    webhook's or a system message, not a command nor addressed to the bot, with text left once cleaned."""
    if message.author.bot or message.webhook_id is not None or message.author.id not in opted:
        return ""
    if message.type not in (discord.MessageType.default, discord.MessageType.reply):
        return ""
    content = message.content or ""
    if is_command(content) or content.lstrip().startswith((f"<@{bot_id}>", f"<@!{bot_id}>")):
        return ""
    return clean_message(content)


async def _read(interaction: discord.Interaction, channels: list, days: int, opted: set[int]) -> Reading:
    reading = Reading(interaction)
    after = discord.Object(discord.utils.time_snowflake(discord.utils.utcnow() - timedelta(days=days)))
    bot = interaction.client
    for channel in channels:
        reading.channel = f"<#{channel.id}>"
        source = bot.get_channel(channel.id) or bot.get_partial_messageable(channel.id)
        async for message in source.history(limit=MAX_MESSAGES - reading.read, after=after):
            reading.read += 1
            text = _keep(message, opted, bot.user.id)
            if text:
                reading.kept += 1
                reading.members.setdefault(message.author.id, []).append(text)
            await reading.show()
    return reading


def _refused_channel(interaction: discord.Interaction, channel: app_commands.AppCommandChannel) -> str | None:
    """Why a channel cannot be learned from: the manager cannot view it, or the bot cannot read its history."""
    if not channel.permissions.view_channel:
        return f"You cannot view <#{channel.id}>, so it cannot be learned from."
    cached = interaction.guild.get_channel(channel.id) if interaction.guild else None
    if cached is None or not isinstance(cached, discord.abc.Messageable):
        return f"<#{channel.id}> is not a text channel the bot can read."
    mine = cached.permissions_for(interaction.guild.me)
    if not (mine.view_channel and mine.read_message_history):
        return f"The bot cannot read the history of <#{channel.id}> (it needs View Channel and Read Message History)."
    return None


def _hidden(interaction: discord.Interaction, channels: list) -> bool:
    """Whether any channel is hidden from @everyone (then the persona is used only in these channels)."""
    everyone = interaction.guild.default_role
    return any(not interaction.guild.get_channel(c.id).permissions_for(everyone).view_channel for c in channels)


@persona_group.command(name="learn", description="Train a persona on the messages of members who opted in.")
@app_commands.describe(name="The persona's name (new, or one learned before)", channel=CHANNEL, channel2=CHANNEL,
                       channel3=CHANNEL, days="How many days of history to read (default 30)",
                       minutes="Training time budget (default: the recipe's)")
async def learn(interaction: discord.Interaction, name: str, channel: app_commands.AppCommandChannel,
                channel2: app_commands.AppCommandChannel | None = None,
                channel3: app_commands.AppCommandChannel | None = None,
                days: app_commands.Range[int, 1, 365] = 30, minutes: MINUTES | None = None) -> None:
    await replies.defer(interaction)
    bot = interaction.client
    if not bot.settings.channel_learning:
        await replies.fail(interaction, LEARN_OFF)
        return
    actor = actor_of(interaction)
    await asyncio.to_thread(service.voices.check_learn, actor, name, minutes)  # permission, name, budget
    if not message_content_granted(bot):
        await replies.fail(interaction, INTENT_MISSING)
        return
    channels = list({c.id: c for c in (channel, channel2, channel3) if c is not None}.values())
    for c in channels:
        if (why := _refused_channel(interaction, c)) is not None:
            await replies.fail(interaction, why + " Nothing was read.")
            return
    opted = await asyncio.to_thread(service.voices.opted_in, interaction.guild_id)
    reading = await _read(interaction, channels, days, opted)
    await reading.show(force=True)
    new = await asyncio.to_thread(service.voices.learn, actor, name, reading.members, [c.id for c in channels],
                                  _hidden(interaction, channels), minutes)
    await asyncio.to_thread(service.quotas.record_training, interaction.guild_id, minutes)
    forget_names(interaction.guild_id)
    await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - reading.last_edit)))  # edits at least 1 s apart
    new.warnings = (*new.warnings, f"Learned from {reading.kept:,} of {reading.read:,} messages by "
                    f"{len(reading.members)} member(s) who opted in (bots, commands, mentions and links left out).")
    await start_run(interaction, new)


COMMANDS = (voice_group,)
