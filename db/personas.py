"""Persona registry: the seeded defaults, creation with slug rules, visibility per guild, resolution.

A global persona (guild_id NULL) is visible everywhere; a guild persona only in its guild. A slug is unique
among the globals and within a guild, and a guild may not take a global persona's name, so a slug names
at most one persona in any guild.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, or_, select
from sqlalchemy.orm import Session

from db.models import Checkpoint, Corpus, Family, Persona, PersonaCorpus
from db.storage import Storage

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
    """Globals plus that guild's own personas (only globals for guild_id None, e.g. DMs), by slug."""
    return list(session.scalars(select(Persona).where(_visible(guild_id)).order_by(Persona.slug)))


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


def delete_persona(session: Session, persona: Persona, storage: Storage | None = None) -> list[str]:
    """Delete a persona with its runs, checkpoints, generations, schedules and links, plus the corpora
    no other persona uses; commit; then delete those blobs. Returns the storage keys removed.

    Blobs go after the commit: a crash in between leaves unreferenced blobs, never rows without blobs.
    """
    pid = persona.id
    keys = list(session.scalars(select(Checkpoint.storage_key).where(Checkpoint.persona_id == pid)))
    corpus_ids = list(session.scalars(select(PersonaCorpus.corpus_id).where(PersonaCorpus.persona_id == pid)))
    others = select(func.count()).select_from(PersonaCorpus).where(
        PersonaCorpus.corpus_id == Corpus.id, PersonaCorpus.persona_id != pid).scalar_subquery()
    orphans = list(session.execute(select(Corpus.id, Corpus.storage_key)
                                   .where(Corpus.id.in_(corpus_ids), others == 0)))
    session.execute(delete(Persona).where(Persona.id == pid))  # ON DELETE CASCADE does the rest
    if orphans:
        session.execute(delete(Corpus).where(Corpus.id.in_([cid for cid, _ in orphans])))
    session.commit()
    keys += [key for _, key in orphans]
    if storage is None:
        from db.storage import open_storage

        storage = open_storage()
    for key in keys:
        storage.delete(key)
    return keys
