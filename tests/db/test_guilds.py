"""Guild settings: the defaults for a guild without a row, and updates."""

from __future__ import annotations

import pytest

import db
from db.guilds import guild_settings, update_guild_settings

GUILD = 2**62 + 1  # snowflakes are 64-bit


def test_guild_settings_defaults_and_updates(session):
    gs = guild_settings(session, GUILD)
    assert gs.max_queued_jobs_per_user == 1 and gs.cooldown_seconds == 10 and gs.trainer_role_id is None
    assert gs.max_upload_bytes == 25_000_000 and gs.train_cooldown_seconds == 600
    assert session.get(db.GuildSettings, GUILD) is None  # defaults are not saved
    update_guild_settings(session, GUILD, trainer_role_id=2**62 + 3, max_queued_jobs_per_user=3)
    session.commit()
    session.expire_all()
    gs = guild_settings(session, GUILD)
    assert (gs.trainer_role_id, gs.max_queued_jobs_per_user, gs.cooldown_seconds) == (2**62 + 3, 3, 10)
    update_guild_settings(session, GUILD, cooldown_seconds=0)
    assert guild_settings(session, GUILD).cooldown_seconds == 0
    with pytest.raises(AttributeError):
        update_guild_settings(session, GUILD, nonsense=1)
