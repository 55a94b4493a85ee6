"""A user's own data (`/privacy show|export|delete`); how long data is kept is db/retention.py.

What is stored about a user, by their Discord id:
- generations they asked for (`generations.user_id`: prompt and output) and ambient replies that continued a
  message of theirs (`generations.quoted_user_id`: the prompt is their message);
- jobs in flight (`inflight_generations`, holding the prompt until the message shows the outcome);
- uploads (`corpora.uploaded_by`, the text in storage) and the training runs they asked for;
- schedules they made (`schedules.created_by`), personas they created (`personas.created_by`), ambient
  channels they switched on (`ambient_channels.enabled_by`), reports they filed (`reports.reporter_id`);
- their votes on generated texts (`reactions.user_id`: which text, which kind, when; service/board.py);
- their voices (`personas.owner_user_id`, service/voices.py), the servers where they opted in to being learned
  from (`voice_optins`), and the learned personas whose corpus holds their messages (`learned_sources`);
- Celery's results of their jobs in the result backend (Redis keys `celery-task-meta-<task id>`). The
  service cannot reach Redis: deleting returns the task ids, and the caller forgets them
  (worker.app.forget_results), which also sweeps the backend for any other result naming the user.

Deleting removes the texts, schedules, uploads and reports, and the user's id from what stays (server
settings they changed). A persona trained on their uploads is retired: its checkpoints and the runs that
read the upload are deleted and it has no model until the server's managers train it again on other text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, or_, select, update

from db import (
    Checkpoint,
    Corpus,
    Generation,
    InflightGeneration,
    Persona,
    Schedule,
    TrainingRun,
    open_storage,
    session_scope,
)
from db.models import AmbientChannel, LearnedSource, PersonaCorpus, Reaction, Report, VoiceOptIn
from db.storage import run_prefixes
from db.types import as_utc, utcnow

EXPORT_VERSION = 1
# The uploads' text in an export, all uploads together: the file stays well under Discord's smallest
# attachment limit (10 MiB; up to 4 bytes a character in UTF-8). Beyond it each upload says what was left out.
EXPORT_TEXT_CHARS = 2_000_000


@dataclass
class DataSummary:
    """How much is stored about one user (`/privacy show`)."""

    generations: int = 0
    ambient_quotes: int = 0
    in_flight: int = 0
    uploads: int = 0
    upload_bytes: int = 0
    training_runs: int = 0
    schedules: int = 0
    personas_created: int = 0
    ambient_channels: int = 0
    reports: int = 0
    reactions: int = 0  # votes on generated texts (service/board.py)
    voices: int = 0  # their own voices (`/voice me`), one a server at most
    voice_optins: int = 0  # servers where they agreed to be learned from
    learned_personas: int = 0  # personas learned from channels whose text holds their messages

    @property
    def empty(self) -> bool:
        return not any(getattr(self, name) for name in self.__dataclass_fields__)


@dataclass
class Deleted:
    """What `delete_user_data` removed; `task_ids` are the Celery results the caller must forget and
    `retired` the personas left without a model because they were trained on the user's uploads."""

    generations: int = 0
    uploads: int = 0
    schedules: int = 0
    reports: int = 0
    reactions: int = 0
    storage_keys: list[str] = field(default_factory=list)
    task_ids: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)


def _own_generations(user_id: int):
    return or_(Generation.user_id == user_id, Generation.quoted_user_id == user_id)


