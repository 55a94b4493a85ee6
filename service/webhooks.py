"""The bot's persona webhooks, as the bot may reach them (it never touches the database itself): which
webhook posts as a persona in a channel, remembering and forgetting them, the ones to evict, and a persona's
avatar. bot/webhooks.py talks to Discord; this module only keeps the records."""

from __future__ import annotations

from core.avatar import avatar_png, digest
from db.session import session_scope
from db.webhooks import MAX_PER_CHANNEL, Hook, find, forget, is_ours, remember, set_avatar, to_evict

__all__ = ["MAX_PER_CHANNEL", "Hook", "avatar", "evictable", "forget_hook", "hook_for", "keep_hook",
           "note_avatar", "posts_as_persona"]


def hook_for(channel_id: int, persona_slug: str) -> Hook | None:
    with session_scope() as session:
        return find(session, channel_id, persona_slug)


def posts_as_persona(webhook_id: int) -> bool:
    """Whether a message's webhook is one of the bot's own (a persona speaking), so replies to it are to us."""
    with session_scope() as session:
        return is_ours(session, webhook_id)


def keep_hook(guild_id: int, channel_id: int, persona_slug: str, hook: Hook) -> None:
    with session_scope() as session:
        remember(session, guild_id=guild_id, channel_id=channel_id, persona_slug=persona_slug, hook=hook)


def note_avatar(webhook_id: int, avatar_digest: str) -> None:
    with session_scope() as session:
        set_avatar(session, webhook_id, avatar_digest)


def forget_hook(webhook_id: int) -> None:
    with session_scope() as session:
        forget(session, webhook_id)


def evictable(channel_id: int, keep: int = MAX_PER_CHANNEL - 1) -> list[Hook]:
    with session_scope() as session:
        return to_evict(session, channel_id, keep)


def avatar(display_name: str, persona_slug: str) -> tuple[bytes, str]:
    """The persona's avatar (PNG bytes) and its digest: drawn from its name (core.avatar)."""
    data = avatar_png(display_name, persona_slug)
    return data, digest(data)
