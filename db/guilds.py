"""Per-guild settings: a guild's row, or the defaults for a guild without one, and updating it."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from db.models import GuildSettings


def guild_settings(session: Session, guild_id: int) -> GuildSettings:
    """The guild's settings row, or an unsaved one holding the defaults."""
    row = session.get(GuildSettings, guild_id)
    if row is not None:
        return row
    defaults = {c.key: c.default.arg for c in GuildSettings.__table__.columns
                if c.default is not None and c.default.is_scalar}
    return GuildSettings(guild_id=guild_id, **defaults)


def update_guild_settings(session: Session, guild_id: int, **values: Any) -> GuildSettings:
    """Create or update the guild's settings (flushed)."""
    row = session.get(GuildSettings, guild_id)
    if row is None:
        row = guild_settings(session, guild_id)
        session.add(row)
    for key, value in values.items():
        if key not in GuildSettings.__table__.columns or key in ("guild_id", "created_at", "updated_at"):
            raise AttributeError(f"guild settings have no field {key!r}")
        setattr(row, key, value)
    session.flush()
    return row
