"""What the commands do, without Discord: shared by the Discord cogs and the console chat.

Plain synchronous functions over the database (the bot calls them with asyncio.to_thread). Anything a user
should fix raises `UserError` with the message to show; permissions are checked here too, so the console
and Discord enforce the same rules. Jobs are not enqueued here (that is bot/jobs.py): functions return
the request or run id to enqueue. Torch-free.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from core.settings import get_settings
from db import Checkpoint, Family, Generation, Persona, RunStatus, Schedule, TrainingRun, open_storage, session_scope
from db.ingest import IngestError, ingest
from db.models import (
    DEFAULT_COOLDOWN_SECONDS,
    DEFAULT_MAX_QUEUED_JOBS,
    DEFAULT_MAX_UPLOAD_BYTES,
    DEFAULT_TRAIN_COOLDOWN_SECONDS,
)
from db.personas import (
    DEFAULT_PERSONAS,
    PersonaError,
    get_persona,
    link_corpus,
    resolve_persona,
    validate_slug,
    visible_personas,
)
from db.personas import create_persona as db_create_persona
from db.personas import delete_persona as db_delete_persona
from db.queries import (
    ACTIVE_STATUSES,
    InvalidTransition,
    active_runs,
    create_run,
    create_schedule,
    enabled_schedules,
    generation_for_message,
    guild_settings,
    last_run_requested,
    request_cancel,
    set_generation_message,
    update_guild_settings,
)
from db.types import utcnow
from trainer.originality import originality

# Recipes an uploaded persona trains with, by family (trainer/recipes/*.json).
FAMILY_LABELS = {Family.CHAR_RNN: "characters (LSTM)", Family.WORD_GRU: "words (GRU over word vectors)",
                 Family.WORD_MLP: "words (Bengio MLP)"}
PARAM_KEYS = ("max_tokens", "temperature", "top_k", "top_p", "improbability", "tolerance", "repetition_penalty",
              "repetition_window", "stop", "stop_at_sentence_end", "seed")
MAX_PROMPT_CHARS = 1500
MAX_CONTINUE_CHARS = 2000


class UserError(Exception):
    """A request the user has to change; the message says how."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class NotAllowed(UserError):
    pass


@dataclass(frozen=True)
class Actor:
    """Who asks, and from where. The console is an actor with can_manage=True and no guild."""

    user_id: int | None
    guild_id: int | None = None
    channel_id: int | None = None
    can_manage: bool = False  # Manage Server in that channel
    role_ids: frozenset[int] = frozenset()


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
        return Policy(row.cooldown_seconds, row.train_cooldown_seconds, row.max_queued_jobs_per_user,
                      row.max_upload_bytes, row.trainer_role_id)


def update_policy(actor: Actor, *, trainer_role_id: int | None = None, clear_trainer_role: bool = False,
                  cooldown_seconds: int | None = None, train_cooldown_seconds: int | None = None,
                  max_queued_jobs: int | None = None, max_upload_mb: float | None = None) -> Policy:
    """Change the guild's limits (Manage Server only); None leaves a value as it is."""
    if actor.guild_id is None:
        raise UserError("These settings belong to a server: use this command in one.")
    if not actor.can_manage:
        raise NotAllowed("Only members with the **Manage Server** permission can change these settings.")
    checks = [(cooldown_seconds, 0, 86_400, "cooldown"), (train_cooldown_seconds, 0, 604_800, "train cooldown"),
              (max_queued_jobs, 1, 100, "max jobs"), (max_upload_mb, 0.01, 500, "max upload")]
    for value, low, high, name in checks:
        if value is not None and not low <= value <= high:
            raise UserError(f"{name} must be between {low:g} and {high:g}.")
    values: dict[str, Any] = {"cooldown_seconds": cooldown_seconds, "train_cooldown_seconds": train_cooldown_seconds,
                              "max_queued_jobs_per_user": max_queued_jobs}
    if max_upload_mb is not None:
        values["max_upload_bytes"] = int(max_upload_mb * 1_000_000)
    if trainer_role_id is not None or clear_trainer_role:
        values["trainer_role_id"] = None if clear_trainer_role else trainer_role_id
    with session_scope() as session:
        update_guild_settings(session, actor.guild_id, **{k: v for k, v in values.items()
                                                          if v is not None or k == "trainer_role_id"})
    return policy(actor.guild_id)


