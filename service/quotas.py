"""Counters shared by every bot process, in SQL (the embedded default has no Redis, and one implementation
serves both): cooldowns (quota_marks), jobs in flight with their cost (quota_claims) and usage over a
rolling window (quota_usage). Times are Unix seconds from an injectable clock.

- A cooldown is claimed atomically: an UPDATE of an expired mark, else an INSERT (a second process racing for
  the same key hits the primary key and is told to wait).
- Checks that sum rows and then add one (jobs in flight, ambient replies per hour) are serialized per scope by
  first writing a lock row (`lock:<scope>` in quota_marks): PostgreSQL holds that row's lock, SQLite its
  database write lock, until the transaction commits, so two processes never both pass the same last slot.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from core.cost import job_cost
from db import session_scope
from db.models import Checkpoint, Corpus, Persona, QuotaClaim, QuotaMark, QuotaUsage
from db.personas import InvalidSlug, get_persona, validate_slug
from service.errors import (
    Code,
    NotAValue,
    StorageFull,
    TooManyJobs,
    TrainingBudget,
    UploadTooLarge,
    UserError,
)
from service.lookup import find_persona
from service.policy import Actor, policy, require_trainer

PRUNE_AFTER = 2 * 86400  # usage older than the longest window (a day) is deleted now and then


@dataclass(frozen=True)
class InFlight:
    member_units: float
    member_jobs: int
    server_units: float
    server_jobs: int


class Quotas:
    """The shared counters. `engine`: a SQLAlchemy engine or URL (None: the configured database)."""

    def __init__(self, engine=None, clock: Callable[[], float] = time.time):
        self.engine, self.clock = engine, clock
        self._pruned_at = 0.0

    # -- cooldowns ------------------------------------------------------------------------------------------

    def hit(self, key: str, per: float) -> float:
        """Claim `key` for `per` seconds: 0.0 when it was free, else the seconds until it is."""
        if per <= 0:
            return 0.0
        now = self.clock()
        with session_scope(self.engine) as session:
            claimed = session.execute(update(QuotaMark).where(QuotaMark.key == key, QuotaMark.until <= now)
                                      .values(until=now + per)).rowcount
            if claimed:
                return 0.0
            try:
                with session.begin_nested():
                    session.add(QuotaMark(key=key, until=now + per))
                return 0.0
            except IntegrityError:
                until = session.scalar(select(QuotaMark.until).where(QuotaMark.key == key))
                return max(0.0, (until or now) - now)

    def extend(self, key: str, per: float) -> None:
        """Make `key` wait at least `per` seconds from now (a costly job cools down longer)."""
        if per <= 0:
            return
        now = self.clock()
        with session_scope(self.engine) as session:
            changed = session.execute(update(QuotaMark).where(QuotaMark.key == key, QuotaMark.until < now + per)
                                      .values(until=now + per)).rowcount
            if not changed and session.get(QuotaMark, key) is None:
                try:
                    with session.begin_nested():
                        session.add(QuotaMark(key=key, until=now + per))
                except IntegrityError:
                    pass

    def retry_after(self, key: str) -> float:
        with session_scope(self.engine) as session:
            until = session.scalar(select(QuotaMark.until).where(QuotaMark.key == key))
        return 0.0 if until is None else max(0.0, until - self.clock())

    def reset(self, key: str) -> None:
        """Give the key back (the request failed before it cost anything)."""
        with session_scope(self.engine) as session:
            session.execute(delete(QuotaMark).where(QuotaMark.key == key))

    # -- jobs in flight -------------------------------------------------------------------------------------

    def in_flight(self, guild_id: int | None, user_id: int | None) -> InFlight:
        with session_scope(self.engine) as session:
            return self._in_flight(session, guild_id, user_id)

    def _in_flight(self, session, guild_id: int | None, user_id: int | None) -> InFlight:
        now = self.clock()
        live = [QuotaClaim.expires > now, _is(QuotaClaim.guild_id, guild_id)]
        server = session.execute(select(func.coalesce(func.sum(QuotaClaim.cost), 0.0), func.count())
                                 .where(*live)).one()
        member = (0.0, 0)
        if user_id is not None:
            member = session.execute(select(func.coalesce(func.sum(QuotaClaim.cost), 0.0), func.count())
                                     .where(*live, QuotaClaim.user_id == user_id)).one()
        return InFlight(round(float(member[0]), 2), int(member[1]), round(float(server[0]), 2), int(server[1]))

    def claim(self, claim_id: str, guild_id: int | None, user_id: int | None, cost: float, *, member_cap: float,
              server_cap: float, ttl: float) -> InFlight:
        """Count a job of `cost` units against the member and the server until `release` (or `ttl` seconds),
        or raise TooManyJobs. A member (or server) with nothing in flight may always start one job, whatever
        it costs: the cap bounds what waits, and the cost-scaled cooldown bounds how often."""
        with session_scope(self.engine) as session:
            self._lock(session, f"lock:jobs:{guild_id}")
            now = self.clock()
            seen = self._in_flight(session, guild_id, user_id)
            if user_id is not None and seen.member_jobs and seen.member_units + cost > member_cap:
                raise TooManyJobs(seen.member_units, member_cap, cost)
            if seen.server_jobs and seen.server_units + cost > server_cap:
                raise TooManyJobs(seen.server_units, server_cap, cost, server=True)
            session.add(QuotaClaim(id=claim_id, guild_id=guild_id, user_id=user_id, cost=cost, expires=now + ttl))
            for key in (f"units:guild:{guild_id}", f"units:member:{guild_id}:{user_id}"):
                session.add(QuotaUsage(key=key, amount=cost, at=now))
            return seen

    def release(self, claim_id: str) -> None:
        with session_scope(self.engine) as session:
            session.execute(delete(QuotaClaim).where(QuotaClaim.id == claim_id))
            now = self.clock()
            session.execute(delete(QuotaClaim).where(QuotaClaim.expires <= now))

    # -- usage over a window --------------------------------------------------------------------------------

    def used(self, key: str, window: float) -> float:
        with session_scope(self.engine) as session:
            return self._used(session, key, window)

    def _used(self, session, key: str, window: float) -> float:
        total = session.scalar(select(func.coalesce(func.sum(QuotaUsage.amount), 0.0))
                               .where(QuotaUsage.key == key, QuotaUsage.at > self.clock() - window))
        return float(total or 0.0)

    def take(self, key: str, amount: float, limit: float, window: float) -> float | None:
        """Record `amount` of `key` if the window's total stays within `limit`: the total before, else None."""
        with session_scope(self.engine) as session:
            self._lock(session, f"lock:{key}")
            before = self._used(session, key, window)
            if before + amount > limit:
                return None
            session.add(QuotaUsage(key=key, amount=amount, at=self.clock()))
            self._prune(session)
            return before

    def record(self, key: str, amount: float) -> None:
        with session_scope(self.engine) as session:
            session.add(QuotaUsage(key=key, amount=amount, at=self.clock()))

    def _prune(self, session) -> None:
        now = self.clock()
        if now - self._pruned_at > 3600:
            self._pruned_at = now
            session.execute(delete(QuotaUsage).where(QuotaUsage.at < now - PRUNE_AFTER))

    def _lock(self, session, key: str) -> None:
        """Serialize this transaction with every other one writing the same lock row (see the module doc)."""
        if not session.execute(update(QuotaMark).where(QuotaMark.key == key).values(until=0.0)).rowcount:
            try:
                with session.begin_nested():
                    session.add(QuotaMark(key=key, until=0.0))
            except IntegrityError:  # created meanwhile by another process: lock it as it is
                session.execute(update(QuotaMark).where(QuotaMark.key == key).values(until=0.0))


