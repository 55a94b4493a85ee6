"""The lookups commands start with: a persona by name, a stored text, a training run or a schedule by id, or the
refusal to show when there is none (service.errors).

Every row belongs to one server (or, for built-in personas and the console's own rows, to the deployment), and
this is the one place that decides what an actor may see: a row of another server is answered exactly as a
missing one (the same error class and text), so no id reveals that another server has it.
"""

from __future__ import annotations

from db import Checkpoint, Generation, Persona, Schedule, TrainingRun
from db.bundled import needs_own_copy
from db.personas import PersonaError, builtin_of, resolve_persona
from db.personas import UnknownPersona as NoSuchPersona
from service.errors import Code, NoModelYet, PersonaDisabled, TextGone, UnknownPersona, UserError
from service.policy import Actor


def guild_of(where: Actor | int | None) -> int | None:
    """The server a lookup is made in: an actor's, or a guild id as given (None: a DM or the console)."""
    return where.guild_id if isinstance(where, Actor) else where


def visible_to(actor: Actor, guild_id: int | None, user_id: int | None = None) -> bool:
    """Whether a row of `guild_id` (requested by `user_id`) is the actor's to see. In a server: that server's
    rows only. Outside one (a DM, the console, the CLI): rows made outside a server, the operator's all of
    them, anybody else's only their own."""
    if actor.guild_id is not None:
        return guild_id == actor.guild_id
    return guild_id is None and (actor.operator or (user_id is not None and user_id == actor.user_id))


def find_persona(session, slug: str, where: Actor | int | None, *,
                 include_disabled: bool = False) -> tuple[Persona, Checkpoint | None]:
    """(persona, its active checkpoint or None) as `slug` names it in that server (its own copy of a built-in
    before the built-in), else UnknownPersona with the closest names visible there; a persona the operator
    disabled is refused (PersonaDisabled) unless `include_disabled`."""
    try:
        persona, checkpoint = resolve_persona(session, slug, guild_of(where))
    except NoSuchPersona as e:
        raise UnknownPersona(e.slug, e.suggestions) from None
    except PersonaError as e:
        raise UserError("{reason}", reason=e.message) from None
    if persona.disabled and not include_disabled:
        raise PersonaDisabled(persona.slug)
    if not owned_by(persona, where):
        raise UnknownPersona(persona.slug, [])  # a member's own voice: to anyone else it is not there
    if persona.channel_ids and isinstance(where, Actor) and where.channel_id not in persona.channel_ids:
        raise UserError("{persona} learned from channels hidden from most members: it is used only in those "
                        "channels.", persona=Code(persona.slug))
    return persona, checkpoint


def owned_by(persona: Persona, where: Actor | int | None) -> bool:
    """Whether an actor may use a persona as far as ownership goes: a member's own voice (owner_user_id) is its
    owner's alone; the server itself (a lookup by server id, or an actor without a user: a scheduled post, an
    ambient reply that its owner set up) passes."""
    if persona.owner_user_id is None or not isinstance(where, Actor) or where.user_id is None:
        return True
    return where.user_id == persona.owner_user_id


def find_trained_persona(session, slug: str, where: Actor | int | None) -> tuple[Persona, Checkpoint]:
    """As find_persona, but a persona without a model is refused (NoModelYet)."""
    persona, checkpoint = find_persona(session, slug, where)
    if checkpoint is None:
        raise no_model(session, persona)
    return persona, checkpoint


def no_model(session, persona: Persona) -> NoModelYet:
    base = builtin_of(session, persona) or persona
    return NoModelYet(persona.slug, persona.recipe, needs_own_copy(base))


def find_generation(session, generation_id: int, actor: Actor) -> Generation:
    """A stored text by id, else TextGone (deleted with its persona, or another server's)."""
    gen = session.get(Generation, generation_id)
    if gen is None or not visible_to(actor, gen.guild_id, gen.user_id):
        raise TextGone(generation_id)
    return gen


def find_run(session, run_id: int, actor: Actor) -> TrainingRun:
    """A training run by id, else the refusal for an unknown id (also for another server's run)."""
    run = session.get(TrainingRun, run_id)
    if run is None or not visible_to(actor, run.guild_id, run.requested_by):
        raise UserError("There is no training run {id} here.", id=run_id)
    return run


def find_schedule(session, schedule_id: int, actor: Actor) -> Schedule:
    """One of the server's schedules by id, else the refusal for an unknown id (also for another server's)."""
    sched = session.get(Schedule, schedule_id)
    if sched is None or actor.guild_id is None or sched.guild_id != actor.guild_id:
        raise UserError("There is no schedule {id} in this server (see {list}).", id=schedule_id,
                        list=Code("/schedule list"))
    return sched
