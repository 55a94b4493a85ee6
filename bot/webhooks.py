"""Posting as a persona: its own name and avatar through a channel webhook, where the bot has Manage
Webhooks; elsewhere (threads, DMs, no permission, the webhook deleted) as the bot, with the persona named in
the message as before.

The design: one webhook per (channel, persona), created by the bot, with the persona's avatar uploaded as
the webhook's own avatar. The other design, one webhook per channel with a per-message `username` and
`avatar_url`, needs every avatar at a public URL that Discord fetches: the bot serves nothing publicly, and
the URLs of Discord's own attachments expire. Uploading the avatar to the webhook needs no URL at all. The
cost is Discord's limit of 15 webhooks per channel: the bot keeps at most `MAX_PER_CHANNEL` of its own per
channel and deletes the least recently used one to make room (and once more when Discord answers that the
channel is full, 30007, because the server's integrations use some). Where Discord refuses one (403: the
bot's cached permissions were wrong, or the workers, which have none, asked), every process posts there as
the bot for an hour without asking again (db.webhooks.REFUSED_SECONDS): refused requests count towards the
10,000 invalid requests in 10 minutes that get a host's address blocked.

The webhooks are created by the bot, so they are owned by the application: their messages may carry the
result buttons, and clicks on them reach the bot as on any message (bot/views.py); Regenerate and More
improbable edit the clicked message through the interaction, Delete removes it through the interaction too
(the bot is not the author of a webhook's message). Streaming edits of a result go through the webhook's
edit-message endpoint (bot.streaming.WebhookOutput); a restarted bot finishes a text it was writing there
through the same webhook (`reopen`).

Every persona's name carries the label " · AI" (core.avatar.webhook_name), part of the username: Discord
shows its APP tag on webhook messages only sometimes. Text is escaped and sent with no mentions allowed, as
every other output. Webhook ids and tokens are kept in SQL per channel and persona (service/webhooks.py); a
token is a secret: it is never logged, and it is deleted with the server's data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re

import discord
from discord.utils import MISSING

import service.generation
import service.webhooks
from bot.streaming import NO_MENTIONS, ChannelOutput, Output, WebhookOutput, in_background
from core.avatar import webhook_name
from core.markdown import escape

log = logging.getLogger(__name__)
MESSAGE_LIMIT = 2000
MAX_WEBHOOKS = 30007  # Discord's error code: the channel has its 15 webhooks
_TOKENS = re.compile(r"(webhooks/\d+/)[\w.-]+|('token': ')[^']+'")


class HideWebhookTokens(logging.Filter):
    """discord.py logs at DEBUG each webhook request's URL (which holds the token) and each answer (a new
    webhook's includes it): the token is replaced before any handler sees the line."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        hidden = _TOKENS.sub(lambda m: f"{m[1]}<token>" if m[1] else f"{m[2]}<token>'", message)
        if hidden != message:
            record.msg, record.args = hidden, ()
        return True


for _name in ("discord.http", "discord.webhook.async_"):
    logging.getLogger(_name).addFilter(HideWebhookTokens())

_locks: dict[tuple[int, str], asyncio.Lock] = {}  # (channel, persona): one webhook created at a time


def usable(channel, permissions: discord.Permissions | None = None) -> bool:
    """Whether the bot may post as a persona in `channel`: a server's text channel (not a thread or a DM)
    where it has Manage Webhooks (`permissions`: the bot's there, e.g. an interaction's app_permissions)."""
    if not isinstance(channel, discord.TextChannel):
        return False
    if permissions is None:
        permissions = channel.permissions_for(channel.guild.me)
    return permissions.manage_webhooks


def _partial(bot, hook: service.webhooks.Hook) -> discord.Webhook:
    return discord.Webhook.partial(hook.webhook_id, hook.token, client=bot)


async def _evict(bot, hooks: list[service.webhooks.Hook]) -> None:
    for hook in hooks:
        with contextlib.suppress(discord.NotFound):
            await _partial(bot, hook).delete(reason="room for another persona's webhook")
        await asyncio.to_thread(service.webhooks.forget_hook, hook.webhook_id)


async def _create(bot, channel: discord.TextChannel, slug: str, display_name: str) -> discord.Webhook | None:
    data, digest = await asyncio.to_thread(service.webhooks.avatar, display_name, slug, channel.guild.id)
    await _evict(bot, await asyncio.to_thread(service.webhooks.evictable, channel.id))
    for attempt in range(2):
        try:
            webhook = await channel.create_webhook(name=webhook_name(display_name), avatar=data,
                                                   reason=f"post as the persona {slug}")
            break
        except discord.Forbidden:  # no Manage Webhooks after all: not asked again for a while, by any process
            await asyncio.to_thread(service.webhooks.refused, channel.id)
            return None
        except discord.HTTPException as e:
            full = e.code == MAX_WEBHOOKS
            oldest = (await asyncio.to_thread(service.webhooks.evictable, channel.id, 0))[-1:] if full else []
            if attempt or not oldest:
                log.warning("no webhook for %s in channel %s: %s", slug, channel.id, e)
                return None
            await _evict(bot, oldest)
    hook = service.webhooks.Hook(webhook.id, webhook.token, digest)
    await asyncio.to_thread(service.webhooks.keep_hook, channel.guild.id, channel.id, slug, hook)
    return webhook


