"""Who may do what, and a guild's limits: the actor of a request, the guild's policy (db guild_settings). The
refusals a user has to act on are service.errors (UserError and NotAllowed are re-exported here). The console
is an actor with can_manage=True and no guild."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.settings import HARD_MAX_UPLOAD_BYTES, SettingsError, check_upload_cap
from db import session_scope
from db.guilds import guild_settings, update_guild_settings
from db.models import (
    DEFAULT_COOLDOWN_SECONDS,
    DEFAULT_MAX_QUEUED_JOBS,
    DEFAULT_MAX_UPLOAD_BYTES,
    DEFAULT_TRAIN_COOLDOWN_SECONDS,
)
from service.errors import NeedsPermission, NotAllowed, UserError

__all__ = ["Actor", "NotAllowed", "Policy", "UserError", "may_train", "policy", "require_trainer", "update_policy"]


@dataclass(frozen=True)
class Actor:
    """Who asks, and from where. The console is an actor with can_manage=True and no guild."""

    user_id: int | None
    guild_id: int | None = None
    channel_id: int | None = None
    can_manage: bool = False  # Manage Server in that channel
    role_ids: frozenset[int] = frozenset()
    operator: bool = False  # the deployment's operator (settings.owner_ids, the console, the CLI): may change built-ins


@dataclass(frozen=True)
class Policy:
    """A guild's limits (db guild_settings, or the defaults)."""

    cooldown_seconds: int = DEFAULT_COOLDOWN_SECONDS
    train_cooldown_seconds: int = DEFAULT_TRAIN_COOLDOWN_SECONDS
    max_queued_jobs: int = DEFAULT_MAX_QUEUED_JOBS
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    trainer_role_id: int | None = None


def policy(guild_id: int | None) -> Policy:
    if guild_id is None:
        return Policy()
    with session_scope() as session:
        row = guild_settings(session, guild_id)
        # a cap stored before the ceiling existed (up to 500 MB) is read as the ceiling, so the bot refuses a
        # bigger attachment before downloading it
        return Policy(row.cooldown_seconds, row.train_cooldown_seconds, row.max_queued_jobs_per_user,
                      min(row.max_upload_bytes, HARD_MAX_UPLOAD_BYTES), row.trainer_role_id)


def update_policy(actor: Actor, *, trainer_role_id: int | None = None, clear_trainer_role: bool = False,
                  cooldown_seconds: int | None = None, train_cooldown_seconds: int | None = None,
                  max_queued_jobs: int | None = None, max_upload_mb: float | None = None) -> Policy:
    """Change the guild's limits (Manage Server only); None leaves a value as it is."""
    if actor.guild_id is None:
        raise UserError("These settings belong to a server: use this command in one.")
    if not actor.can_manage:
        raise NeedsPermission("Manage Server", "change these settings")
    checks = [(cooldown_seconds, 0, 86_400, "cooldown"), (train_cooldown_seconds, 0, 604_800, "train cooldown"),
              (max_queued_jobs, 1, 100, "max jobs")]
    for value, low, high, name in checks:
        if value is not None and not low <= value <= high:
            raise UserError(f"{name} must be between {low:g} and {high:g}.")
    values: dict[str, Any] = {"cooldown_seconds": cooldown_seconds, "train_cooldown_seconds": train_cooldown_seconds,
                              "max_queued_jobs_per_user": max_queued_jobs}
    if max_upload_mb is not None:
        try:  # no server may raise its cap past the hard ceiling (a 100 MB upload took 1.7 GB of memory)
            values["max_upload_bytes"] = check_upload_cap(max_upload_mb)
        except SettingsError as e:
            raise UserError(str(e)) from None
    if trainer_role_id is not None or clear_trainer_role:
        values["trainer_role_id"] = None if clear_trainer_role else trainer_role_id
    with session_scope() as session:
        update_guild_settings(session, actor.guild_id, **{k: v for k, v in values.items()
                                                          if v is not None or k == "trainer_role_id"})
    return policy(actor.guild_id)


def may_train(actor: Actor, pol: Policy) -> bool:
    return actor.can_manage or (pol.trainer_role_id is not None and pol.trainer_role_id in actor.role_ids)


def require_trainer(actor: Actor, pol: Policy | None = None) -> None:
    pol = pol or policy(actor.guild_id)
    if not may_train(actor, pol):
        raise NeedsPermission("Manage Server", "train, delete or schedule personas",
                              role=pol.trainer_role_id is not None)

