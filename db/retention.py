"""How long data is kept, and purging a server's: the retention sweep (generations older than
IMPROBABLE_RETENTION_DAYS) and the data of servers the bot left more than IMPROBABLE_GUILD_GRACE_DAYS ago or
that the operator blocked (GuildStatus). Run by beat (worker/tasks.py `improbable.sweep_retention`) and,
embedded, by the bot and the console; the operator's tools (service/operator.py) purge a blocked server at
once. Functions return the Celery task ids of what they deleted: the caller forgets their stored results
(worker.app.forget_results)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import delete, or_, select

from core.settings import get_settings
from db.models import (
    AmbientChannel,
    BoardSettings,
    Corpus,
    Generation,
    GuildSettings,
    GuildStatus,
    InflightDialogue,
    InflightGeneration,
    Persona,
    PersonaCorpus,
    PersonaWebhook,
    Reaction,
    Report,
    Schedule,
    TrainingRun,
)
from db.personas import delete_persona
from db.session import session_scope
from db.storage import open_storage, run_prefixes
from db.types import as_utc, utcnow


def status_row(session, guild_id: int) -> GuildStatus:
    """The server's standing row, created when missing."""
    row = session.get(GuildStatus, guild_id)
    if row is None:
        row = GuildStatus(guild_id=guild_id, name="", blocked=False)
        session.add(row)
    return row


def sweep_generations(now: datetime | None = None, days: float | None = None) -> tuple[int, list[str]]:
    """Delete the generations older than the retention (IMPROBABLE_RETENTION_DAYS): (rows deleted, their task
    ids), whose Celery results the caller forgets."""
    now = now or utcnow()
    cutoff = now - timedelta(days=days if days is not None else get_settings().retention_days)
    with session_scope() as session:
        old = session.execute(select(Generation.id, Generation.request_id).where(Generation.created_at < cutoff)).all()
        ids = [gid for gid, _ in old]
        for start in range(0, len(ids), 500):
            session.execute(delete(Reaction).where(Reaction.generation_id.in_(ids[start:start + 500])))
            session.execute(delete(Generation).where(Generation.id.in_(ids[start:start + 500])))
        # the votes on texts deleted with their Delete button (the row stays, blanked) go now
        session.execute(delete(Reaction).where(Reaction.generation_id.in_(
            select(Generation.id).where(Generation.deleted_at.is_not(None)))))
        return len(ids), [rid for _, rid in old if rid]


@dataclass
class Purged:
    personas: int = 0
    generations: int = 0
    storage_keys: list[str] = field(default_factory=list)
    task_ids: list[str] = field(default_factory=list)


def _purge_runs_and_personas(session, guild_id: int, storage, out: Purged) -> None:
    runs = session.scalars(select(TrainingRun).where(TrainingRun.guild_id == guild_id)).all()
    out.task_ids += [r.task_id for r in runs if r.task_id]
    for run in runs:
        for prefix in run_prefixes(run.persona.slug, run.id):
            out.storage_keys += storage.delete_prefix(prefix)
    personas = session.scalars(select(Persona).where(Persona.guild_id == guild_id)).all()
    out.personas = len(personas)
    for persona in personas:
        for run in session.scalars(select(TrainingRun).where(TrainingRun.persona_id == persona.id)):
            out.task_ids += [run.task_id] if run.task_id else []
            for prefix in run_prefixes(persona.slug, run.id):
                out.storage_keys += storage.delete_prefix(prefix)
        out.storage_keys += delete_persona(session, persona, storage)


def purge_guild(guild_id: int) -> Purged:
    """Delete everything of one server: its personas with their checkpoints, runs and blobs, the uploads
    made there, texts generated there and the votes on them, schedules, ambient channels, the persona
    webhooks' tokens, settings (the board's too) and reports. The standing row stays (blocked or not, and
    when it was purged)."""
    out, storage = Purged(), open_storage()
    with session_scope() as session:
        gens = session.execute(select(Generation.request_id).where(Generation.guild_id == guild_id)).all()
        out.task_ids += [rid for (rid,) in gens if rid]
        out.generations = len(gens)
        session.execute(delete(Generation).where(Generation.guild_id == guild_id))
        _purge_runs_and_personas(session, guild_id, storage, out)
        out.task_ids += [t for (t,) in session.execute(select(InflightGeneration.task_id)
                                                        .where(InflightGeneration.guild_id == guild_id))]
        session.execute(delete(Reaction).where(Reaction.guild_id == guild_id))
        session.execute(delete(BoardSettings).where(BoardSettings.guild_id == guild_id))
        # the webhooks' tokens are secrets of the server's channels: they go with its data, and the avatars
        # its managers chose
        session.execute(delete(PersonaWebhook).where(PersonaWebhook.guild_id == guild_id))
        storage.delete_prefix(f"avatars/{guild_id}/")
        for model, column in ((InflightGeneration, InflightGeneration.guild_id),
                              (InflightDialogue, InflightDialogue.guild_id), (Schedule, Schedule.guild_id),
                              (AmbientChannel, AmbientChannel.guild_id), (GuildSettings, GuildSettings.guild_id),
                              (Report, Report.guild_id), (TrainingRun, TrainingRun.guild_id)):
            session.execute(delete(model).where(column == guild_id))
        linked = select(PersonaCorpus.corpus_id)
        for corpus in session.scalars(select(Corpus).where(Corpus.guild_id == guild_id, Corpus.id.not_in(linked))):
            if storage.delete(corpus.storage_key):
                out.storage_keys.append(corpus.storage_key)
            session.delete(corpus)
        status_row(session, guild_id).purged_at = utcnow()
    return out


def guilds_due(now: datetime, grace_days: float) -> list[int]:
    """Servers the bot left more than the grace period ago (or blocked), not purged since."""
    cutoff = now - timedelta(days=grace_days)
    with session_scope() as session:
        rows = session.scalars(select(GuildStatus).where(
            GuildStatus.purged_at.is_(None), GuildStatus.left_at.is_not(None),
            or_(GuildStatus.left_at <= cutoff, GuildStatus.blocked))).all()
        return [r.guild_id for r in rows if r.blocked or as_utc(r.left_at) <= cutoff]


@dataclass
class SweepResult:
    generations: int = 0
    guilds: list[int] = field(default_factory=list)
    task_ids: list[str] = field(default_factory=list)


def sweep(now: datetime | None = None, *, retention_days: float | None = None,
          grace_days: float | None = None) -> SweepResult:
    """The retention sweep: generations past the retention, and the data of servers the bot left more than
    the grace period ago. Returns the Celery task ids whose results the caller forgets."""
    settings = get_settings()
    now = now or utcnow()
    out = SweepResult()
    out.generations, out.task_ids = sweep_generations(
        now, retention_days if retention_days is not None else settings.retention_days)
    for guild_id in guilds_due(now, grace_days if grace_days is not None else settings.guild_grace_days):
        out.task_ids += purge_guild(guild_id).task_ids
        out.guilds.append(guild_id)
    return out