def _is(column, value):
    return column.is_(None) if value is None else column == value


# -- what a job costs, and what a server stores ----------------------------------------------------------------

def request_cost(payload: dict, family: str, engine=None) -> float:
    """The cost (core.cost units) of a generate request's payload: its checkpoints' sizes from the database."""
    ids = [v["checkpoint_id"] for v in payload.get("blend") or ()] or [payload["checkpoint_id"]]
    with session_scope(engine) as session:
        sizes = session.scalars(select(Checkpoint.size_bytes).where(Checkpoint.id.in_(ids))).all()
    return job_cost(payload.get("params") or {}, max(sizes, default=0), len(ids), family)


def stored_bytes(guild_id: int, engine=None) -> int:
    """Bytes a server keeps: its uploads and its personas' checkpoints."""
    with session_scope(engine) as session:
        texts = session.scalar(select(func.coalesce(func.sum(Corpus.n_bytes), 0)).where(Corpus.guild_id == guild_id))
        models = session.scalar(select(func.coalesce(func.sum(Checkpoint.size_bytes), 0))
                                .join(Persona, Persona.id == Checkpoint.persona_id).where(Persona.guild_id == guild_id))
    return int(texts or 0) + int(models or 0)


# -- before an upload is downloaded ---------------------------------------------------------------------------

UNSPECIFIED_RUN_MINUTES = 15.0  # a run without `minutes` counts this much (the recipes' fine-tunes take 3-12)
DAY = 86400.0


def check_upload(actor: Actor, *, sizes: list[int], name: str | None = None, persona: str | None = None,
                 minutes: float | None = None, quotas: Quotas | None = None) -> None:
    """Everything about a `/persona create` (`name`) or `/persona retrain` (`persona`) that is known before a
    byte of its files is read: the name is valid and free (or the persona exists), the files fit the upload
    cap (Discord's announced sizes), the server's stored bytes stay under the ceiling, and its training
    minutes of the last 24 hours too. The caller has checked the permission and claims the train cooldown."""
    pol = policy(actor.guild_id)
    require_trainer(actor, pol)
    top = pol.limits
    if name is not None:
        try:
            slug = validate_slug(name)
        except InvalidSlug:
            raise NotAValue(name, "a valid persona name", ("my-persona",), "use 1-32 lower-case letters, digits "
                            "and hyphens, starting and ending with a letter or digit") from None
        with session_scope() as session:
            if get_persona(session, slug, actor.guild_id) is not None:
                raise UserError("The name {name} is already taken here; choose another, or use {retrain} to train "
                                "it again.", name=Code(slug), retrain=Code(f"/persona retrain {slug}"))
    if persona is not None:
        with session_scope() as session:
            find_persona(session, persona, actor.guild_id)
    total = sum(sizes)
    if total > pol.max_upload_bytes:
        raise UploadTooLarge(total, pol.max_upload_bytes, len(sizes))
    if total and actor.guild_id is not None:
        kept = stored_bytes(actor.guild_id)
        if kept + total > top.stored_bytes:
            raise StorageFull(kept, total, top.stored_bytes)
    asked = minutes or UNSPECIFIED_RUN_MINUTES
    if actor.guild_id is not None and not actor.operator:
        used = (quotas or Quotas()).used(f"train:guild:{actor.guild_id}", DAY)
        if used + asked > top.train_minutes_per_day:
            raise TrainingBudget(used, asked, top.train_minutes_per_day)


def record_training(guild_id: int | None, minutes: float | None, quotas: Quotas | None = None) -> None:
    """Count a started run's minutes against the server's day (check_upload reads them)."""
    if guild_id is not None:
        (quotas or Quotas()).record(f"train:guild:{guild_id}", minutes or UNSPECIFIED_RUN_MINUTES)