def describe_policy(pol: Policy) -> str:
    role = f"<@&{pol.trainer_role_id}>" if pol.trainer_role_id else "none (Manage Server only)"
    return (f"Trainer role: {role}\nCooldown between generations: {pol.cooldown_seconds} s per member\n"
            f"Cooldown between training runs: {pol.train_cooldown_seconds} s per member\n"
            f"Jobs a member may have waiting: {pol.max_queued_jobs}\n"
            f"Largest upload: {pol.max_upload_bytes / 1e6:g} MB")


def may_train(actor: Actor, pol: Policy) -> bool:
    return actor.can_manage or (pol.trainer_role_id is not None and pol.trainer_role_id in actor.role_ids)


def require_trainer(actor: Actor, pol: Policy | None = None) -> None:
    pol = pol or policy(actor.guild_id)
    if not may_train(actor, pol):
        role = f" or the <@&{pol.trainer_role_id}> role" if pol.trainer_role_id else ""
        raise NotAllowed(f"You need the **Manage Server** permission{role} to train, delete or schedule personas.")


def _scope(persona: Persona) -> str:
    if persona.guild_id is not None:
        return "this server"
    return "built-in" if persona.slug in {spec.slug for spec in DEFAULT_PERSONAS} else "global"


def _unknown(e: PersonaError) -> UserError:
    return UserError(e.message)


def new_seed() -> int:
    return secrets.randbits(31)


# -- generation ------------------------------------------------------------------------------------------

@dataclass
class GenerateRequest:
    """A generate job to enqueue (`payload` is the improbable.generate request) and how to show it."""

    payload: dict
    display_name: str
    shown_prompt: str
    family: str

    @property
    def params(self) -> dict:
        return self.payload["params"]


def check_params(params: dict) -> dict:
    """Reject out-of-range sampling parameters with a message (Discord's option ranges do the same)."""
    cap = get_settings().max_generate_tokens
    rules = [
        ("max_tokens", lambda v: 1 <= v <= cap, f"length must be between 1 and {cap}"),
        ("temperature", lambda v: 0 <= v <= 5, "temperature must be between 0 (greedy) and 5"),
        ("top_k", lambda v: 0 <= v <= 10_000, "top-k must be between 0 (off) and 10000"),
        ("top_p", lambda v: 0 < v <= 1, "top-p must be in (0, 1]"),
        ("improbability", lambda v: 0 <= v <= 1, "improbability must be a probability in (0, 1], or 0 for off"),
        ("tolerance", lambda v: 0 <= v <= 10, "tolerance must be between 0 and 10"),
        ("seed", lambda v: 0 <= v < 2**63, "seed must be a non-negative integer"),
    ]
    for key, ok, message in rules:
        if params.get(key) is not None and not ok(params[key]):
            raise UserError(message + ".")
    return params


def sampling(persona: Persona, overrides: dict | None = None) -> dict:
    """The persona's sampling defaults, then the overrides; None values are left out; a seed is set."""
    params = {k: v for k, v in (persona.sampling or {}).items() if k in PARAM_KEYS and v is not None}
    params.update({k: v for k, v in (overrides or {}).items() if k in PARAM_KEYS and v is not None})
    if params.get("seed") is None:
        params["seed"] = new_seed()
    return check_params(params)


def _checkpoint_or_explain(persona: Persona, checkpoint: Checkpoint | None, session) -> Checkpoint:
    if checkpoint is not None:
        return checkpoint
    running = active_runs(session, persona=persona)
    if running:
        raise UserError(f"`{persona.slug}` is still training (run {running[0].id}, {running[0].status.value}); "
                        "try again when it is done (`/train status`).")
    hint = ("Upload your own copy of the text with `/persona retrain`" if persona.slug == "harry-potter"
            else f"Train it with `/persona retrain {persona.slug}` (or `improbable train --recipe {persona.recipe}` "
                 "on the command line)")
    raise UserError(f"`{persona.slug}` has no trained model yet. {hint}.")


def prepare_generation(slug: str, prompt: str, actor: Actor, overrides: dict | None = None) -> GenerateRequest:
    """Resolve the persona (closest names when unknown) and build the generate request."""
    prompt = (prompt or "")[:MAX_PROMPT_CHARS]
    with session_scope() as session:
        try:
            persona, checkpoint = resolve_persona(session, slug, actor.guild_id)
        except PersonaError as e:
            raise _unknown(e) from None
        checkpoint = _checkpoint_or_explain(persona, checkpoint, session)
        return _request(persona, checkpoint.id, prompt, sampling(persona, overrides), actor, shown=prompt)


