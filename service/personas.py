"""Personas: the list and details users see, creating, retraining and deleting them (with the upload
ingested and a run queued), and the first start's bootstrap (migrations, bundled checkpoints)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from core.checkpoints import meta_from_bytes
from core.settings import get_settings
from core.text import originality
from db import Family, Persona, TrainingRun, open_storage, session_scope
from db.bundled import needs_own_copy
from db.checkpoints import save_checkpoint
from db.ingest import IngestError, ingest
from db.personas import (
    DEFAULT_PERSONAS,
    InvalidSlug,
    PersonaError,
    builtin_of,
    create_guild_copy,
    get_persona,
    link_corpus,
    validate_slug,
    visible_personas,
)
from db.personas import create_persona as db_create_persona
from db.personas import delete_persona as db_delete_persona
from db.runs import ACTIVE_STATUSES, InvalidTransition, active_runs, create_run, request_cancel, start_run, succeed_run
from service.errors import Code, NeedsOwnCopy, NotAllowed, NotAValue, StillTraining, UploadTooLarge, UserError
from service.lookup import find_persona
from service.policy import Actor, Policy, policy, require_trainer
from service.training import NewRun, check_training_limits, train_overrides

FAMILY_LABELS = {Family.CHAR_RNN.value: "characters (LSTM)", Family.WORD_GRU.value: "words (GRU over word vectors)",
                 Family.WORD_MLP.value: "words (Bengio MLP)"}  # by family name, as the views carry it


BUILTIN_SLUGS = frozenset(spec.slug for spec in DEFAULT_PERSONAS)


def _scope(persona: Persona) -> str:
    if persona.guild_id is not None:
        return "this server's copy" if persona.slug in BUILTIN_SLUGS else "this server"
    return "built-in" if persona.slug in BUILTIN_SLUGS else "global"



@dataclass
class PersonaSummary:
    slug: str
    display_name: str
    family: str
    scope: str  # "built-in" | "global" | "this server" | "this server's copy" (of a built-in)
    ready: bool
    training: bool
    description: str


def list_personas(guild_id: int | None) -> list[PersonaSummary]:
    with session_scope() as session:
        training = set(session.scalars(select(TrainingRun.persona_id)
                                       .where(TrainingRun.status.in_(ACTIVE_STATUSES))))
        return [PersonaSummary(p.slug, p.display_name, p.family.value, _scope(p),
                               p.active_checkpoint_id is not None, p.id in training, p.description)
                for p in visible_personas(session, guild_id) if p.owner_user_id is None]  # members' voices: /voice


def persona_names(guild_id: int | None) -> list[str]:
    with session_scope() as session:
        return [p.slug for p in visible_personas(session, guild_id) if p.owner_user_id is None]


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


def persona_info(slug: str, actor: Actor | int | None) -> PersonaInfo:
    """What `/persona info` shows, as `slug` names it where the actor is (a server's own copy first). Only the
    uploads recorded for the persona's own server (or the deployment's, for a built-in) are listed."""
    storage = open_storage()
    with session_scope() as session:
        persona, checkpoint = find_persona(session, slug, actor)
        info = PersonaInfo(persona.slug, persona.display_name, persona.description, persona.family.value,
                           _scope(persona))
        for corpus in persona.corpora:
            if corpus.guild_id != persona.guild_id:
                continue
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


Upload = tuple[bytes, str]  # (data, filename) of one attached file


def _ingest(session, actor: Actor, pol: Policy, data: bytes, filename: str, more: Sequence[Upload] = (),
            guild_id: int | None = None):
    """The upload as a corpus row of `guild_id` (the persona's server; None: the deployment's, an operator's
    upload for a built-in); several files (`more`) become one corpus of several documents."""
    size = len(data) + sum(len(d) for d, _ in more)
    if size > pol.max_upload_bytes:
        raise UploadTooLarge(size, pol.max_upload_bytes, len(more) + 1)
    try:
        return ingest(data, filename, actor.user_id, guild_id, session=session,
                      max_bytes=pol.max_upload_bytes, more=more,
                      min_distinct_bytes=get_settings().train_min_distinct_bytes)  # too little distinct text: refused
    except IngestError as e:
        raise UserError("That file cannot be used: {reason}", reason=e.message) from None


def create_persona(actor: Actor, name: str, data: bytes, filename: str, family: str = "char-rnn",
                   description: str = "", minutes: float | None = None, more: Sequence[Upload] = ()) -> NewRun:
    """A new persona in the actor's guild, trained on the uploaded text (with `more` files: one corpus of
    several documents, kept apart in training): ingest, persona, queued run."""
    pol = policy(actor.guild_id)
    require_trainer(actor, pol)
    try:
        slug = validate_slug(name)
        fam = Family(family)
    except InvalidSlug:
        raise NotAValue(name, "a valid persona name", ("my-persona",), "use 1-32 lower-case letters, digits and "
                        "hyphens, starting and ending with a letter or digit") from None
    except ValueError:
        raise NotAValue(family, "a model family", [f.value for f in Family]) from None
    overrides = train_overrides(minutes)
    with session_scope() as session:
        if get_persona(session, slug, actor.guild_id) is not None:
            raise UserError("The name {name} is already taken here; choose another, or use {retrain} to train it "
                            "again.", name=Code(slug), retrain=Code(f"/persona retrain {slug}"))
        check_training_limits(session, actor, pol)
        uploaded = _ingest(session, actor, pol, data, filename, more, actor.guild_id)
        try:
            persona = db_create_persona(session, slug, family=fam,
                                        guild_id=actor.guild_id, description=description[:1000],
                                        created_by=actor.user_id)
        except PersonaError as e:
            raise UserError("{reason}", reason=e.message) from None
        link_corpus(session, persona, uploaded.corpus, actor.user_id)
        run = create_run(session, persona, corpus=uploaded.corpus, config=overrides, requested_by=actor.user_id,
                         guild_id=actor.guild_id, channel_id=actor.channel_id)
        return NewRun(run.id, persona.slug, persona.display_name, True, uploaded.warnings)


def retrain(actor: Actor, slug: str, data: bytes | None = None, filename: str | None = None,
            minutes: float | None = None, more: Sequence[Upload] = ()) -> NewRun:
    """Train a persona again: on a new upload (one file, or several with `more`), else on its latest
    corpus, else on its recipe's corpus. A built-in is the deployment's: retrained from a server, that server
    gets its own copy (used only there; the built-in and every other server are unchanged); only the operator
    retrains the built-in itself."""
    pol = policy(actor.guild_id)
    require_trainer(actor, pol)
    overrides = train_overrides(minutes)
    with session_scope() as session:
        persona, _ = find_persona(session, slug, actor)
        make_copy = persona.guild_id is None and not actor.operator
        if make_copy and actor.guild_id is None:
            raise NotAllowed("{persona} is a built-in persona: only the bot's operator can retrain it. In a server, "
                             "retraining it gives that server its own copy.", persona=Code(persona.slug))
        if not make_copy and active_runs(session, persona=persona):
            raise StillTraining(persona.slug)
        check_training_limits(session, actor, pol)
        guild_id = actor.guild_id if make_copy else persona.guild_id  # whose upload it is
        uploaded = None if data is None else _ingest(session, actor, pol, data, filename or "upload.txt", more,
                                                     guild_id)
        base = builtin_of(session, persona)
        if make_copy:
            base, persona = persona, _guild_copy(session, actor, persona)
        corpus, warnings = None, ()
        if uploaded is not None:
            corpus, warnings = uploaded.corpus, uploaded.warnings
            link_corpus(session, persona, corpus, actor.user_id)
        else:
            corpus = _latest_corpus(persona) or (_latest_corpus(base) if base is not None else None)
            if corpus is None and needs_own_copy(base or persona):
                raise NeedsOwnCopy(persona.display_name)
            if corpus is None and base is None and persona.slug not in BUILTIN_SLUGS:
                raise UserError("{persona} has no text to train on any more (its last upload was cancelled or "
                                "failed): attach a .txt file to {retrain}.", persona=Code(persona.slug),
                                retrain=Code(f"/persona retrain {persona.slug}"))
        run = create_run(session, persona, corpus=corpus, config=overrides, requested_by=actor.user_id,
                         guild_id=persona.guild_id if persona.guild_id is not None else actor.guild_id,
                         channel_id=actor.channel_id)
        return NewRun(run.id, persona.slug, persona.display_name, False, tuple(warnings))


def _latest_corpus(persona: Persona):
    """The persona's latest upload of its own server (the deployment's, for a built-in), or None."""
    own = [c for c in persona.corpora if c.guild_id == persona.guild_id]
    return max(own, key=lambda c: c.id) if own else None


def _guild_copy(session, actor: Actor, builtin: Persona) -> Persona:
    """The actor's server's own copy of a built-in, made now (a concurrent retrain may have made it first)."""
    try:
        with session.begin_nested():
            return create_guild_copy(session, open_storage(), builtin, actor.guild_id, actor.user_id)
    except IntegrityError:
        persona, _ = find_persona(session, builtin.slug, actor)
        if active_runs(session, persona=persona):
            raise StillTraining(persona.slug) from None
        return persona


@dataclass
class Attached:
    slug: str
    family: str
    checkpoint_id: int
    run_id: int
    val_loss: float | None


def attach_checkpoint(slug: str, data: bytes, source: str, guild_id: int | None = None) -> Attached:
    """Make a checkpoint trained elsewhere (`improbable train ... --out runs/hp`) a persona's active model.
    Its family must be the persona's. It is stored the way the trainer stores one (a finished run with its
    best checkpoint, db.checkpoints.save_checkpoint with activate), so the next generate request uses it and
    `/persona info` shows it. The header is validated torch-free here (core.checkpoints.meta_from_bytes:
    format, model config, shapes); the CLI checks the file with trainer.checkpoint.read_meta first."""
    try:
        meta = meta_from_bytes(data, source)
    except ValueError as e:
        raise UserError("{reason}", reason=str(e)) from None
    storage = open_storage()
    with session_scope() as session:
        persona, _ = find_persona(session, slug, guild_id)
        family = (meta.get("model") or {}).get("family")
        if family != persona.family.value:
            command = f"improbable train --recipe {persona.recipe} --corpus <your text> --out runs/{persona.slug}"
            raise UserError("{source} is a {family} model, but {persona} is a {wanted} persona: train one with "
                            "{command}.", source=source, family=family or "unknown", persona=Code(persona.slug),
                            wanted=persona.family.value, command=Code(command))
        # JSON columns on PostgreSQL refuse NaN and infinity: keep the finite numbers and the rest as they are
        metrics = {k: v for k, v in (meta.get("metrics") or {}).items()
                   if not (isinstance(v, float) and not math.isfinite(v))}
        val_loss = metrics.get("val_loss") if isinstance(metrics.get("val_loss"), int | float) else None
        run = create_run(session, persona, config={"attached": source})
        start_run(session, run)
        ckpt = save_checkpoint(session, storage, persona, run, "best", data, val_loss=val_loss, metrics=metrics,
                               activate=True)
        succeed_run(session, run, metrics={**metrics, "attached": source, "checkpoint_id": ckpt.id,
                                           "promoted": True})
        return Attached(persona.slug, persona.family.value, ckpt.id, run.id, val_loss)


def delete_persona(actor: Actor, slug: str) -> str:
    """Delete a persona with everything of it (db.personas.delete_persona). A server deletes only its own (its
    copy of a built-in included: the built-in answers there again); the built-ins are part of the deployment
    and nobody deletes them, the operator neither."""
    require_trainer(actor)
    return _delete(actor, slug)


def delete_own_voice(actor: Actor, slug: str) -> str:
    """A member's own voice (owner_user_id), deleted by that member, who needs no trainer permission for it;
    the same deletion that leaves nothing behind. To anyone else the voice is not there (service.lookup)."""
    with session_scope() as session:
        persona, _ = find_persona(session, slug, actor)
        if persona.owner_user_id is None or persona.owner_user_id != actor.user_id:
            raise NotAllowed("{persona} is not your own voice.", persona=Code(persona.slug))
    return _delete(actor, slug)


def _delete(actor: Actor, slug: str) -> str:
    with session_scope() as session:
        persona, _ = find_persona(session, slug, actor)
        if persona.guild_id is None and (actor.guild_id is not None or persona.slug in BUILTIN_SLUGS):
            raise UserError("{persona} is a built-in persona; only this server's own personas can be deleted.",
                            persona=Code(persona.slug))
        for run in active_runs(session, persona=persona):
            try:
                request_cancel(session, run)
            except InvalidTransition:
                pass
        name = persona.slug
        db_delete_persona(session, persona, open_storage())
    return name



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
    """Activate the bundled checkpoints (db/bundled/) of built-in personas that have none yet."""
    from db.bundled import register_bundled

    with session_scope() as session:
        return register_bundled(session, open_storage())

