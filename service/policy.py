"""Who may do what, and a guild's limits: the actor of a request, the guild's policy (db guild_settings). The
refusals a user has to act on are service.errors (UserError and NotAllowed are re-exported here). The console
is an actor with can_manage=True and no guild."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from core.settings import HARD_MAX_UPLOAD_BYTES, Settings, SettingsError, check_upload_cap, get_settings
from db import session_scope
from db.guilds import guild_settings, update_guild_settings
from db.models import (
    DEFAULT_COOLDOWN_SECONDS,
    DEFAULT_MAX_QUEUED_JOBS,
    DEFAULT_MAX_UPLOAD_BYTES,
    DEFAULT_TRAIN_COOLDOWN_SECONDS,
)
from service.errors import NeedsPermission, NotAllowed, UserError

__all__ = ["Actor", "Ceilings", "NotAllowed", "Policy", "UserError", "ceilings", "effective", "may_train", "policy",
           "require_trainer", "update_policy"]


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
class Ceilings:
    """The deployment's ceilings (core.settings, IMPROBABLE_CEILING_*): no server setting goes past them."""

    jobs_per_member: int
    jobs_per_server: int
    min_cooldown_seconds: int
    min_train_cooldown_seconds: int
    upload_bytes: int
    stored_bytes: int
    schedules: int
    min_schedule_interval_seconds: int
    train_minutes_per_day: float
    ambient_chance: float
    ambient_cooldown_seconds: int
    ambient_replies_per_hour: int

    @classmethod
    def of(cls, settings: Settings | None = None) -> Ceilings:
        s = settings or get_settings()
        return cls(s.ceiling_jobs_per_member, s.ceiling_jobs_per_server, s.ceiling_min_cooldown_seconds,
                   s.ceiling_min_train_cooldown_seconds, min(s.ceiling_upload_bytes, HARD_MAX_UPLOAD_BYTES),
                   s.ceiling_stored_bytes_per_server, s.ceiling_schedules_per_server,
                   s.ceiling_min_schedule_interval_seconds, s.ceiling_train_minutes_per_day, s.ceiling_ambient_chance,
                   s.ceiling_ambient_cooldown_seconds, s.ceiling_ambient_replies_per_hour)


def ceilings() -> Ceilings:
    return Ceilings.of()


@dataclass(frozen=True)
class Policy:
    """A guild's effective limits: its settings (db guild_settings, or the defaults) within the deployment's
    ceilings (min of the two; max for cooldowns). `ceilings` are shown beside them by /settings show."""

    cooldown_seconds: int = DEFAULT_COOLDOWN_SECONDS
    train_cooldown_seconds: int = DEFAULT_TRAIN_COOLDOWN_SECONDS
    max_queued_jobs: int = DEFAULT_MAX_QUEUED_JOBS  # job units (core.cost) one member may have in flight
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    trainer_role_id: int | None = None
    ceilings: Ceilings | None = field(default=None, compare=False)
    notes: tuple[str, ...] = field(default=(), compare=False)  # what update_policy clamped to a ceiling, in plain words

    @property
    def limits(self) -> Ceilings:
        return self.ceilings or ceilings()


def effective(cooldown: int, train_cooldown: int, max_jobs: int, upload_bytes: int, role: int | None,
              top: Ceilings) -> Policy:
    """A server's settings within the ceilings."""
    return Policy(max(cooldown, top.min_cooldown_seconds), max(train_cooldown, top.min_train_cooldown_seconds),
                  min(max_jobs, top.jobs_per_member), min(upload_bytes, top.upload_bytes), role, top)


def policy(guild_id: int | None) -> Policy:
    top = ceilings()
    if guild_id is None:
        return effective(DEFAULT_COOLDOWN_SECONDS, DEFAULT_TRAIN_COOLDOWN_SECONDS, DEFAULT_MAX_QUEUED_JOBS,
                         DEFAULT_MAX_UPLOAD_BYTES, None, top)
    with session_scope() as session:
        row = guild_settings(session, guild_id)
        # a value stored before a ceiling existed (or above one lowered since) is read as the ceiling, so the
        # bot refuses a bigger attachment before downloading it
        return effective(row.cooldown_seconds, row.train_cooldown_seconds, row.max_queued_jobs_per_user,
                         row.max_upload_bytes, row.trainer_role_id, top)


def _clamp(values: dict[str, Any], top: Ceilings) -> list[str]:
    """Bring the asked values within the ceilings (accept and clamp); a plain note for each one changed."""
    rules = [("cooldown_seconds", "cooldown", top.min_cooldown_seconds, max, "s", "at least"),
             ("train_cooldown_seconds", "train cooldown", top.min_train_cooldown_seconds, max, "s", "at least"),
             ("max_queued_jobs_per_user", "max jobs", top.jobs_per_member, min, "", "at most")]
    notes = []
    for key, name, bound, pick, unit, word in rules:
        asked = values.get(key)
        if asked is not None and pick(asked, bound) != asked:
            values[key] = bound
            notes.append(f"{name} {asked:g}{unit} is past this deployment's ceiling: set to {bound:g}{unit} "
                         f"({word} {bound:g}{unit} everywhere).")
    asked = values.get("max_upload_bytes")
    if asked is not None and asked > top.upload_bytes:
        values["max_upload_bytes"] = top.upload_bytes
        notes.append(f"max upload {asked / 1e6:g} MB is past this deployment's ceiling: set to "
                     f"{top.upload_bytes / 1e6:g} MB.")
    return notes


def update_policy(actor: Actor, *, trainer_role_id: int | None = None, clear_trainer_role: bool = False,
                  cooldown_seconds: int | None = None, train_cooldown_seconds: int | None = None,
                  max_queued_jobs: int | None = None, max_upload_mb: float | None = None) -> Policy:
    """Change the guild's limits (Manage Server only); None leaves a value as it is. A value outside the
    option's own range is refused; one within it but past a deployment ceiling is set to the ceiling, and the
    returned policy's `notes` say so (the same rule as /ambient)."""
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
    notes = _clamp(values, ceilings())
    if trainer_role_id is not None or clear_trainer_role:
        values["trainer_role_id"] = None if clear_trainer_role else trainer_role_id
    with session_scope() as session:
        update_guild_settings(session, actor.guild_id, **{k: v for k, v in values.items()
                                                          if v is not None or k == "trainer_role_id"})
    return replace(policy(actor.guild_id), notes=tuple(notes))


def may_train(actor: Actor, pol: Policy) -> bool:
    return actor.can_manage or (pol.trainer_role_id is not None and pol.trainer_role_id in actor.role_ids)


def require_trainer(actor: Actor, pol: Policy | None = None) -> None:
    pol = pol or policy(actor.guild_id)
    if not may_train(actor, pol):
        raise NeedsPermission("Manage Server", "train, delete or schedule personas",
                              role=pol.trainer_role_id is not None)

