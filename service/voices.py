"""Members' voices: `/voice me` (a persona trained on text a member supplies: their own writing, or the messages
of their own Discord data package), opting in and out of being learned from, and `/persona learn` (a persona
trained on the channel messages of members who opted in; only where the operator turned channel learning on).

A member's voice is a persona of the server with an owner (owner_user_id): only that member finds it (service.lookup
answers anyone else as if there were none), retrains it, sets it up for ambient replies or deletes it. Its
display name says it is a parody ("<name> (parody voice)"), and that name heads every post of it; it never
takes the member's own name alone or their avatar.

A learned persona's corpus keeps each member's messages as a document of its own ("member-<id>.txt"), and
learned_sources records whose text it holds: a member who opts out has their document removed from the corpus
and every persona holding it retired (no active model, its checkpoints deleted), until a manager learns again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from sqlalchemy import delete, select, update

from core.datapackage import PackageError, package_text, parse_package
from core.settings import get_settings
from core.text import DOCUMENT_SEPARATOR
from db import Checkpoint, Corpus, Family, Persona, PersonaCorpus, TrainingRun, open_storage, session_scope
from db.ingest import IngestError, ingest, read_corpus
from db.models import LearnedSource, VoiceOptIn
from db.personas import PersonaError, get_persona, link_corpus, validate_slug
from db.personas import create_persona as db_create_persona
from db.runs import InvalidTransition, active_runs, create_run, request_cancel
from db.storage import run_prefixes
from service.errors import Code, NeedsPermission, NotAllowed, StillTraining, UploadTooLarge, UserError
from service.personas import delete_own_voice
from service.policy import Actor, Policy, policy
from service.quotas import check_upload
from service.training import NewRun, check_training_limits, train_overrides

PARODY = "(parody voice)"
UNPACK_FACTOR = 20  # a package .zip's messages may unpack to this many times the server's upload cap
TEXT_SUFFIXES = (".txt", ".text", ".md")


@dataclass(frozen=True)
class VoiceText:
    text: str
    kept: int  # messages (or, for a text file, lines) kept
    read: int  # messages read


def parody_name(member_name: str) -> str:
    return f"{member_name.strip()[:80] or 'member'} {PARODY}"


def voice_slug(member_name: str) -> str:
    """me-<name>: the name's letters and digits, lower case, within the 32 characters of a slug."""
    base = re.sub(r"[^a-z0-9]+", "-", member_name.lower()).strip("-")[:29].strip("-") or "member"
    return f"me-{base}"


def own_voice(session, actor: Actor) -> Persona | None:
    return session.scalars(select(Persona).where(Persona.guild_id == actor.guild_id,
                                                 Persona.owner_user_id == actor.user_id)).first()


def _in_server(actor: Actor) -> None:
    if actor.guild_id is None or actor.user_id is None:
        raise UserError("A voice belongs to a server: use this command in one.")


def check_voice_upload(actor: Actor, sizes: Sequence[int], minutes: float | None) -> None:
    """Before a byte is downloaded: the upload cap (Discord's announced sizes), the server's stored bytes and its
    training minutes of the day (service.quotas.check_upload). A member's own voice needs no trainer permission."""
    _in_server(actor)
    train_overrides(minutes)
    check_upload(replace(actor, can_manage=True), sizes=list(sizes), minutes=minutes)


def voice_text(data: bytes, filename: str, guild_id: int | None, max_bytes: int) -> VoiceText:
    """The text a voice is trained on: a .txt of the member's writing as it is, or the cleaned messages of a data
    package (.zip, messages.json, messages.csv); with `guild_id`, only the messages of that server's channels."""
    if filename.lower().endswith(TEXT_SUFFIXES):
        if guild_id is not None:
            raise UserError("Only a data package knows which server a message was written in: upload the "
                            "package's .zip with this_server_only, or leave that option off for a text file.")
        return VoiceText(data.decode("utf-8", errors="replace"), data.count(b"\n") + 1, 0)
    try:
        package = parse_package(data, filename, max_bytes * UNPACK_FACTOR)
    except PackageError as e:
        raise UserError("That file cannot be used: {reason}", reason=str(e)) from None
    if guild_id is not None and not package.has_channel_info:
        raise UserError("A messages file alone does not say which server its channel is in: upload the package's "
                        ".zip (its channel.json files say it), or leave this_server_only off.")
    text, kept, read = package_text(package, guild_id)
    if not kept:
        where = " in this server's channels" if guild_id is not None else ""
        raise UserError("No message with text was found{where} in that file ({read} read).", where=where, read=read)
    return VoiceText(text, kept, read)