def _request(persona: Persona, checkpoint_id: int, prompt: str, params: dict, actor: Actor, *, shown: str,
             parent: int | None = None) -> GenerateRequest:
    payload = {"checkpoint_id": checkpoint_id, "persona": persona.slug, "prompt": prompt, "params": params,
               "guild_id": actor.guild_id, "channel_id": actor.channel_id, "user_id": actor.user_id}
    if parent is not None:
        payload["parent_generation_id"] = parent
    return GenerateRequest(payload, persona.display_name, shown, persona.family.value)


def join_text(prompt: str, completion: str, family: str) -> str:
    """Prompt and completion as one text (word models join words with a space)."""
    if family != Family.CHAR_RNN.value and prompt and completion and not prompt[-1].isspace() \
            and not completion[0].isspace() and completion[0] not in ".,;:!?'\")]":
        return f"{prompt} {completion}"
    return prompt + completion


def lower_improbability(p: float | None) -> float:
    """The next 'more improbable' target: 0.2 to begin with, then a quarter each time (at least 1e-4)."""
    if not p:
        return 0.2
    return max(round(p / 4, 6), 1e-4)


def follow_up(generation_id: int, mode: str, actor: Actor, extra_prompt: str = "") -> GenerateRequest:
    """A request derived from an earlier generation. mode: "regenerate" (same parameters, new seed),
    "continue" (its text as the prompt, new seed) or "improbable" (lower target probability)."""
    with session_scope() as session:
        gen = session.get(Generation, generation_id)
        if gen is None:
            raise UserError("That text is no longer in the database (its persona may have been deleted).")
        persona = gen.persona
        checkpoint = _checkpoint_or_explain(persona, persona.active_checkpoint, session)
        params = {k: v for k, v in (gen.params or {}).items() if k in PARAM_KEYS}
        if mode == "regenerate":
            params["seed"] = new_seed()
            prompt, shown = gen.prompt, gen.prompt
        elif mode == "improbable":
            params["improbability"] = lower_improbability(params.get("improbability"))
            prompt, shown = gen.prompt, gen.prompt
        elif mode == "continue":
            params["seed"] = new_seed()
            text = join_text(gen.prompt, gen.output, persona.family.value)
            if extra_prompt.strip():
                text = join_text(text.rstrip() + "\n", extra_prompt.strip(), persona.family.value)
            prompt = text[-MAX_CONTINUE_CHARS:]
            shown = "…" + prompt[-120:].lstrip() if len(prompt) > 120 else prompt
        else:
            raise ValueError(f"unknown follow-up mode {mode!r}")
        return _request(persona, checkpoint.id, prompt, check_params(params), actor, shown=shown, parent=gen.id)


def generation_of_message(message_id: int) -> int | None:
    with session_scope() as session:
        gen = generation_for_message(session, message_id)
        return gen.id if gen is not None else None


def attach_message(generation_id: int, message_id: int) -> None:
    with session_scope() as session:
        set_generation_message(session, generation_id, message_id)


def parse_chat(text: str, guild_id: int | None) -> tuple[str, str]:
    """'trump: make the wall' → ('trump', 'make the wall'); without a known persona prefix the default
    persona gets the whole text. A prefix that is close to a persona's name raises with suggestions."""
    m = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9-]{0,31})\s*:\s*(.*)$", text, re.DOTALL)
    default = get_settings().bot_default_persona
    if not m:
        return default, text.strip()
    slug, prompt = m.group(1).lower(), m.group(2).strip()
    with session_scope() as session:
        try:
            resolve_persona(session, slug, guild_id)
        except PersonaError as e:
            if getattr(e, "suggestions", None):
                raise _unknown(e) from None
            return default, text.strip()
    return slug, prompt


# -- personas --------------------------------------------------------------------------------------------

@dataclass
class PersonaSummary:
    slug: str
    display_name: str
    family: str
    scope: str  # "built-in" | "this server"
    ready: bool
    training: bool
    description: str


def list_personas(guild_id: int | None) -> list[PersonaSummary]:
    with session_scope() as session:
        training = set(session.scalars(select(TrainingRun.persona_id)
                                       .where(TrainingRun.status.in_(ACTIVE_STATUSES))))
        return [PersonaSummary(p.slug, p.display_name, p.family.value, _scope(p),
                               p.active_checkpoint_id is not None, p.id in training, p.description)
                for p in visible_personas(session, guild_id)]


