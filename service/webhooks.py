"""The bot's persona webhooks, as the bot may reach them (it never touches the database itself): which
webhook posts as a persona in a channel, remembering and forgetting them, the ones to evict, and a persona's
avatar. bot/webhooks.py talks to Discord; this module only keeps the records."""

from __future__ import annotations

from core.avatar import avatar_png, digest
from db.session import session_scope
from db.storage import open_storage
from db.webhooks import (
    MAX_PER_CHANNEL,
    REFUSED_SECONDS,
    Hook,
    avatar_key,
    by_id,
    chosen_avatar,
    creation_refused,
    find,
    forget,
    is_ours,
    note_refused,
    remember,
    set_avatar,
    to_evict,
)
from service.errors import UserError
from service.policy import Actor

__all__ = ["MAX_PER_CHANNEL", "REFUSED_SECONDS", "Hook", "avatar", "evictable", "forget_hook", "hook_by_id", "hook_for",
           "keep_hook", "note_avatar", "posts_as_persona", "choose_avatar", "refused_here", "refused"]


def hook_for(channel_id: int, persona_slug: str) -> Hook | None:
    with session_scope() as session:
        return find(session, channel_id, persona_slug)


def refused_here(channel_id: int) -> bool:
    """Whether Discord refused the bot a webhook in the channel lately (db.webhooks.REFUSED_SECONDS): post as
    the bot there without asking again."""
    with session_scope() as session:
        return creation_refused(session, channel_id)


def refused(channel_id: int) -> None:
    """Discord refused the bot a webhook in the channel (403): no process asks again for a while."""
    with session_scope() as session:
        note_refused(session, channel_id)


def hook_by_id(webhook_id: int) -> Hook | None:
    """A webhook of the bot's by its id (a restarted bot reopens a message it posted)."""
    with session_scope() as session:
        return by_id(session, webhook_id)


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


def avatar(display_name: str, persona_slug: str, guild_id: int | None = None) -> tuple[bytes, str]:
    """The persona's avatar in a server (PNG bytes) and its digest: the one its managers chose
    (`/persona avatar`), else drawn from its name (core.avatar)."""
    data = chosen_avatar(open_storage(), guild_id, persona_slug) or avatar_png(display_name, persona_slug)
    return data, digest(data)


MAX_AVATAR_BYTES = 2_000_000
AVATAR_SIDE = 128


def choose_avatar(actor: Actor, persona_slug: str, image: bytes | None) -> str:
    """Set (an image's bytes) or reset (None) the avatar a persona posts with in the actor's server: Manage
    Server or the trainer role. The image is checked and re-encoded as a 128×128 PNG; returns the slug."""
    from io import BytesIO

    from PIL import Image, UnidentifiedImageError

    from service.lookup import find_persona
    from service.policy import require_trainer

    if actor.guild_id is None:
        raise UserError("Avatars belong to a server's personas: use this in a server.")
    require_trainer(actor)
    with session_scope() as session:
        persona, _ = find_persona(session, persona_slug, actor)
        slug = persona.slug
    storage, key = open_storage(), avatar_key(actor.guild_id, slug)
    if image is None:
        storage.delete(key)
        return slug
    if len(image) > MAX_AVATAR_BYTES:
        raise UserError("That image is too large for an avatar ({size} bytes; at most {limit}).",
                        size=len(image), limit=MAX_AVATAR_BYTES)
    try:
        with Image.open(BytesIO(image)) as opened:
            if opened.width * opened.height > 40_000_000:
                raise UserError("That image is too large for an avatar.")
            picture = opened.convert("RGBA").resize((AVATAR_SIDE, AVATAR_SIDE))
    except (UnidentifiedImageError, OSError, ValueError):
        raise UserError("That file is not an image Discord can show (PNG, JPEG, GIF or WebP).") from None
    out = BytesIO()
    picture.save(out, format="PNG")
    storage.put(key, out.getvalue())
    return slug