def _ingest(session, actor: Actor, pol: Policy, text: str, filename: str, more: Sequence[tuple[bytes, str]] = ()):
    data = text.encode("utf-8")
    size = len(data) + sum(len(d) for d, _ in more)
    if size > pol.max_upload_bytes:
        raise UploadTooLarge(size, pol.max_upload_bytes, 1)
    try:
        return ingest(data, filename, actor.user_id, actor.guild_id, session=session, max_bytes=pol.max_upload_bytes,
                      more=more, min_distinct_bytes=get_settings().train_min_distinct_bytes)
    except IngestError as e:
        raise UserError("That text cannot be used: {reason}", reason=e.message) from None


def _new_voice(session, actor: Actor, member_name: str) -> Persona:
    slug = voice_slug(member_name)
    if get_persona(session, slug, actor.guild_id) is not None:  # another member's voice, or a persona, has it
        slug = f"{slug[:26]}-{actor.user_id % 10000:04d}"
    name = parody_name(member_name)
    try:
        persona = db_create_persona(session, validate_slug(slug), family=Family.CHAR_RNN, guild_id=actor.guild_id,
                                    display_name=name, created_by=actor.user_id,
                                    description=f"A parody voice trained on text {member_name} supplied. It is not "
                                                f"{member_name}, and speaks for nobody.")
    except PersonaError as e:
        raise UserError("{reason}", reason=e.message) from None
    persona.owner_user_id = actor.user_id
    session.flush()
    return persona


def train_voice(actor: Actor, member_name: str, text: VoiceText, minutes: float | None = None) -> NewRun:
    """Create the member's voice in this server, or train it again, on `text`; a queued run."""
    _in_server(actor)
    pol = policy(actor.guild_id)
    overrides = train_overrides(minutes)
    with session_scope() as session:
        persona = own_voice(session, actor)
        if persona is not None and active_runs(session, persona=persona):
            raise StillTraining(persona.slug)
        check_training_limits(session, actor, pol)
        uploaded = _ingest(session, actor, pol, text.text, f"{voice_slug(member_name)}.txt")
        created = persona is None
        if created:
            persona = _new_voice(session, actor, member_name)
        link_corpus(session, persona, uploaded.corpus, actor.user_id)
        run = create_run(session, persona, corpus=uploaded.corpus, config=overrides, requested_by=actor.user_id,
                         guild_id=actor.guild_id, channel_id=actor.channel_id)
        return NewRun(run.id, persona.slug, persona.display_name, created, uploaded.warnings)


@dataclass(frozen=True)
class VoiceView:
    slug: str
    display_name: str
    ready: bool
    training: bool
    opted_in: bool


def show_voice(actor: Actor) -> VoiceView | None:
    _in_server(actor)
    with session_scope() as session:
        persona = own_voice(session, actor)
        opted = session.get(VoiceOptIn, (actor.guild_id, actor.user_id)) is not None
        if persona is None:
            return VoiceView("", "", False, False, opted)
        return VoiceView(persona.slug, persona.display_name, persona.active_checkpoint_id is not None,
                         bool(active_runs(session, persona=persona)), opted)


def delete_voice(actor: Actor) -> str | None:
    """Delete the member's own voice with everything of it; its slug, or None when there was none."""
    _in_server(actor)
    with session_scope() as session:
        persona = own_voice(session, actor)
        slug = persona.slug if persona is not None else None
    return delete_own_voice(actor, slug) if slug is not None else None


# -- opting in and out of being learned from -------------------------------------------------------------------

def opt_in(actor: Actor) -> bool:
    """Record that the member agrees to be learned from in this server; False if they already had."""
    _in_server(actor)
    with session_scope() as session:
        if session.get(VoiceOptIn, (actor.guild_id, actor.user_id)) is not None:
            return False
        session.add(VoiceOptIn(guild_id=actor.guild_id, user_id=actor.user_id))
        return True


