"""The lookups commands start with: a persona by name, a stored text by id, or the refusal to show when
there is none (service.errors)."""

from __future__ import annotations

from db import Checkpoint, Generation, Persona
from db.bundled import needs_own_copy
from db.personas import PersonaError, resolve_persona
from db.personas import UnknownPersona as NoSuchPersona
from service.errors import NoModelYet, PersonaDisabled, TextGone, UnknownPersona, UserError


def find_persona(session, slug: str, guild_id: int | None, *,
                 include_disabled: bool = False) -> tuple[Persona, Checkpoint | None]:
    """(persona, its active checkpoint or None) as `slug` names it in that guild, else UnknownPersona with the
    closest names visible there; a persona the operator disabled is refused (PersonaDisabled) unless
    `include_disabled`."""
    try:
        persona, checkpoint = resolve_persona(session, slug, guild_id)
    except NoSuchPersona as e:
        raise UnknownPersona(e.slug, e.suggestions) from None
    except PersonaError as e:
        raise UserError("{reason}", reason=e.message) from None
    if persona.disabled and not include_disabled:
        raise PersonaDisabled(persona.slug)
    return persona, checkpoint


def find_trained_persona(session, slug: str, guild_id: int | None) -> tuple[Persona, Checkpoint]:
    """As find_persona, but a persona without a model is refused (NoModelYet)."""
    persona, checkpoint = find_persona(session, slug, guild_id)
    if checkpoint is None:
        raise no_model(persona)
    return persona, checkpoint


def no_model(persona: Persona) -> NoModelYet:
    return NoModelYet(persona.slug, persona.recipe, needs_own_copy(persona))


def find_generation(session, generation_id: int) -> Generation:
    """A stored text by id, else TextGone (deleted with its persona)."""
    gen = session.get(Generation, generation_id)
    if gen is None:
        raise TextGone(generation_id)
    return gen