def persona_names(guild_id: int | None) -> list[str]:
    with session_scope() as session:
        return [p.slug for p in visible_personas(session, guild_id)]


@dataclass
class PersonaInfo:
    slug: str
    display_name: str
    description: str
    family: str
    scope: str
    corpora: list[dict] = field(default_factory=list)  # filename, n_chars, n_words, n_unique_chars, ...
    checkpoint_id: int | None = None
    val_loss: float | None = None
    metrics: dict = field(default_factory=dict)
    trained_at: str | None = None
    originality: float | None = None
    sample: str | None = None
    loss_png: bytes | None = None
    active_run: int | None = None


def persona_info(slug: str, guild_id: int | None) -> PersonaInfo:
    storage = open_storage()
    with session_scope() as session:
        try:
            persona, checkpoint = resolve_persona(session, slug, guild_id)
        except PersonaError as e:
            raise _unknown(e) from None
        info = PersonaInfo(persona.slug, persona.display_name, persona.description, persona.family.value,
                           _scope(persona))
        for corpus in persona.corpora:
            info.corpora.append({"filename": corpus.filename, "n_chars": corpus.n_chars, "n_words": corpus.n_words,
                                 "n_lines": corpus.n_lines, "n_unique_chars": corpus.n_unique_chars,
                                 "n_unique_words": corpus.n_unique_words, "encoding": corpus.encoding,
                                 "storage_key": corpus.storage_key})
        running = active_runs(session, persona=persona)
        info.active_run = running[0].id if running else None
        if checkpoint is None:
            return info
        info.checkpoint_id, info.val_loss = checkpoint.id, checkpoint.val_loss
        info.metrics = dict(checkpoint.metrics or {})
        info.trained_at = checkpoint.created_at.isoformat() if checkpoint.created_at else None
        run_metrics = dict(checkpoint.run.metrics or {}) if checkpoint.run is not None else {}
    info.sample = run_metrics.get("sample") or info.metrics.get("sample")
    info.originality = run_metrics.get("originality", info.metrics.get("originality"))
    if run_metrics.get("loss_png"):
        try:
            info.loss_png = storage.get(run_metrics["loss_png"])
        except FileNotFoundError:
            info.loss_png = None
    fill_originality(info)
    return info


def fill_originality(info: PersonaInfo) -> None:
    """Compare the sample with the persona's (first) uploaded corpus, when both exist."""
    if info.originality is not None or not info.sample or not info.corpora:
        return
    try:
        text = open_storage().get(info.corpora[0]["storage_key"]).decode("utf-8")
    except (FileNotFoundError, UnicodeDecodeError):
        return
    info.originality = originality(info.sample, text)


@dataclass
class NewRun:
    run_id: int
    persona_slug: str
    display_name: str
    created_persona: bool
    warnings: tuple[str, ...] = ()
    deduplicated: bool = False


def _train_overrides(minutes: float | None) -> dict:
    if minutes is None:
        return {}
    cap = get_settings().train_max_minutes
    if not 0 < minutes <= cap:
        raise UserError(f"minutes must be more than 0 and at most {cap:g}.")
    return {"minutes": float(minutes)}


def _check_training_limits(session, actor: Actor, pol: Policy) -> None:
    if actor.user_id is None:
        return
    mine = active_runs(session, requested_by=actor.user_id)
    if len(mine) >= max(pol.max_queued_jobs, 1):
        raise UserError(f"You already have {len(mine)} training run(s) queued or running (the limit here is "
                        f"{pol.max_queued_jobs}); wait for it or cancel it with `/train cancel`.")
    if pol.train_cooldown_seconds > 0 and not actor.can_manage:
        last = last_run_requested(session, actor.user_id, actor.guild_id)
        if last is not None:
            ready = last.created_at + timedelta(seconds=pol.train_cooldown_seconds)
            if ready > utcnow():
                raise UserError(f"You can start another training run <t:{int(ready.timestamp())}:R>.")


def _ingest(session, actor: Actor, pol: Policy, data: bytes, filename: str):
    if len(data) > pol.max_upload_bytes:
        raise UserError(f"The file is {len(data) / 1e6:.1f} MB; the limit here is {pol.max_upload_bytes / 1e6:.1f} MB.")
    try:
        return ingest(data, filename, actor.user_id, actor.guild_id, session=session,
                      max_bytes=pol.max_upload_bytes)
    except IngestError as e:
        raise UserError(f"That file cannot be used: {e.message}") from None


