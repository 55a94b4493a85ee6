"""Persona registry: the seeded defaults, creation with slug rules, visibility per guild, resolution.

A global persona (guild_id NULL) is visible everywhere; a guild persona only in its guild. A slug is unique
among the globals and within a guild, and a guild may not create a persona under a global persona's name: the
one guild persona sharing a global's slug is that guild's own copy of the built-in (create_guild_copy), which
hides the built-in in that guild, so a slug names at most one persona in any guild.
"""

from __future__ import annotations

import difflib
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from core.settings import get_settings
from db.checkpoints import add_checkpoint
from db.models import Checkpoint, Corpus, Family, Persona, PersonaCorpus, Schedule, TrainingRun
from db.storage import Storage, checkpoint_key, open_storage, run_prefixes

SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")

# Sampling defaults by family; a persona's own `sampling` starts as a copy and may be edited.
# The recipe (trainer/recipes/<name>.json) an uploaded persona of each family trains with.
DEFAULT_RECIPES: dict[Family, str] = {Family.CHAR_RNN: "alice", Family.WORD_GRU: "movie-reviews",
                                      Family.WORD_MLP: "harry-potter"}

SAMPLING_DEFAULTS: dict[Family, dict[str, Any]] = {
    Family.CHAR_RNN: {"temperature": 0.8, "top_k": 0, "top_p": 0.95, "max_tokens": 500},  # top_k 0 = off
    Family.WORD_GRU: {"temperature": 0.9, "top_k": 40, "top_p": 0.95, "max_tokens": 80},
    Family.WORD_MLP: {"temperature": 1.0, "top_k": 50, "top_p": 1.0, "max_tokens": 60},
}


class PersonaError(ValueError):
    """A registry request that cannot be done; `.code` for programs, the message for users."""

    code = "persona"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidSlug(PersonaError):
    code = "invalid_slug"


class PersonaExists(PersonaError):
    code = "exists"


class UnknownPersona(PersonaError):
    code = "unknown"

    def __init__(self, slug: str, suggestions: list[str]):
        hint = f" Did you mean {' or '.join(f'`{s}`' for s in suggestions)}?" if suggestions else ""
        super().__init__(f"There is no persona called `{slug}`.{hint}")
        self.slug = slug
        self.suggestions = suggestions


@dataclass(frozen=True)
class PersonaSpec:
    slug: str
    display_name: str
    family: Family
    recipe: str
    description: str
    sampling: dict[str, Any] = field(default_factory=dict)  # overrides of SAMPLING_DEFAULTS[family]


DEFAULT_PERSONAS: tuple[PersonaSpec, ...] = (
    PersonaSpec("trump", "Trump", Family.CHAR_RNN, "trump",
                "Donald Trump's 2016 campaign speeches, one character at a time (2-layer LSTM)."),
    PersonaSpec("alice", "Alice", Family.CHAR_RNN, "alice",
                "Lewis Carroll's Alice's Adventures in Wonderland (public domain), character by character."),
    PersonaSpec("shakespeare", "Shakespeare", Family.CHAR_RNN, "shakespeare",
                "Tiny Shakespeare: 40,000 lines of the plays, character by character."),
    PersonaSpec("movie-reviews", "Movie reviews", Family.WORD_GRU, "movie-reviews",
                "IMDB movie reviews, word by word (GRU over pretrained word vectors)."),
    PersonaSpec("harry-potter", "Harry Potter", Family.WORD_MLP, "harry-potter",
                "Harry Potter, word by word (a Bengio-style MLP over the last 8 words). The books are "
                "copyrighted, so none are shipped: attach your own copy (one .txt file per book, up to five) "
                "to `/persona retrain harry-potter`, or train on the command line with `improbable train "
                "--recipe harry-potter --corpus <a .txt file or a folder of them> --out runs/hp`, then "
                "`improbable persona attach harry-potter runs/hp/best.safetensors`. Until then this persona "
                "has no model."),
)


def validate_slug(slug: str) -> str:
    """The normalised (lower-case) slug, or InvalidSlug saying what a slug may contain."""
    s = slug.strip().lower()
    if not SLUG_RE.match(s):
        raise InvalidSlug(f"`{slug}` is not a valid persona name: use 1-32 lower-case letters, digits and "
                          "hyphens, starting and ending with a letter or digit (like `my-persona`).")
    return s


