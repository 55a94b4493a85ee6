"""The deployment operator's tools (the CLI's `improbable operator …`, the console, owner-only `/operator`):
what each server stores and uploads, the reports users filed, disabling a persona, blocking a server; and
the bot's standing in each server (removed, blocked, back), with the purge of a server's data once the bot
has been gone for the grace period (IMPROBABLE_GUILD_GRACE_DAYS) or the server was blocked.

Reports are filed here too (the Report button under a result and `/report`). Every operator function takes
an Actor and refuses anyone who is not the operator (settings.owner_ids, the console, the CLI)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select

from db import Checkpoint, Corpus, Generation, Persona, session_scope
from db.models import GuildStatus, Report
from db.retention import Purged, SweepResult, purge_guild, status_row, sweep
from db.types import utcnow
from service.errors import Code, NotAllowed, TextGone, UserError
from service.lookup import find_persona
from service.policy import Actor

MAX_REASON_CHARS = 1000
MAX_SNAPSHOT_CHARS = 4000
LINK = re.compile(r"/channels/(?:\d+|@me)/\d+/(\d+)\s*$")


def require_operator(actor: Actor) -> None:
    if not actor.operator:
        raise NotAllowed("Only the bot's operator can use the operator tools.")


# -- reports --------------------------------------------------------------------------------------------------

@dataclass
class ReportView:
    id: int
    reporter_id: int | None
    guild_id: int | None
    generation_id: int | None
    persona: str
    text: str
    reason: str
    status: str
    created_at: datetime


def _generation_of(session, ref: str) -> Generation:
    """A generation by id or by a message link (the result's message)."""
    ref = (ref or "").strip()
    link = LINK.search(ref)
    if link:
        gen = session.scalars(select(Generation).where(Generation.message_id == int(link.group(1)))).first()
        if gen is None:
            raise UserError("That message is not a text of this bot (or it is no longer stored).")
        return gen
    if not ref.isdigit():
        raise UserError("Give a generation id (a number, shown by Info) or a link to the bot's message.")
    gen = session.get(Generation, int(ref))
    if gen is None:
        raise TextGone(int(ref))
    return gen


def file_report(actor: Actor, ref: str, reason: str) -> int:
    """Queue a report of a generated text for the operator, with a snapshot of the text; returns its id."""
    reason = (reason or "").strip()[:MAX_REASON_CHARS]
    if not reason:
        raise UserError("Say in a few words what is wrong with the text.")
    with session_scope() as session:
        gen = _generation_of(session, ref)
        if actor.guild_id is not None and gen.guild_id not in (None, actor.guild_id):
            raise TextGone(gen.id)  # another server's text is not reported from here
        report = Report(reporter_id=actor.user_id, guild_id=gen.guild_id or actor.guild_id, generation_id=gen.id,
                        persona_slug=gen.persona.slug, text=(gen.prompt + gen.output)[:MAX_SNAPSHOT_CHARS],
                        reason=reason)
        session.add(report)
        session.flush()
        return report.id


def reports(actor: Actor, *, include_closed: bool = False) -> list[ReportView]:
    require_operator(actor)
    with session_scope() as session:
        query = select(Report).order_by(Report.id)
        if not include_closed:
            query = query.where(Report.status == "open")
        return [ReportView(r.id, r.reporter_id, r.guild_id, r.generation_id, r.persona_slug, r.text, r.reason,
                           r.status, r.created_at) for r in session.scalars(query)]


def close_report(actor: Actor, report_id: int) -> None:
    require_operator(actor)
    with session_scope() as session:
        report = session.get(Report, report_id)
        if report is None:
            raise UserError("There is no report {id}.", id=Code(str(report_id)))
        report.status = "closed"


# -- servers --------------------------------------------------------------------------------------------------

@dataclass
class ServerView:
    guild_id: int
    name: str = ""
    personas: list[str] = field(default_factory=list)
    uploads: int = 0
    jobs: int = 0  # generations stored
    stored_bytes: int = 0  # uploads and checkpoints
    open_reports: int = 0
    left_at: datetime | None = None
    blocked: bool = False


def _count_by_guild(session, column, *where) -> dict[int, int]:
    rows = session.execute(select(column, func.count()).where(column.is_not(None), *where).group_by(column))
    return {gid: n for gid, n in rows}


def _sum_by_guild(session, column, value) -> dict[int, int]:
    rows = session.execute(select(column, func.sum(value)).where(column.is_not(None)).group_by(column))
    return {gid: int(n or 0) for gid, n in rows}


def servers(actor: Actor, known: dict[int, str] | None = None) -> list[ServerView]:
    """Every server the database knows (and those in `known`: id -> name, the bot's current servers)."""
    require_operator(actor)
    with session_scope() as session:
        views: dict[int, ServerView] = {}

        def view(gid: int) -> ServerView:
            return views.setdefault(gid, ServerView(gid))

        for gid, name in (known or {}).items():
            view(gid).name = name
        for persona in session.scalars(select(Persona).where(Persona.guild_id.is_not(None)).order_by(Persona.slug)):
            view(persona.guild_id).personas.append(persona.slug + (" (disabled)" if persona.disabled else ""))
        for gid, n in _count_by_guild(session, Corpus.guild_id).items():
            view(gid).uploads = n
        for gid, n in _count_by_guild(session, Generation.guild_id).items():
            view(gid).jobs = n
        for gid, n in _sum_by_guild(session, Corpus.guild_id, Corpus.n_bytes).items():
            view(gid).stored_bytes += n
        ckpt = session.execute(select(Persona.guild_id, func.sum(Checkpoint.size_bytes)).join(
            Checkpoint, Checkpoint.persona_id == Persona.id).where(Persona.guild_id.is_not(None))
            .group_by(Persona.guild_id))
        for gid, n in ckpt:
            view(gid).stored_bytes += int(n or 0)
        for gid, n in _count_by_guild(session, Report.guild_id, Report.status == "open").items():
            view(gid).open_reports = n
        for status in session.scalars(select(GuildStatus)):
            v = view(status.guild_id)
            v.name = v.name or status.name
            v.left_at, v.blocked = status.left_at, status.blocked
        return sorted(views.values(), key=lambda v: v.guild_id)


def is_blocked(guild_id: int | None) -> bool:
    if guild_id is None:
        return False
    with session_scope() as session:
        row = session.get(GuildStatus, guild_id)
        return bool(row and row.blocked)


def blocked_guilds() -> set[int]:
    with session_scope() as session:
        return set(session.scalars(select(GuildStatus.guild_id).where(GuildStatus.blocked)))


def guild_left(guild_id: int, name: str = "", now: datetime | None = None) -> None:
    """The bot was removed from the server (not an outage): its data is purged after the grace period."""
    with session_scope() as session:
        row = status_row(session, guild_id)
        row.left_at, row.name = now or utcnow(), (name or row.name)[:100]


def guild_joined(guild_id: int, name: str = "") -> bool:
    """The bot is in the server (again): a pending purge is cancelled. False when the server is blocked
    (the caller leaves it)."""
    with session_scope() as session:
        row = session.get(GuildStatus, guild_id)
        if row is None:
            return True
        row.left_at, row.purged_at, row.name = None, None, (name or row.name)[:100]
        return not row.blocked


def block_server(actor: Actor, guild_id: int) -> Purged:
    """Block a server: the caller leaves it; its data is purged now. Returns what was purged."""
    require_operator(actor)
    with session_scope() as session:
        row = status_row(session, guild_id)
        row.blocked, row.blocked_at = True, utcnow()
        row.left_at = row.left_at or row.blocked_at
    return purge_guild(guild_id)


def unblock_server(actor: Actor, guild_id: int) -> bool:
    require_operator(actor)
    with session_scope() as session:
        row = session.get(GuildStatus, guild_id)
        if row is None or not row.blocked:
            return False
        row.blocked, row.blocked_at = False, None
        return True


def set_persona_disabled(actor: Actor, slug: str, guild_id: int | None, disabled: bool) -> str:
    """Disable (or enable again) a persona: a disabled one is refused by /generate, schedules and ambient."""
    require_operator(actor)
    with session_scope() as session:
        persona, _ = find_persona(session, slug, guild_id, include_disabled=True)
        persona.disabled = disabled
        return persona.slug


__all__ = ["Purged", "SweepResult", "block_server", "blocked_guilds", "close_report", "file_report", "guild_joined",
           "guild_left", "is_blocked", "purge_guild", "reports", "servers", "set_persona_disabled",
           "sweep", "unblock_server"]