def create_persona(actor: Actor, name: str, data: bytes, filename: str, family: str = "char-rnn",
                   description: str = "", minutes: float | None = None) -> NewRun:
    """A new persona in the actor's guild, trained on the uploaded text: ingest, persona, queued run."""
    pol = policy(actor.guild_id)
    require_trainer(actor, pol)
    try:
        slug = validate_slug(name)
        fam = Family(family)
    except PersonaError as e:
        raise UserError(e.message) from None
    except ValueError:
        raise UserError(f"Unknown family `{family}`; choose one of {', '.join(f.value for f in Family)}.") from None
    overrides = _train_overrides(minutes)
    with session_scope() as session:
        if get_persona(session, slug, actor.guild_id) is not None:
            raise UserError(f"The name `{slug}` is already taken here; choose another, or use "
                            f"`/persona retrain {slug}` to train it again.")
        _check_training_limits(session, actor, pol)
        uploaded = _ingest(session, actor, pol, data, filename)
        try:
            persona = db_create_persona(session, slug, family=fam,
                                        guild_id=actor.guild_id, description=description[:1000],
                                        created_by=actor.user_id)
        except PersonaError as e:
            raise UserError(e.message) from None
        link_corpus(session, persona, uploaded.corpus, actor.user_id)
        run = create_run(session, persona, corpus=uploaded.corpus, config=overrides, requested_by=actor.user_id,
                         guild_id=actor.guild_id, channel_id=actor.channel_id)
        return NewRun(run.id, persona.slug, persona.display_name, True, uploaded.warnings, not uploaded.created)


def retrain(actor: Actor, slug: str, data: bytes | None = None, filename: str | None = None,
            minutes: float | None = None) -> NewRun:
    """Train a persona again: on a new upload, else on its latest corpus, else on its recipe's corpus."""
    pol = policy(actor.guild_id)
    require_trainer(actor, pol)
    overrides = _train_overrides(minutes)
    with session_scope() as session:
        try:
            persona, _ = resolve_persona(session, slug, actor.guild_id)
        except PersonaError as e:
            raise _unknown(e) from None
        if active_runs(session, persona=persona):
            raise UserError(f"`{persona.slug}` is already training; see `/train status`.")
        _check_training_limits(session, actor, pol)
        corpus, warnings, dedup = None, (), False
        if data is not None:
            uploaded = _ingest(session, actor, pol, data, filename or "upload.txt")
            corpus, warnings, dedup = uploaded.corpus, uploaded.warnings, not uploaded.created
            link_corpus(session, persona, corpus, actor.user_id)
        elif persona.corpora:
            corpus = max(persona.corpora, key=lambda c: c.id)
        elif persona.slug == "harry-potter":
            raise UserError("Harry Potter is copyrighted, so no text ships with Improbable: attach your own copy "
                            "(a .txt file) to `/persona retrain`.")
        run = create_run(session, persona, corpus=corpus, config=overrides, requested_by=actor.user_id,
                         guild_id=actor.guild_id, channel_id=actor.channel_id)
        return NewRun(run.id, persona.slug, persona.display_name, False, tuple(warnings), dedup)


def abandon_run(run_id: int, *, delete_persona: bool) -> None:
    """The run could not be enqueued: cancel it (and remove a persona created just for it)."""
    with session_scope() as session:
        run = session.get(TrainingRun, run_id)
        if run is None:
            return
        persona = run.persona
        try:
            request_cancel(session, run)
        except InvalidTransition:
            pass
        session.commit()
        if delete_persona and persona.active_checkpoint_id is None:
            db_delete_persona(session, persona, open_storage())


def delete_persona(actor: Actor, slug: str) -> str:
    require_trainer(actor)
    with session_scope() as session:
        try:
            persona, _ = resolve_persona(session, slug, actor.guild_id)
        except PersonaError as e:
            raise _unknown(e) from None
        if persona.guild_id is None and actor.guild_id is not None:
            raise UserError(f"`{persona.slug}` is a built-in persona; only this server's own personas can be deleted.")
        for run in active_runs(session, persona=persona):
            try:
                request_cancel(session, run)
            except InvalidTransition:
                pass
        name = persona.slug
        db_delete_persona(session, persona, open_storage())
    return name