async def webhook_for(bot, channel: discord.TextChannel, slug: str, display_name: str, *,
                      ask_again: bool = False) -> discord.Webhook | None:
    """The channel's webhook for this persona, created (with the persona's avatar) when there is none;
    None when Discord refuses one, or refused one there lately (service.webhooks.refused_here) unless
    `ask_again`. A stored webhook whose avatar is out of date gets the current one."""
    async with _locks.setdefault((channel.id, slug), asyncio.Lock()):
        try:
            hook = await asyncio.to_thread(service.webhooks.hook_for, channel.id, slug)
            if hook is None:
                if not ask_again and await asyncio.to_thread(service.webhooks.refused_here, channel.id):
                    return None
                return await _create(bot, channel, slug, display_name)
            webhook = _partial(bot, hook)
            data, digest = await asyncio.to_thread(service.webhooks.avatar, display_name, slug, channel.guild.id)
            if digest != hook.avatar:
                with contextlib.suppress(discord.HTTPException):
                    await webhook.edit(avatar=data, reason="the persona's avatar changed")
                    await asyncio.to_thread(service.webhooks.note_avatar, hook.webhook_id, digest)
            return webhook
        except (discord.HTTPException, OSError) as e:
            log.warning("no webhook for %s in channel %s: %s", slug, channel.id, e)
            return None


def _forget(webhook_id: int) -> None:
    in_background(asyncio.to_thread(service.webhooks.forget_hook, webhook_id))


async def output_for(bot, channel, request: service.generation.PreparedGeneration, fallback: Output, *,
                     interaction: discord.Interaction | None = None) -> Output:
    """Where a generated text goes: a message posted as the persona through the channel's webhook when the
    bot may, else `fallback` (the interaction's response, or a reply as the bot)."""
    permissions = interaction.app_permissions if interaction is not None else None
    if not usable(channel, permissions):
        return fallback
    # Discord's own word that the bot has Manage Webhooks, in a command of a manager (Manage Server or Manage
    # Webhooks): they may just have given it, so a recent refusal there is not trusted (one request a command)
    fixed = interaction is not None and (interaction.permissions.manage_guild or
                                         interaction.permissions.manage_webhooks)
    webhook = await webhook_for(bot, channel, request.payload["persona"], request.display_name, ask_again=fixed)
    if webhook is None:
        return fallback
    return WebhookOutput(webhook, webhook_name(request.display_name), channel.id, fallback,
                         interaction=interaction, gone=_forget)


async def reopen(bot, row: service.generation.InFlight) -> WebhookOutput | None:
    """The persona's message of a job remembered by an earlier run of the bot (`row.webhook_id` posted
    `row.message_id`), edited through that webhook again; None when the webhook is gone (its messages can no
    longer be edited)."""
    hook = await asyncio.to_thread(service.webhooks.hook_by_id, row.webhook_id)
    if hook is None or row.channel_id is None:
        return None
    channel = bot.get_partial_messageable(row.channel_id, guild_id=row.guild_id)
    output = WebhookOutput(_partial(bot, hook), webhook_name(row.request.display_name), row.channel_id,
                           ChannelOutput(channel, row.channel_id), gone=_forget)
    output.message_id = row.message_id
    return output


def _named(display_name: str, content: str) -> str:
    head = f"**{escape(display_name)}**"
    return content if content.startswith(head) else f"{head}\n{content}"


async def post_as(bot, channel, persona: str, display_name: str, content: str, *,
                  view: discord.ui.View = MISSING) -> discord.Message:
    """Post `content` (already escaped, like every generated text) in `channel` as the persona (slug
    `persona`) through its webhook; as the bot, with the persona named in bold, where the bot may not.
    No mentions ever ping."""
    extra = {"view": view} if view is not MISSING else {}
    if usable(channel):
        webhook = await webhook_for(bot, channel, persona, display_name)
        if webhook is not None:
            try:
                return await webhook.send(content[:MESSAGE_LIMIT], username=webhook_name(display_name),
                                          allowed_mentions=NO_MENTIONS, wait=True, **extra)
            except (discord.NotFound, discord.Forbidden):
                _forget(webhook.id)
    return await channel.send(_named(display_name, content)[:MESSAGE_LIMIT], allowed_mentions=NO_MENTIONS, **extra)
