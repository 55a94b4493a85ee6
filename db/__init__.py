"""Persistence: SQL models and migrations, sessions, blob storage, corpus ingestion, persona registry.

Torch-free (the bot imports it). Submodules: db.models, db.session, db.migrate, db.storage, db.ingest,
db.personas, db.runs, db.checkpoints, db.generations, db.schedules, db.guilds, db.bundled. Corpus ingestion
lives in db.ingest (core.text decodes the upload).
"""

from db.migrate import current_revision, downgrade, head_revision, upgrade
from db.models import (
    Base,
    Checkpoint,
    Corpus,
    Family,
    Generation,
    GuildSettings,
    InflightGeneration,
    Persona,
    PersonaCorpus,
    PostStatus,
    RunStatus,
    Schedule,
    SchedulePost,
    TrainingRun,
)
from db.session import get_engine, get_sessionmaker, make_engine, session_scope
from db.storage import Storage, open_storage

__all__ = [
    "Base",
    "Checkpoint",
    "Corpus",
    "Family",
    "Generation",
    "GuildSettings",
    "InflightGeneration",
    "Persona",
    "PersonaCorpus",
    "PostStatus",
    "RunStatus",
    "Schedule",
    "SchedulePost",
    "Storage",
    "TrainingRun",
    "current_revision",
    "downgrade",
    "get_engine",
    "get_sessionmaker",
    "head_revision",
    "make_engine",
    "open_storage",
    "session_scope",
    "upgrade",
]