def summary(user_id: int) -> DataSummary:
    with session_scope() as session:
        gens = session.scalars(select(Generation).where(_own_generations(user_id))).all()
        uploads = session.scalars(select(Corpus).where(Corpus.uploaded_by == user_id)).all()

        def count(model, column) -> int:
            return len(session.scalars(select(model).where(column == user_id)).all())

        return DataSummary(
            generations=sum(1 for g in gens if g.user_id == user_id),
            ambient_quotes=sum(1 for g in gens if g.quoted_user_id == user_id),
            in_flight=count(InflightGeneration, InflightGeneration.user_id),
            uploads=len(uploads), upload_bytes=sum(c.n_bytes for c in uploads),
            training_runs=count(TrainingRun, TrainingRun.requested_by),
            schedules=count(Schedule, Schedule.created_by),
            personas_created=count(Persona, Persona.created_by),
            ambient_channels=count(AmbientChannel, AmbientChannel.enabled_by),
            reports=count(Report, Report.reporter_id),
            reactions=count(Reaction, Reaction.user_id),
            voices=count(Persona, Persona.owner_user_id),
            voice_optins=count(VoiceOptIn, VoiceOptIn.user_id),
            learned_personas=count(LearnedSource, LearnedSource.user_id))


def _when(value: datetime | None) -> str | None:
    return as_utc(value).isoformat() if value is not None else None


def _generation_json(g: Generation) -> dict:
    return {"id": g.id, "persona": g.persona.slug, "prompt": g.prompt, "output": g.output, "params": g.params,
            "seed": g.seed, "guild_id": g.guild_id, "channel_id": g.channel_id, "message_id": g.message_id,
            "created_at": _when(g.created_at), "deleted": g.deleted_at is not None}


def _upload_text(storage, c: Corpus, budget: int) -> dict:
    """The upload's text as stored (UTF-8), at most `budget` characters, with a note when cut or missing."""
    try:
        with storage.open(c.storage_key) as f:
            text = f.read(budget * 4).decode("utf-8", errors="ignore")[:budget]
    except FileNotFoundError:
        return {"text": None, "text_note": "The stored text of this upload is missing."}
    if len(text) >= c.n_chars:
        return {"text": text}
    return {"text": text, "text_note": f"Only the first {len(text):,} of {c.n_chars:,} characters are included: "
                                       f"an export holds at most {EXPORT_TEXT_CHARS:,} characters of uploaded text."}


def _upload_json(session, c: Corpus, storage, budget: int) -> dict:
    personas = session.scalars(select(Persona.slug).join(PersonaCorpus, PersonaCorpus.persona_id == Persona.id)
                               .where(PersonaCorpus.corpus_id == c.id)).all()
    return {"id": c.id, "filename": c.filename, "sha256": c.sha256, "bytes": c.n_bytes, "characters": c.n_chars,
            "encoding": c.encoding, "guild_id": c.guild_id, "personas": list(personas),
            "created_at": _when(c.created_at), **_upload_text(storage, c, budget)}


def _uploads_json(session, user_id: int) -> list[dict]:
    """The user's uploads with their text, sharing EXPORT_TEXT_CHARS in upload order."""
    storage, budget, out = open_storage(), EXPORT_TEXT_CHARS, []
    for corpus in session.scalars(select(Corpus).where(Corpus.uploaded_by == user_id).order_by(Corpus.id)):
        out.append(_upload_json(session, corpus, storage, budget))
        budget = max(0, budget - len(out[-1]["text"] or ""))
    return out


def _voices_json(session, user_id: int) -> dict:
    """The user's voices, where they opted in to being learned from, and the learned personas holding their text."""
    voices = session.scalars(select(Persona).where(Persona.owner_user_id == user_id).order_by(Persona.id)).all()
    optins = session.scalars(select(VoiceOptIn).where(VoiceOptIn.user_id == user_id)
                             .order_by(VoiceOptIn.guild_id)).all()
    learned = session.execute(select(LearnedSource, Persona.slug).join(Persona, Persona.id == LearnedSource.persona_id)
                              .where(LearnedSource.user_id == user_id).order_by(Persona.id)).all()
    return {
        "voices": [{"persona": p.slug, "display_name": p.display_name, "guild_id": p.guild_id,
                    "ready": p.active_checkpoint_id is not None, "created_at": _when(p.created_at)} for p in voices],
        "voice_optins": [{"guild_id": o.guild_id, "created_at": _when(o.created_at)} for o in optins],
        "learned_personas": [{"persona": slug, "guild_id": src.guild_id, "messages": src.n_messages}
                             for src, slug in learned],
    }