def opted_in(guild_id: int) -> set[int]:
    with session_scope() as session:
        return set(session.scalars(select(VoiceOptIn.user_id).where(VoiceOptIn.guild_id == guild_id)))


@dataclass(frozen=True)
class OptOut:
    was_opted_in: bool
    voice: str | None  # the member's own voice, deleted
    retired: tuple[str, ...]  # learned personas whose text held theirs: that text removed, the persona retired


def opt_out(actor: Actor) -> OptOut:
    """Withdraw the member's consent in this server: the opt-in goes, their own voice is deleted, and their messages
    leave every learned corpus, whose personas are retired (no model until a manager learns again)."""
    _in_server(actor)
    with session_scope() as session:
        was = bool(session.execute(delete(VoiceOptIn).where(VoiceOptIn.guild_id == actor.guild_id,
                                                            VoiceOptIn.user_id == actor.user_id)).rowcount)
        persona_ids = list(session.scalars(select(LearnedSource.persona_id).where(
            LearnedSource.guild_id == actor.guild_id, LearnedSource.user_id == actor.user_id)))
    retired = tuple(slug for pid in persona_ids if (slug := _remove_member(pid, actor.user_id)) is not None)
    return OptOut(was, delete_voice(actor), retired)


def _documents(corpus: Corpus) -> list[tuple[str, str]]:
    """(name, text) of each document of a learned corpus."""
    decoded = read_corpus(corpus)
    names = list((corpus.stats or {}).get("document_names") or [corpus.filename])
    if not decoded.documents:
        return [(names[0], decoded.text)]
    out, at = [], 0
    for name, length in zip(names, decoded.documents, strict=False):
        out.append((name, decoded.text[at:at + length]))
        at += length + len(DOCUMENT_SEPARATOR)
    return out


def _remove_member(persona_id: int, user_id: int) -> str | None:
    """Rebuild each corpus of the persona without the member's document, delete the old corpus, and retire the
    persona (cancel its runs, delete its checkpoints). The persona's slug, or None if it is gone."""
    storage = open_storage()
    with session_scope() as session:
        persona = session.get(Persona, persona_id)
        if persona is None:
            return None
        used = select(TrainingRun.corpus_id).where(TrainingRun.persona_id == persona_id)
        corpora = {c.id: c for c in [*persona.corpora, *session.scalars(select(Corpus).where(Corpus.id.in_(used)))]}
        mine = f"member-{user_id}.txt"
        documents = {cid: [(t.encode("utf-8"), name) for name, t in _documents(c) if name != mine]
                     for cid, c in corpora.items()}
        _cancel_runs(session, persona)
        for cid, corpus in corpora.items():
            rest = documents[cid]
            new = None
            if rest:
                try:
                    new = ingest(rest[0][0], rest[0][1], corpus.uploaded_by, corpus.guild_id, session=session,
                                 more=rest[1:], max_bytes=corpus.n_bytes + 1024,  # a part of what was stored
                                 min_distinct_bytes=get_settings().train_min_distinct_bytes).corpus
                except IngestError:
                    new = None  # what is left is too little to learn from: the persona keeps no corpus
            if new is not None:
                link_corpus(session, persona, new)
            session.execute(update(TrainingRun).where(TrainingRun.corpus_id == corpus.id)
                            .values(corpus_id=new.id if new is not None else None))
            session.execute(delete(PersonaCorpus).where(PersonaCorpus.corpus_id == corpus.id))
            key = corpus.storage_key
            session.execute(delete(Corpus).where(Corpus.id == corpus.id))
            session.flush()
            if session.scalar(select(Corpus.id).where(Corpus.storage_key == key).limit(1)) is None:
                storage.delete(key)
        session.execute(delete(LearnedSource).where(LearnedSource.persona_id == persona_id,
                                                    LearnedSource.user_id == user_id))
        _retire(session, persona, storage)
        return persona.slug


def _cancel_runs(session, persona: Persona) -> None:
    for run in active_runs(session, persona=persona):
        try:
            request_cancel(session, run)
        except InvalidTransition:
            pass


