"""SQLAlchemy 2 models: everything that outlives a process.

Discord ids (snowflakes) exceed 32 bits and are stored as BigInteger. Timestamps are aware UTC.
JSON columns are replaced, never mutated in place (assign a new dict), so changes are always flushed.
Every schema change here needs an Alembic migration in db/migrations/versions (a test checks they agree).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from db.types import Family, PostStatus, RunStatus, UTCDateTime, metadata, str_enum, utcnow

__all__ = [
    "AmbientChannel",
    "Base",
    "BoardSettings",
    "Checkpoint",
    "Corpus",
    "Family",
    "Generation",
    "GuildSettings",
    "GuildStatus",
    "InflightDialogue",
    "InflightGeneration",
    "LearnedSource",
    "Persona",
    "PersonaCorpus",
    "PersonaWebhook",
    "PostStatus",
    "Reaction",
    "Report",
    "RunStatus",
    "Schedule",
    "SchedulePost",
    "TrainingRun",
    "VoiceOptIn",
]

Snowflake = BigInteger  # Discord ids


class Base(DeclarativeBase):
    metadata = metadata()
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class Timestamped:
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Persona(Timestamped, Base):
    """A voice. guild_id NULL = global (seeded defaults); otherwise visible only in that guild."""

    __tablename__ = "personas"
    __table_args__ = (
        UniqueConstraint("guild_id", "slug"),
        # NULLs are distinct in a unique constraint, so global names need their own (partial) index
        Index("uq_personas_global_slug", "slug", unique=True,
              sqlite_where=text("guild_id IS NULL"), postgresql_where=text("guild_id IS NULL")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(32))
    guild_id: Mapped[int | None] = mapped_column(Snowflake, index=True)
    display_name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text, default="")
    family: Mapped[Family] = mapped_column(str_enum(Family, "family"))
    recipe: Mapped[str] = mapped_column(String(64))
    sampling: Mapped[dict[str, Any]] = mapped_column(default=dict)
    active_checkpoint_id: Mapped[int | None] = mapped_column(
        ForeignKey("checkpoints.id", ondelete="SET NULL", use_alter=True))
    created_by: Mapped[int | None] = mapped_column(Snowflake)
    # Turned off by the deployment's operator (`improbable operator disable-persona`): refused everywhere
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # A member's own voice (/voice me): only that member uses, retrains or deletes it (service.lookup)
    owner_user_id: Mapped[int | None] = mapped_column(Snowflake, index=True)
    # Learned from channels hidden from @everyone (/persona learn): usable only in these channels; None: anywhere
    channel_ids: Mapped[list[int] | None] = mapped_column(JSON)

    active_checkpoint: Mapped[Checkpoint | None] = relationship(
        foreign_keys=[active_checkpoint_id], post_update=True)
    checkpoints: Mapped[list[Checkpoint]] = relationship(
        back_populates="persona", foreign_keys="Checkpoint.persona_id", passive_deletes=True)
    corpora: Mapped[list[Corpus]] = relationship(secondary="persona_corpora", viewonly=True)

    def __repr__(self) -> str:
        return f"<Persona {self.slug!r} guild={self.guild_id}>"


class Corpus(Base):
    """One upload (its file name, uploader, server and time), its text stored as UTF-8 at storage_key; sha256 is
    the hash of that stored text. Identical texts share the blob (corpora/<sha256>.txt), never the row."""

    __tablename__ = "corpora"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    raw_sha256: Mapped[str] = mapped_column(String(64), index=True)  # of the bytes first uploaded
    storage_key: Mapped[str] = mapped_column(String(255))
    filename: Mapped[str] = mapped_column(String(255))
    encoding: Mapped[str] = mapped_column(String(32))
    n_bytes: Mapped[int] = mapped_column(BigInteger)  # of the upload
    n_chars: Mapped[int] = mapped_column(BigInteger)
    n_lines: Mapped[int] = mapped_column(BigInteger)
    n_words: Mapped[int] = mapped_column(BigInteger)
    n_unique_chars: Mapped[int] = mapped_column(Integer)
    n_unique_words: Mapped[int] = mapped_column(Integer)
    stats: Mapped[dict[str, Any]] = mapped_column(default=dict)  # decoder stats + warnings
    uploaded_by: Mapped[int | None] = mapped_column(Snowflake)
    guild_id: Mapped[int | None] = mapped_column(Snowflake)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"<Corpus {self.id} {self.sha256[:12]} {self.filename!r}>"


class PersonaCorpus(Base):
    __tablename__ = "persona_corpora"

    persona_id: Mapped[int] = mapped_column(ForeignKey("personas.id", ondelete="CASCADE"), primary_key=True)
    corpus_id: Mapped[int] = mapped_column(ForeignKey("corpora.id", ondelete="CASCADE"), primary_key=True,
                                           index=True)
    added_by: Mapped[int | None] = mapped_column(Snowflake)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TrainingRun(Timestamped, Base):
    """One (re)training of a persona. Status moves only through db.runs.transition_run."""

    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    persona_id: Mapped[int] = mapped_column(ForeignKey("personas.id", ondelete="CASCADE"), index=True)
    corpus_id: Mapped[int | None] = mapped_column(ForeignKey("corpora.id", ondelete="SET NULL"), index=True)
    recipe: Mapped[str | None] = mapped_column(String(64))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)  # recipe overrides
    status: Mapped[RunStatus] = mapped_column(str_enum(RunStatus, "status"), default=RunStatus.QUEUED,
                                              index=True)
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)  # step, total, loss, val_loss, eta...
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    requested_by: Mapped[int | None] = mapped_column(Snowflake, index=True)
    guild_id: Mapped[int | None] = mapped_column(Snowflake)
    channel_id: Mapped[int | None] = mapped_column(Snowflake)  # where the progress message lives
    message_id: Mapped[int | None] = mapped_column(Snowflake)
    task_id: Mapped[str | None] = mapped_column(String(155))  # Celery task id
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    persona: Mapped[Persona] = relationship()
    corpus: Mapped[Corpus | None] = relationship()

    def __repr__(self) -> str:
        return f"<TrainingRun {self.id} persona={self.persona_id} {self.status}>"


class Checkpoint(Base):
    __tablename__ = "checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    persona_id: Mapped[int] = mapped_column(ForeignKey("personas.id", ondelete="CASCADE"), index=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("training_runs.id", ondelete="SET NULL"), index=True)
    name: Mapped[str] = mapped_column(String(64), default="best")  # "best", "last", ...
    storage_key: Mapped[str] = mapped_column(String(255), unique=True)
    family: Mapped[Family] = mapped_column(str_enum(Family, "family"))
    val_loss: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    persona: Mapped[Persona] = relationship(back_populates="checkpoints", foreign_keys=[persona_id])
    run: Mapped[TrainingRun | None] = relationship()

    def __repr__(self) -> str:
        return f"<Checkpoint {self.id} {self.storage_key!r}>"


class Generation(Base):
    """One generated text: what a regenerate button needs to do it again."""

    __tablename__ = "generations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The idempotency key: the generate job's request id (its Celery task id). A job run twice (redelivered,
    # or re-published by the lease reaper) records one row; see worker/recording.py.
    request_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    persona_id: Mapped[int] = mapped_column(ForeignKey("personas.id", ondelete="CASCADE"), index=True)
    checkpoint_id: Mapped[int | None] = mapped_column(ForeignKey("checkpoints.id", ondelete="SET NULL"))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("generations.id", ondelete="SET NULL"))
    prompt: Mapped[str] = mapped_column(Text, default="")
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    seed: Mapped[int | None] = mapped_column(BigInteger)
    output: Mapped[str] = mapped_column(Text, default="")
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    user_id: Mapped[int | None] = mapped_column(Snowflake, index=True)
    guild_id: Mapped[int | None] = mapped_column(Snowflake)
    channel_id: Mapped[int | None] = mapped_column(Snowflake)
    message_id: Mapped[int | None] = mapped_column(Snowflake, index=True)
    interaction_id: Mapped[int | None] = mapped_column(Snowflake)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # Set by the result's Delete button: the message is gone and the prompt and output are blanked
    deleted_at: Mapped[datetime | None]
    # The author of the message an ambient reply continued (its prompt is their text), for /privacy
    quoted_user_id: Mapped[int | None] = mapped_column(Snowflake, index=True)

    persona: Mapped[Persona] = relationship()

    def __repr__(self) -> str:
        return f"<Generation {self.id} persona={self.persona_id}>"


class InflightGeneration(Base):
    """A generate job the bot is showing in a Discord message right now: where that message is, and what the
    bot needs to render the result. Written when the job is enqueued, deleted when its message shows the
    outcome; rows left behind by a bot that died are finished (or ended with a note) at the next start-up."""

    __tablename__ = "inflight_generations"

    task_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    channel_id: Mapped[int | None] = mapped_column(Snowflake)
    # Where the text is shown: an interaction's original response (its token; Discord honours it for 15
    # minutes, longer than any generate job) or the bot's reply to a message (reply_to → message_id).
    interaction_token: Mapped[str | None] = mapped_column(String(500))
    reply_to: Mapped[int | None] = mapped_column(Snowflake)
    message_id: Mapped[int | None] = mapped_column(Snowflake)
    # the persona's channel webhook that posted message_id (its token stays in persona_webhooks)
    webhook_id: Mapped[int | None] = mapped_column(Snowflake)
    user_id: Mapped[int | None] = mapped_column(Snowflake)
    guild_id: Mapped[int | None] = mapped_column(Snowflake)
    request: Mapped[dict[str, Any]] = mapped_column(default=dict)  # service.generation.PreparedGeneration
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class InflightDialogue(Base):
    """A `/dialogue` being posted (bot/dialogue.py): where, between whom, and how many of its turns have
    started. Deleted when it ends; a row left by a bot that died is ended with a note at the next start-up."""

    __tablename__ = "inflight_dialogues"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the dialogue's claim on the limits
    guild_id: Mapped[int | None] = mapped_column(Snowflake)
    channel_id: Mapped[int] = mapped_column(Snowflake)
    speakers: Mapped[str] = mapped_column(String(200))  # "Alice and Trump", as the note names them
    turns: Mapped[int] = mapped_column(Integer)
    started: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Schedule(Timestamped, Base):
    """Post a sample into a channel every interval_seconds, or per a cron expression (exactly one)."""

    __tablename__ = "schedules"
    __table_args__ = (
        CheckConstraint("(interval_seconds IS NULL) <> (cron IS NULL)", name="interval_xor_cron"),
        CheckConstraint("interval_seconds IS NULL OR interval_seconds > 0", name="interval_positive"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    guild_id: Mapped[int] = mapped_column(Snowflake, index=True)
    channel_id: Mapped[int] = mapped_column(Snowflake)
    persona_id: Mapped[int] = mapped_column(ForeignKey("personas.id", ondelete="CASCADE"), index=True)
    prompt: Mapped[str] = mapped_column(Text, default="")
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    interval_seconds: Mapped[int | None] = mapped_column(Integer)
    cron: Mapped[str | None] = mapped_column(String(100))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_by: Mapped[int | None] = mapped_column(Snowflake)
    last_slot: Mapped[datetime | None]

    persona: Mapped[Persona] = relationship()

    def __repr__(self) -> str:
        return f"<Schedule {self.id} guild={self.guild_id} persona={self.persona_id}>"


class SchedulePost(Base):
    """The claim on one (schedule, slot): the row exists iff somebody owns posting that slot."""

    __tablename__ = "schedule_posts"
    __table_args__ = (UniqueConstraint("schedule_id", "slot"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    schedule_id: Mapped[int] = mapped_column(ForeignKey("schedules.id", ondelete="CASCADE"))
    slot: Mapped[datetime]
    status: Mapped[PostStatus] = mapped_column(str_enum(PostStatus, "status"), default=PostStatus.CLAIMED)
    message_id: Mapped[int | None] = mapped_column(Snowflake)
    generation_id: Mapped[int | None] = mapped_column(ForeignKey("generations.id", ondelete="SET NULL"))
    error: Mapped[str | None] = mapped_column(Text)
    claimed_at: Mapped[datetime] = mapped_column(default=utcnow)
    posted_at: Mapped[datetime | None]


DEFAULT_MAX_QUEUED_JOBS = 1
DEFAULT_COOLDOWN_SECONDS = 10
DEFAULT_TRAIN_COOLDOWN_SECONDS = 600
DEFAULT_MAX_UPLOAD_BYTES = 25_000_000


class GuildSettings(Timestamped, Base):
    """Per-guild policy. A guild without a row uses the defaults above (see db.guilds.guild_settings)."""

    __tablename__ = "guild_settings"

    guild_id: Mapped[int] = mapped_column(Snowflake, primary_key=True, autoincrement=False)
    trainer_role_id: Mapped[int | None] = mapped_column(Snowflake)  # None: only managers may train
    max_queued_jobs_per_user: Mapped[int] = mapped_column(Integer, default=DEFAULT_MAX_QUEUED_JOBS)
    cooldown_seconds: Mapped[int] = mapped_column(Integer, default=DEFAULT_COOLDOWN_SECONDS)
    train_cooldown_seconds: Mapped[int] = mapped_column(Integer, default=DEFAULT_TRAIN_COOLDOWN_SECONDS)
    max_upload_bytes: Mapped[int] = mapped_column(BigInteger, default=DEFAULT_MAX_UPLOAD_BYTES)


class AmbientChannel(Timestamped, Base):
    """A channel opted in to ambient replies (`/ambient on`): the bot answers a human message there now and
    then (chance per message, at most once per cooldown_seconds) in this persona. Whether a conversation
    window is open right now is shared state in quota_marks (service/ambient.py), not here."""

    __tablename__ = "ambient_channels"

    channel_id: Mapped[int] = mapped_column(Snowflake, primary_key=True, autoincrement=False)
    guild_id: Mapped[int] = mapped_column(Snowflake, index=True)
    persona_slug: Mapped[str] = mapped_column(String(32))
    chance: Mapped[float] = mapped_column(Float)
    cooldown_seconds: Mapped[int] = mapped_column(Integer)
    enabled_by: Mapped[int | None] = mapped_column(Snowflake)
    # The conversation window: once a member replies to an ambient reply, for window_seconds (0: never) the
    # persona answers messages here with window_chance, at most once per window_cooldown_seconds
    window_seconds: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    window_chance: Mapped[float] = mapped_column(Float, default=0.5, server_default=text("0.5"))
    window_cooldown_seconds: Mapped[int] = mapped_column(Integer, default=30, server_default=text("30"))


class GuildStatus(Base):
    """The bot's standing in a server, kept by the operator tools (service/operator.py): when the bot was
    removed (its data is purged after the grace period unless it comes back) and whether the operator
    blocked it (the bot leaves, and leaves again at once if added back)."""

    __tablename__ = "guild_status"

    guild_id: Mapped[int] = mapped_column(Snowflake, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(100), default="")
    left_at: Mapped[datetime | None]
    blocked: Mapped[bool] = mapped_column(Boolean, default=False)
    blocked_at: Mapped[datetime | None]
    purged_at: Mapped[datetime | None]


class Report(Base):
    """A user's report of a generated text (the Report button, `/report`), queued for the operator with a
    snapshot of the text as it was."""

    __tablename__ = "reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reporter_id: Mapped[int | None] = mapped_column(Snowflake, index=True)
    guild_id: Mapped[int | None] = mapped_column(Snowflake, index=True)
    generation_id: Mapped[int | None] = mapped_column(ForeignKey("generations.id", ondelete="SET NULL"))
    persona_slug: Mapped[str] = mapped_column(String(32), default="")
    text: Mapped[str] = mapped_column(Text, default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="open")  # open | closed
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class QuotaMark(Base):
    """A cooldown shared by every bot process: `key` (what and whose, e.g. "generate:<guild>:<user>") may not
    be used again before `until` (Unix time). Claimed atomically: an UPDATE of an expired mark, else an INSERT
    (service/quotas.py)."""

    __tablename__ = "quota_marks"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    until: Mapped[float] = mapped_column(Float)


class QuotaClaim(Base):
    """A job in flight, counted against a member and a server by its cost (core.cost units) until it ends or
    `expires` (Unix time; a bot that died leaves no claim for ever)."""

    __tablename__ = "quota_claims"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    guild_id: Mapped[int | None] = mapped_column(Snowflake, index=True)
    user_id: Mapped[int | None] = mapped_column(Snowflake, index=True)
    cost: Mapped[float] = mapped_column(Float)
    expires: Mapped[float] = mapped_column(Float)


class QuotaUsage(Base):
    """Something used that a rolling window counts (ambient replies per server per hour, training minutes per
    server per day, job units per member and server): `amount` of `key` at `at` (Unix time)."""

    __tablename__ = "quota_usage"
    __table_args__ = (Index("ix_quota_usage_key_at", "key", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(200))
    amount: Mapped[float] = mapped_column(Float)
    at: Mapped[float] = mapped_column(Float)


class Reaction(Base):
    """A member's 👍 or 👎 (or the server's configured emoji) on a message showing a generated text: who
    (personal data: /privacy exports and deletes it), which text, which kind, when. One row per text, member
    and kind; removing the reaction deletes the row, and deleting the text deletes its reactions."""

    __tablename__ = "reactions"
    __table_args__ = (UniqueConstraint("generation_id", "user_id", "kind"),
                      Index("ix_reactions_guild_id_created_at", "guild_id", "created_at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    generation_id: Mapped[int] = mapped_column(ForeignKey("generations.id", ondelete="CASCADE"), index=True)
    guild_id: Mapped[int] = mapped_column(Snowflake)
    user_id: Mapped[int] = mapped_column(Snowflake, index=True)
    kind: Mapped[str] = mapped_column(String(8))  # "up" | "down"
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BoardSettings(Timestamped, Base):
    """A server's board: the emoji that count as up and down votes (`/board emoji`; None: 👍 and 👎), and the
    channel its weekly post goes to (`/board post`; None: no weekly post) with the start of the last week
    whose board was posted (or, when the post was set up, of the week before: that one is not posted)."""

    __tablename__ = "board_settings"

    guild_id: Mapped[int] = mapped_column(Snowflake, primary_key=True, autoincrement=False)
    up_emoji: Mapped[str | None] = mapped_column(String(100))
    down_emoji: Mapped[str | None] = mapped_column(String(100))
    post_channel_id: Mapped[int | None] = mapped_column(Snowflake)
    posted_week: Mapped[datetime | None]


class PersonaWebhook(Base):
    """A channel webhook the bot created to post as one persona there (bot/webhooks.py): Discord's id and
    token (a secret: whoever holds it can post in the channel; never logged, deleted with the server's data),
    the digest of the avatar uploaded to it, and when it was last used (the least recently used one is
    deleted when a channel runs out of webhooks). One per channel and persona slug."""

    __tablename__ = "persona_webhooks"
    __table_args__ = (UniqueConstraint("channel_id", "persona_slug"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    guild_id: Mapped[int] = mapped_column(Snowflake, index=True)
    channel_id: Mapped[int] = mapped_column(Snowflake)
    persona_slug: Mapped[str] = mapped_column(String(32))
    webhook_id: Mapped[int] = mapped_column(Snowflake, unique=True)
    token: Mapped[str] = mapped_column(String(200))
    avatar: Mapped[str] = mapped_column(String(32), default="")
    last_used_at: Mapped[datetime] = mapped_column(default=utcnow)


class VoiceOptIn(Base):
    """A member who agreed (`/voice optin`) that their messages in a server may be learned from (/persona learn)."""

    __tablename__ = "voice_optins"

    guild_id: Mapped[int] = mapped_column(Snowflake, primary_key=True, autoincrement=False)
    user_id: Mapped[int] = mapped_column(Snowflake, primary_key=True, autoincrement=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LearnedSource(Base):
    """A member whose messages are in a persona learned from channels: their opt-out removes that text."""

    __tablename__ = "learned_sources"

    persona_id: Mapped[int] = mapped_column(ForeignKey("personas.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(Snowflake, primary_key=True, autoincrement=False, index=True)
    guild_id: Mapped[int] = mapped_column(Snowflake)
    n_messages: Mapped[int] = mapped_column(Integer, default=0)