def export(user_id: int) -> dict:
    """Everything stored about the user, as JSON (`/privacy export`). Uploads come with their statistics, the
    personas trained on them and their text as stored (UTF-8; at most EXPORT_TEXT_CHARS in all, each cut
    upload saying so in `text_note`)."""
    with session_scope() as session:
        gens = session.scalars(select(Generation).where(_own_generations(user_id)).order_by(Generation.id)).all()

        def rows(model, column):
            return session.scalars(select(model).where(column == user_id)).all()

        return {
            "format": EXPORT_VERSION, "user_id": user_id, "exported_at": utcnow().isoformat(),
            "generations": [_generation_json(g) for g in gens if g.user_id == user_id],
            "ambient_quotes": [_generation_json(g) for g in gens if g.quoted_user_id == user_id],
            "in_flight": [{"task_id": r.task_id, "request": r.request, "created_at": _when(r.created_at)}
                          for r in rows(InflightGeneration, InflightGeneration.user_id)],
            "uploads": _uploads_json(session, user_id),
            "training_runs": [{"id": r.id, "persona": r.persona.slug, "status": r.status.value,
                               "guild_id": r.guild_id, "created_at": _when(r.created_at)}
                              for r in rows(TrainingRun, TrainingRun.requested_by)],
            "schedules": [{"id": s.id, "persona": s.persona.slug, "guild_id": s.guild_id, "channel_id": s.channel_id,
                           "prompt": s.prompt, "interval_seconds": s.interval_seconds, "cron": s.cron,
                           "created_at": _when(s.created_at)} for s in rows(Schedule, Schedule.created_by)],
            "personas_created": [{"slug": p.slug, "guild_id": p.guild_id, "created_at": _when(p.created_at)}
                                 for p in rows(Persona, Persona.created_by)],
            "ambient_channels": [{"channel_id": a.channel_id, "guild_id": a.guild_id, "persona": a.persona_slug}
                                 for a in rows(AmbientChannel, AmbientChannel.enabled_by)],
            "reports": [{"id": r.id, "generation_id": r.generation_id, "reason": r.reason, "guild_id": r.guild_id,
                         "created_at": _when(r.created_at)} for r in rows(Report, Report.reporter_id)],
            "reactions": [{"generation_id": r.generation_id, "guild_id": r.guild_id, "kind": r.kind,
                           "created_at": _when(r.created_at)} for r in rows(Reaction, Reaction.user_id)],
            **_voices_json(session, user_id),
        }


def retire_persona(session, persona: Persona, storage) -> list[str]:
    """Leave a persona without a model: no active checkpoint, its checkpoints and their blobs deleted (the
    server's managers can train it again). Returns the storage keys removed."""
    persona.active_checkpoint_id = None
    session.flush()
    keys = list(session.scalars(select(Checkpoint.storage_key).where(Checkpoint.persona_id == persona.id)))
    session.execute(delete(Checkpoint).where(Checkpoint.persona_id == persona.id))
    return [key for key in keys if storage.delete(key)]


def _delete_runs(session, runs: list[TrainingRun], storage) -> tuple[list[str], list[str]]:
    """Delete training runs with their blobs (checkpoints, loss curve); (storage keys, task ids)."""
    keys, tasks = [], []
    for run in runs:
        for prefix in run_prefixes(run.persona.slug, run.id):
            keys += storage.delete_prefix(prefix)
        if run.task_id:
            tasks.append(run.task_id)
        session.delete(run)
    return keys, tasks