def sampling_for(family: Family | str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    return {**SAMPLING_DEFAULTS[Family(family)], **(overrides or {})}


def seed_defaults(session: Session) -> list[Persona]:
    """Create the default global personas that are missing; never touches existing ones. Flushes."""
    existing = set(session.scalars(select(Persona.slug).where(Persona.guild_id.is_(None))))
    created = []
    for spec in DEFAULT_PERSONAS:
        if spec.slug not in existing:
            persona = Persona(slug=spec.slug, guild_id=None, display_name=spec.display_name,
                              description=spec.description, family=spec.family, recipe=spec.recipe,
                              sampling=sampling_for(spec.family, spec.sampling))
            session.add(persona)
            created.append(persona)
    session.flush()
    return created


def _visible(guild_id: int | None):
    return or_(Persona.guild_id.is_(None), Persona.guild_id == guild_id) if guild_id is not None \
        else Persona.guild_id.is_(None)


def visible_personas(session: Session, guild_id: int | None) -> list[Persona]:
    """Globals plus that guild's own personas (only globals for guild_id None, e.g. DMs), by slug. A guild's
    own copy of a built-in hides the built-in."""
    rows = session.scalars(select(Persona).where(_visible(guild_id))
                           .order_by(Persona.slug, Persona.guild_id.is_(None)))  # a guild's row first
    seen: set[str] = set()
    return [p for p in rows if not (p.slug in seen or seen.add(p.slug))]


def get_persona(session: Session, slug: str, guild_id: int | None) -> Persona | None:
    """The persona a slug names in that guild (a guild's own wins over a global one), or None."""
    rows = session.scalars(select(Persona).where(Persona.slug == slug.strip().lower(), _visible(guild_id))
                           .order_by(Persona.guild_id.is_(None)))  # guild rows first
    return rows.first()


def resolve_persona(session: Session, slug: str, guild_id: int | None) -> tuple[Persona, Checkpoint | None]:
    """(persona, its active checkpoint or None) or UnknownPersona with close matches visible there."""
    persona = get_persona(session, slug, guild_id)
    if persona is None:
        names = [p.slug for p in visible_personas(session, guild_id)]
        raise UnknownPersona(slug, difflib.get_close_matches(slug.strip().lower(), names, n=3, cutoff=0.5))
    return persona, persona.active_checkpoint


def create_persona(session: Session, slug: str, *, family: Family | str, recipe: str | None = None,
                   guild_id: int | None = None, display_name: str | None = None, description: str = "",
                   sampling: dict[str, Any] | None = None, created_by: int | None = None) -> Persona:
    """A new persona (flushed). A guild persona may not reuse a global name, nor a global a guild's."""
    slug = validate_slug(slug)
    family = Family(family)
    clash = select(Persona.guild_id).where(Persona.slug == slug)
    if guild_id is not None:
        clash = clash.where(_visible(guild_id))
    taken = session.execute(clash.limit(1)).first()
    if taken is not None:
        where = "a built-in persona" if taken.guild_id is None else "a persona in this server" \
            if guild_id is not None else f"a persona in server {taken.guild_id}"
        raise PersonaExists(f"The name `{slug}` is already taken by {where}; choose another.")
    persona = Persona(slug=slug, guild_id=guild_id, display_name=display_name or slug.replace("-", " ").title(),
                      description=description, family=family, recipe=recipe or DEFAULT_RECIPES[family],
                      sampling=sampling_for(family, sampling), created_by=created_by)
    session.add(persona)
    session.flush()  # the unique constraints catch a concurrent creation of the same name
    return persona


def builtin_of(session: Session, persona: Persona) -> Persona | None:
    """The built-in (global) persona a guild's copy was made from (same slug), or None for any other persona.
    A guild may not create a persona under a global name (create_persona), so a guild persona sharing a
    global's slug is always a copy made by create_guild_copy."""
    if persona.guild_id is None:
        return None
    return session.scalars(select(Persona).where(Persona.slug == persona.slug, Persona.guild_id.is_(None))).first()


def create_guild_copy(session: Session, storage: Storage, builtin: Persona, guild_id: int,
                      created_by: int | None = None) -> Persona:
    """A guild's own copy of a built-in (flushed): the same slug, name, description, family, recipe and
    sampling, and a copy of the built-in's active model as its own first checkpoint, so the guild keeps talking
    while the copy trains (and the copy's runs are gated against that model). Every lookup in that guild then
    finds the copy; the guild's schedules of the built-in post with it; deleting it brings back the built-in."""
    if builtin.guild_id is not None:
        raise PersonaError(f"`{builtin.slug}` already belongs to a server.")
    copy = Persona(slug=builtin.slug, guild_id=guild_id, display_name=builtin.display_name,
                   description=builtin.description, family=builtin.family, recipe=builtin.recipe,
                   sampling=dict(builtin.sampling or {}), created_by=created_by)
    session.add(copy)
    session.flush()  # the (guild_id, slug) unique constraint catches a concurrent copy
    source = builtin.active_checkpoint
    if source is not None:
        key = checkpoint_key(copy.slug, f"copy-{copy.id}", source.name)
        storage.put(key, storage.get(source.storage_key))
        try:
            with session.begin_nested():
                ckpt = add_checkpoint(session, copy, key, name=source.name, val_loss=source.val_loss,
                                      metrics=dict(source.metrics or {}), size_bytes=source.size_bytes,
                                      activate=True)
                ckpt.created_at = source.created_at
        except BaseException:
            storage.delete(key)
            raise
    session.execute(update(Schedule).where(Schedule.guild_id == guild_id, Schedule.persona_id == builtin.id)
                    .values(persona_id=copy.id).execution_options(synchronize_session=False))
    return copy


def set_active_checkpoint(session: Session, persona: Persona, checkpoint: Checkpoint | None) -> None:
    """Promote a checkpoint (of this persona) or clear it. The next generate request picks it up."""
    if checkpoint is not None and checkpoint.persona_id != persona.id:
        raise PersonaError(f"Checkpoint {checkpoint.id} belongs to another persona, not `{persona.slug}`.")
    persona.active_checkpoint = checkpoint
    session.flush()


def link_corpus(session: Session, persona: Persona, corpus: Corpus, added_by: int | None = None) -> None:
    """Record that a persona is trained on a corpus (idempotent)."""
    if session.get(PersonaCorpus, (persona.id, corpus.id)) is None:
        session.add(PersonaCorpus(persona_id=persona.id, corpus_id=corpus.id, added_by=added_by))
        session.flush()


def delete_persona(session: Session, persona: Persona, storage: Storage | None = None,
                   runs_dir: Path | None = None) -> list[str]:
    """Delete a persona and everything of it: its runs, checkpoints, generations and links, the uploads it
    was trained on (rows no other persona uses, and blobs no remaining row uses), every blob its runs wrote
    (checkpoints best/last/running-best, loss curves) and their local run folders; commit first. A guild's
    copy of a built-in hands the guild's schedules back to the built-in; others' schedules go with it.
    Returns the storage keys removed.

    Blobs go after the commit: a crash in between leaves unreferenced blobs, never rows without blobs.
    """
    pid, slug, guild_id = persona.id, persona.slug, persona.guild_id
    builtin = builtin_of(session, persona)
    if builtin is not None:
        session.execute(update(Schedule).where(Schedule.persona_id == pid).values(persona_id=builtin.id)
                        .execution_options(synchronize_session=False))
    keys = set(session.scalars(select(Checkpoint.storage_key).where(Checkpoint.persona_id == pid)))
    run_ids = list(session.scalars(select(TrainingRun.id).where(TrainingRun.persona_id == pid)))
    corpus_ids = set(session.scalars(select(PersonaCorpus.corpus_id).where(PersonaCorpus.persona_id == pid)))
    corpus_ids |= {c for c in session.scalars(select(TrainingRun.corpus_id).where(TrainingRun.persona_id == pid))
                   if c is not None}
    linked = select(PersonaCorpus.corpus_id).where(PersonaCorpus.persona_id != pid)
    trained = select(TrainingRun.corpus_id).where(TrainingRun.persona_id != pid, TrainingRun.corpus_id.is_not(None))
    orphans = list(session.execute(select(Corpus.id, Corpus.storage_key).where(
        Corpus.id.in_(corpus_ids), Corpus.id.not_in(linked), Corpus.id.not_in(trained))))
    session.execute(delete(Persona).where(Persona.id == pid))  # ON DELETE CASCADE does the rest
    if orphans:
        session.execute(delete(Corpus).where(Corpus.id.in_([cid for cid, _ in orphans])))
    session.commit()
    storage = storage or open_storage()
    for key in {key for _, key in orphans}:
        if session.scalar(select(Corpus.id).where(Corpus.storage_key == key).limit(1)) is None:
            keys.add(key)  # another upload of the same text keeps the shared blob
    removed = [key for key in sorted(keys) if storage.delete(key)]
    for run_id in run_ids:
        for prefix in run_prefixes(slug, run_id):
            removed += storage.delete_prefix(prefix)
    _remove_local_files(run_ids, slug if guild_id is None else None, runs_dir)
    return removed


def _remove_local_files(run_ids: list[int], global_slug: str | None, runs_dir: Path | None) -> None:
    """The run folders (and locks) a trainer on this machine left, and the console's saved loss curve of a
    global persona (data_dir/plots/<slug>-loss.png)."""
    settings = get_settings()
    runs_dir = runs_dir or settings.runs_dir
    for run_id in run_ids:
        shutil.rmtree(runs_dir / f"run-{run_id}", ignore_errors=True)
        (runs_dir / f"run-{run_id}.lock").unlink(missing_ok=True)
    if global_slug is not None:
        (settings.data_dir / "plots" / f"{global_slug}-loss.png").unlink(missing_ok=True)