# -- training runs ---------------------------------------------------------------------------------------

@dataclass
class RunView:
    id: int
    persona_slug: str
    display_name: str
    status: str
    progress: dict
    metrics: dict
    error: str | None
    requested_by: int | None
    guild_id: int | None
    channel_id: int | None
    message_id: int | None
    position: int | None  # in the training queue, when queued
    cancel_requested: bool

    @property
    def finished(self) -> bool:
        return RunStatus(self.status).finished


def _view(session, run: TrainingRun) -> RunView:
    position = None
    if run.status is RunStatus.QUEUED:
        ahead = session.scalar(select(func.count()).select_from(TrainingRun)
                               .where(TrainingRun.status.in_(ACTIVE_STATUSES), TrainingRun.id < run.id)) or 0
        position = ahead + 1
    return RunView(run.id, run.persona.slug, run.persona.display_name, run.status.value, dict(run.progress or {}),
                   dict(run.metrics or {}), run.error, run.requested_by, run.guild_id, run.channel_id,
                   run.message_id, position, run.cancel_requested)


def run_status(run_id: int) -> RunView | None:
    with session_scope() as session:
        run = session.get(TrainingRun, run_id)
        return _view(session, run) if run is not None else None


def set_run_message(run_id: int, channel_id: int | None, message_id: int | None) -> None:
    with session_scope() as session:
        run = session.get(TrainingRun, run_id)
        if run is not None:
            run.channel_id, run.message_id = channel_id, message_id


def training_runs(actor: Actor, *, mine: bool = False) -> list[RunView]:
    """Active runs in the actor's guild (or the actor's own), oldest first."""
    with session_scope() as session:
        runs = active_runs(session, requested_by=actor.user_id if mine else None, guild_id=actor.guild_id)
        return [_view(session, r) for r in runs]


def runs_to_watch() -> list[RunView]:
    """Active runs with a progress message (the bot resumes watching them after a restart)."""
    with session_scope() as session:
        runs = [r for r in active_runs(session) if r.message_id is not None and r.channel_id is not None]
        return [_view(session, r) for r in runs]


def cancel_training(actor: Actor, run_id: int | None = None) -> RunView:
    """Cancel a run (default: the actor's latest active one). Its requester or a trainer may."""
    with session_scope() as session:
        if run_id is None:
            mine = active_runs(session, requested_by=actor.user_id)
            if not mine:
                raise UserError("You have no training run queued or running.")
            run = mine[-1]
        else:
            run = session.get(TrainingRun, run_id)
            if run is None or (actor.guild_id is not None and run.guild_id not in (None, actor.guild_id)):
                raise UserError(f"There is no training run {run_id} here.")
        if run.requested_by != actor.user_id and not may_train(actor, policy(actor.guild_id)):
            raise NotAllowed("Only whoever started a run, or somebody who may train personas, can cancel it.")
        try:
            run = request_cancel(session, run)
        except InvalidTransition:
            raise UserError(f"Run {run.id} already {run.status.value}.") from None
        return _view(session, run)


def loss_curve(view: RunView) -> bytes | None:
    key = view.metrics.get("loss_png")
    if not key:
        return None
    try:
        return open_storage().get(key)
    except FileNotFoundError:
        return None


# -- schedules -------------------------------------------------------------------------------------------

_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400, "w": 604800}
MIN_INTERVAL_SECONDS = 60


def parse_interval(text: str) -> int:
    """'90m', '1h30m', '2 h', '1d' → seconds (at least a minute)."""
    s = text.strip().lower().replace(" ", "")
    parts = re.findall(r"(\d+(?:\.\d+)?)(s|sec|min|m|hr|h|d|w)", s)
    if not parts or "".join(n + u for n, u in parts) != s:
        raise UserError(f"`{text}` is not an interval: write something like `30m`, `2h`, `1h30m` or `1d`.")
    seconds = int(sum(float(n) * _UNITS[u] for n, u in parts))
    if seconds < MIN_INTERVAL_SECONDS:
        raise UserError("Schedules run at most once a minute: use an interval of at least `1m`.")
    return seconds