def _delete_uploads(session, user_id: int, storage, out: Deleted) -> None:
    """The user's uploads, the runs that read them, and every persona trained on them retired."""
    corpora = session.scalars(select(Corpus).where(Corpus.uploaded_by == user_id)).all()
    ids = [c.id for c in corpora]
    if not ids:
        return
    personas = session.scalars(select(Persona).join(PersonaCorpus, PersonaCorpus.persona_id == Persona.id)
                               .where(PersonaCorpus.corpus_id.in_(ids)).distinct()).all()
    for persona in personas:
        out.storage_keys += retire_persona(session, persona, storage)
        out.retired.append(persona.slug)
    retired_ids = [p.id for p in personas]  # their runs' samples and progress came from the upload too
    runs = session.scalars(select(TrainingRun).where(or_(TrainingRun.corpus_id.in_(ids),
                                                         TrainingRun.persona_id.in_(retired_ids)))).all()
    keys, tasks = _delete_runs(session, list(runs), storage)
    out.storage_keys += keys
    out.task_ids += tasks
    session.execute(delete(PersonaCorpus).where(PersonaCorpus.corpus_id.in_(ids)))
    for corpus in corpora:
        if storage.delete(corpus.storage_key):
            out.storage_keys.append(corpus.storage_key)
        session.delete(corpus)
    out.uploads = len(corpora)


def _withdraw_voices(user_id: int) -> None:
    """In every server where the user opted in, has a voice or is in a learned persona: their consent goes,
    their voice is deleted and their text leaves learned corpora (service.voices.opt_out)."""
    from service.policy import Actor
    from service.voices import opt_out

    with session_scope() as session:
        guilds = set(session.scalars(select(VoiceOptIn.guild_id).where(VoiceOptIn.user_id == user_id)))
        guilds |= set(session.scalars(select(Persona.guild_id).where(Persona.owner_user_id == user_id)))
        guilds |= set(session.scalars(select(LearnedSource.guild_id).where(LearnedSource.user_id == user_id)))
    for guild_id in sorted(g for g in guilds if g is not None):
        opt_out(Actor(user_id, guild_id))


def delete_user_data(user_id: int) -> Deleted:
    """Delete everything stored about the user (`/privacy delete`); see the module's docstring."""
    out = Deleted()
    _withdraw_voices(user_id)
    storage = open_storage()
    with session_scope() as session:
        gens = session.scalars(select(Generation).where(_own_generations(user_id))).all()
        out.task_ids += [g.request_id for g in gens if g.request_id]
        gen_ids = [g.id for g in gens]
        if gen_ids:  # reports about these texts lose their copy of the text
            session.execute(update(Report).where(Report.generation_id.in_(gen_ids)).values(text=""))
        session.execute(delete(Generation).where(_own_generations(user_id)))
        out.generations = len(gens)
        inflight = session.scalars(select(InflightGeneration).where(InflightGeneration.user_id == user_id)).all()
        out.task_ids += [r.task_id for r in inflight]
        session.execute(delete(InflightGeneration).where(InflightGeneration.user_id == user_id))
        _delete_uploads(session, user_id, storage, out)
        own_runs = session.scalars(select(TrainingRun).where(TrainingRun.requested_by == user_id)).all()
        out.task_ids += [r.task_id for r in own_runs if r.task_id]
        session.execute(update(TrainingRun).where(TrainingRun.requested_by == user_id).values(requested_by=None))
        out.schedules = len(session.scalars(select(Schedule.id).where(Schedule.created_by == user_id)).all())
        session.execute(delete(Schedule).where(Schedule.created_by == user_id))
        out.reports = len(session.scalars(select(Report.id).where(Report.reporter_id == user_id)).all())
        session.execute(delete(Report).where(Report.reporter_id == user_id))
        out.reactions = len(session.scalars(select(Reaction.id).where(Reaction.user_id == user_id)).all())
        session.execute(delete(Reaction).where(Reaction.user_id == user_id))
        session.execute(update(Persona).where(Persona.created_by == user_id).values(created_by=None))
        session.execute(update(PersonaCorpus).where(PersonaCorpus.added_by == user_id).values(added_by=None))
        session.execute(update(AmbientChannel).where(AmbientChannel.enabled_by == user_id).values(enabled_by=None))
    return out


def note_quote(generation_id: int, author_id: int) -> None:
    """An ambient reply continued `author_id`'s message: keep who, so their data can be found and deleted."""
    with session_scope() as session:
        gen = session.get(Generation, generation_id)
        if gen is not None:
            gen.quoted_user_id = author_id