def _retire(session, persona: Persona, storage) -> None:
    """No active model and no checkpoints left (its runs are cancelled first)."""
    persona.active_checkpoint_id = None
    session.flush()
    keys = list(session.scalars(select(Checkpoint.storage_key).where(Checkpoint.persona_id == persona.id)))
    run_ids = list(session.scalars(select(TrainingRun.id).where(TrainingRun.persona_id == persona.id)))
    session.execute(delete(Checkpoint).where(Checkpoint.persona_id == persona.id))
    session.commit()
    for key in keys:
        storage.delete(key)
    for run_id in run_ids:
        for prefix in run_prefixes(persona.slug, run_id):
            storage.delete_prefix(prefix)


# -- learning from channels ------------------------------------------------------------------------------------

def require_learning(actor: Actor) -> None:
    """Channel learning is on in this deployment, and the actor may manage the server."""
    if not get_settings().channel_learning:
        raise NotAllowed("Learning from channels is off in this deployment: it needs Discord's express permission "
                         "(its Developer Policy), which the operator turns on with {setting}.",
                         setting=Code("IMPROBABLE_CHANNEL_LEARNING"))
    _in_server(actor)
    if not actor.can_manage:
        raise NeedsPermission("Manage Server", "learn a persona from channels")


def check_learn(actor: Actor, name: str, minutes: float | None) -> str:
    """Everything known before history is read: the setting, the permission, the name (new, or a learned persona
    of this server), the training budget. The slug."""
    require_learning(actor)
    train_overrides(minutes)
    try:
        slug = validate_slug(name)
    except PersonaError:
        raise UserError("{name} is not a valid persona name (1-32 lower-case letters, digits and hyphens).",
                        name=Code(name)) from None
    with session_scope() as session:
        persona = get_persona(session, slug, actor.guild_id)
        if persona is not None and (persona.guild_id is None or persona.owner_user_id is not None):
            raise UserError("The name {name} is taken; choose another.", name=Code(slug))
    check_upload(actor, sizes=[], minutes=minutes)
    return slug


def learn(actor: Actor, name: str, texts: Mapping[int, Sequence[str]], channel_ids: Sequence[int],
          restricted: bool, minutes: float | None = None) -> NewRun:
    """A persona (new, or this server's learned one trained again) on the members' messages, each member's a
    document of its own; usable only in `channel_ids` when `restricted` (a channel hidden from @everyone)."""
    slug = check_learn(actor, name, minutes)
    pol = policy(actor.guild_id)
    docs = [("\n".join(lines).encode("utf-8"), f"member-{uid}.txt") for uid, lines in sorted(texts.items()) if lines]
    if not docs:
        raise UserError("No message of a member who opted in (with {optin}) was found there.",
                        optin=Code("/voice optin"))
    with session_scope() as session:
        persona = get_persona(session, slug, actor.guild_id)
        if persona is not None and active_runs(session, persona=persona):
            raise StillTraining(slug)
        check_training_limits(session, actor, pol)
        text = docs[0][0].decode("utf-8")
        uploaded = _ingest(session, actor, pol, text, docs[0][1], docs[1:])
        created = persona is None
        if created:
            persona = db_create_persona(session, slug, family=Family.CHAR_RNN, guild_id=actor.guild_id,
                                        created_by=actor.user_id,
                                        description="Learned from the messages of members who opted in.")
        persona.channel_ids = sorted(set(channel_ids)) if restricted else None
        session.execute(delete(LearnedSource).where(LearnedSource.persona_id == persona.id))
        for uid, lines in texts.items():
            if lines:
                session.add(LearnedSource(persona_id=persona.id, user_id=uid, guild_id=actor.guild_id,
                                          n_messages=len(lines)))
        link_corpus(session, persona, uploaded.corpus, actor.user_id)
        run = create_run(session, persona, corpus=uploaded.corpus, config=train_overrides(minutes),
                         requested_by=actor.user_id, guild_id=actor.guild_id, channel_id=actor.channel_id)
        return NewRun(run.id, persona.slug, persona.display_name, created, uploaded.warnings)