def check_cron(expr: str) -> str:
    fields = expr.split()
    if len(fields) != 5:
        raise UserError(f"`{expr}` is not a cron expression: it needs 5 fields "
                        "(minute hour day-of-month month day-of-week), e.g. `0 9 * * 1-5`.")
    from celery.schedules import crontab

    try:
        minute, hour, dom, month, dow = fields
        crontab(minute=minute, hour=hour, day_of_month=dom, month_of_year=month, day_of_week=dow)
    except Exception as e:  # noqa: BLE001 - celery raises ValueError and friends
        raise UserError(f"`{expr}` is not a valid cron expression: {e}") from None
    return " ".join(fields)


def describe_every(interval_seconds: int | None, cron: str | None) -> str:
    if cron:
        return f"cron `{cron}` (UTC)"
    s = interval_seconds or 0
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s % n == 0:
            return f"every {s // n}{unit}"
    return f"every {s}s"


@dataclass
class ScheduleView:
    id: int
    persona_slug: str
    channel_id: int
    every: str
    prompt: str
    enabled: bool


def add_schedule(actor: Actor, slug: str, channel_id: int, *, every: str | None = None, cron: str | None = None,
                 prompt: str = "") -> ScheduleView:
    if actor.guild_id is None:
        raise UserError("Schedules post into a server's channels: use this command in a server.")
    require_trainer(actor)
    if bool(every) == bool(cron):
        raise UserError("Give exactly one of `every` (like `2h`) or `cron` (like `0 9 * * *`).")
    interval = parse_interval(every) if every else None
    cron = check_cron(cron) if cron else None
    with session_scope() as session:
        try:
            persona, checkpoint = resolve_persona(session, slug, actor.guild_id)
        except PersonaError as e:
            raise _unknown(e) from None
        sched = create_schedule(session, persona, guild_id=actor.guild_id, channel_id=channel_id,
                                prompt=(prompt or "")[:MAX_PROMPT_CHARS], interval_seconds=interval, cron=cron,
                                created_by=actor.user_id)
        return ScheduleView(sched.id, persona.slug, channel_id, describe_every(interval, cron), sched.prompt, True)


def list_schedules(guild_id: int | None) -> list[ScheduleView]:
    if guild_id is None:
        return []
    with session_scope() as session:
        return [ScheduleView(s.id, s.persona.slug, s.channel_id, describe_every(s.interval_seconds, s.cron),
                             s.prompt, s.enabled) for s in enabled_schedules(session, guild_id)]


def remove_schedule(actor: Actor, schedule_id: int) -> str:
    require_trainer(actor)
    with session_scope() as session:
        sched = session.get(Schedule, schedule_id)
        if sched is None or sched.guild_id != actor.guild_id:
            raise UserError(f"There is no schedule {schedule_id} in this server (see `/schedule list`).")
        text = f"schedule {sched.id} ({sched.persona.slug} in <#{sched.channel_id}>, " \
               f"{describe_every(sched.interval_seconds, sched.cron)})"
        session.delete(sched)
    return text


# -- bundled checkpoints ---------------------------------------------------------------------------------

def prepare_database(settings=None) -> list[str]:
    """Migrate an embedded SQLite database (a server database has its own migration step), then activate
    bundled checkpoints of built-in personas without one. Returns the slugs installed."""
    from sqlalchemy.engine import make_url

    import db

    settings = settings or get_settings()
    if make_url(settings.effective_database_url).get_backend_name() == "sqlite":
        db.upgrade()
    return install_bundled()


def install_bundled() -> list[str]:
    """Activate the bundled checkpoints (improbable/bundled/) of built-in personas that have none yet."""
    from improbable.bundled import register_bundled

    with session_scope() as session:
        return register_bundled(session, open_storage())


def describe_run_result(view: RunView) -> str:
    m = view.metrics
    facts = []
    if isinstance(m.get("val_loss"), int | float):
        facts.append(f"validation loss {m['val_loss']:.3f} nats/token")
    if isinstance(m.get("val_bpc"), int | float):
        facts.append(f"{m['val_bpc']:.2f} bits/char")
    if m.get("steps"):
        facts.append(f"{m['steps']} steps")
    if isinstance(m.get("elapsed"), int | float):
        facts.append(f"{m['elapsed']:.0f} s")
    promoted = m.get("promoted")
    tail = "" if promoted is None else (" · now active" if promoted else " · kept the previous model (it was better)")
    return " · ".join(facts) + tail


def as_dict(obj: Any) -> dict:
    """For the console's plain output."""
    return {k: v for k, v in vars(obj).items() if not isinstance(v, bytes)}
