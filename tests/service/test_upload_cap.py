"""A server's upload cap cannot be raised past core.settings.HARD_MAX_UPLOAD_BYTES (issue 12), and a cap
stored before the ceiling existed is read as the ceiling, so the bot refuses bigger attachments before
downloading them (bot.limits.upload_limit compares Discord's announced size with this policy)."""

from __future__ import annotations

import pytest

import db
import service.policy
from core.settings import HARD_MAX_UPLOAD_BYTES
from db.guilds import update_guild_settings
from service.policy import UserError

from .test_service import GUILD, MANAGER, env  # noqa: F401 - pytest fixtures used by name


@pytest.mark.parametrize("mb", [100.01, 500])
def test_a_cap_past_the_ceiling_is_refused_and_nothing_changes(env, mb):  # noqa: F811
    before = service.policy.policy(GUILD).max_upload_bytes
    with pytest.raises(UserError, match="at most 100 MB"):
        service.policy.update_policy(MANAGER, max_upload_mb=mb, cooldown_seconds=7)
    assert service.policy.policy(GUILD).max_upload_bytes == before
    assert service.policy.policy(GUILD).cooldown_seconds != 7  # the whole update was refused


def test_the_hard_maximum_is_accepted_and_clamped_to_the_deployment_ceiling(env):  # noqa: F811
    pol = service.policy.update_policy(MANAGER, max_upload_mb=100)
    assert pol.max_upload_bytes == service.policy.ceilings().upload_bytes <= HARD_MAX_UPLOAD_BYTES
    assert any("ceiling" in note for note in pol.notes)


def test_an_old_oversized_cap_is_read_as_the_ceiling(env):  # noqa: F811
    with db.session_scope() as session:
        update_guild_settings(session, GUILD, max_upload_bytes=500_000_000)
    assert service.policy.policy(GUILD).max_upload_bytes == service.policy.ceilings().upload_bytes
