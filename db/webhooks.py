"""The persona webhooks table (db.models.PersonaWebhook): find one for a channel and persona, remember a new
one, forget a deleted one, and pick the least recently used ones of a channel to evict. Shared by the bot
(through service/webhooks.py) and the scheduled posts of the workers."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from db.models import PersonaWebhook, QuotaMark
from db.types import utcnow

# At most this many of the bot's webhooks per channel: Discord allows 15 per channel in all, and the
# server's own integrations need some of them.
MAX_PER_CHANNEL = 10
# After Discord refuses to create a webhook in a channel (403: no Manage Webhooks there), the bot and the
# workers post there as the bot for this long without asking again: every refused request counts towards
# the 10,000 invalid requests in 10 minutes after which Discord blocks the host's address.
REFUSED_SECONDS = 3600.0


@dataclass(frozen=True)
class Hook:
    webhook_id: int
    token: str  # a secret: never log it
    avatar: str  # the digest of the avatar uploaded to it (core.avatar.digest)

    def __repr__(self) -> str:  # a Hook in a log line or a traceback must not show its token
        return f"Hook(webhook_id={self.webhook_id})"


def _hook(row: PersonaWebhook) -> Hook:
    return Hook(row.webhook_id, row.token, row.avatar)


def find(session, channel_id: int, persona_slug: str) -> Hook | None:
    """The channel's webhook for this persona, marked as used now; None when there is none yet."""
    row = session.scalars(select(PersonaWebhook).where(PersonaWebhook.channel_id == channel_id,
                                                       PersonaWebhook.persona_slug == persona_slug)).first()
    if row is None:
        return None
    row.last_used_at = utcnow()
    return _hook(row)


def by_id(session, webhook_id: int) -> Hook | None:
    """One of the bot's webhooks by its id (not marked as used); None when it is gone."""
    row = session.scalars(select(PersonaWebhook).where(PersonaWebhook.webhook_id == webhook_id)).first()
    return None if row is None else _hook(row)


def avatar_key(guild_id: int, persona_slug: str) -> str:
    """Storage key of the avatar a server's manager chose for a persona (absent: drawn from its name)."""
    return f"avatars/{guild_id}/{persona_slug}.png"


def chosen_avatar(storage, guild_id: int | None, persona_slug: str) -> bytes | None:
    if guild_id is None:
        return None
    key = avatar_key(guild_id, persona_slug)
    return storage.get(key) if storage.exists(key) else None


def is_ours(session, webhook_id: int) -> bool:
    """Whether the webhook is one the bot made to post as a persona."""
    return session.scalars(select(PersonaWebhook.webhook_id).where(PersonaWebhook.webhook_id == webhook_id)).first() \
        is not None


def remember(session, *, guild_id: int, channel_id: int, persona_slug: str, hook: Hook) -> None:
    """Keep a webhook just created (replacing any row of the same channel and persona)."""
    session.execute(delete(PersonaWebhook).where(PersonaWebhook.channel_id == channel_id,
                                                 PersonaWebhook.persona_slug == persona_slug))
    session.add(PersonaWebhook(guild_id=guild_id, channel_id=channel_id, persona_slug=persona_slug,
                               webhook_id=hook.webhook_id, token=hook.token, avatar=hook.avatar))
    _forget_refusal(session, channel_id)  # Discord made one: the channel's permission is there now


def set_avatar(session, webhook_id: int, avatar: str) -> None:
    row = session.scalars(select(PersonaWebhook).where(PersonaWebhook.webhook_id == webhook_id)).first()
    if row is not None:
        row.avatar = avatar


def forget(session, webhook_id: int) -> None:
    """The webhook is gone (deleted here, or by a member in Discord)."""
    session.execute(delete(PersonaWebhook).where(PersonaWebhook.webhook_id == webhook_id))


def to_evict(session, channel_id: int, keep: int = MAX_PER_CHANNEL - 1) -> list[Hook]:
    """The channel's least recently used webhooks beyond the newest `keep` (room for one more)."""
    rows = session.scalars(select(PersonaWebhook).where(PersonaWebhook.channel_id == channel_id)
                           .order_by(PersonaWebhook.last_used_at.desc(), PersonaWebhook.id.desc())).all()
    return [_hook(r) for r in rows[max(keep, 0):]]


# -- channels where Discord refuses the bot a webhook -----------------------------------------------------------
# A mark in the counters every process shares (quota_marks, as service/quotas.py's cooldowns), so that the bot
# and every worker skip the refused request alike.

def _refused_key(channel_id: int) -> str:
    return f"webhooks:refused:{channel_id}"


def creation_refused(session, channel_id: int) -> bool:
    """Whether Discord refused the bot a webhook in this channel less than REFUSED_SECONDS ago (post as the bot
    without asking again)."""
    until = session.scalar(select(QuotaMark.until).where(QuotaMark.key == _refused_key(channel_id)))
    return until is not None and until > time.time()


def note_refused(session, channel_id: int, seconds: float = REFUSED_SECONDS) -> None:
    """Discord refused a webhook in this channel (403): no process asks again for `seconds`."""
    key, until = _refused_key(channel_id), time.time() + seconds
    if session.execute(update(QuotaMark).where(QuotaMark.key == key).values(until=until)).rowcount:
        return
    try:
        with session.begin_nested():
            session.add(QuotaMark(key=key, until=until))
    except IntegrityError:  # noted by another process at the same moment: theirs stands
        pass


def _forget_refusal(session, channel_id: int) -> None:
    """A webhook was made in the channel after all: its refusal is gone for every process."""
    session.execute(delete(QuotaMark).where(QuotaMark.key == _refused_key(channel_id)))
