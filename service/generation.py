"""Generation requests: resolve the persona and its checkpoint, merge its sampling defaults with the user's
overrides, check them against the contract (core.contracts), and build the generate payload; follow-ups
(regenerate, continue, more improbable) of an earlier generation; chat lines (`trump: make the wall`).
Jobs are not enqueued here (that is bot/jobs.py): functions return the request to enqueue."""

from __future__ import annotations

import re
import secrets
from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import delete, select, update

from core.blend import BlendSpecError, is_blend_spec, parse_blend
from core.contracts import (
    SAMPLING_KEYS,
    GenerateRequest,
    SamplingError,
    label_of,
    merge_sampling,
    parse_sampling,
    rule_of,
)
from core.settings import get_settings
from core.shards import Shards
from db import Checkpoint, Family, Generation, InflightGeneration, Persona, session_scope
from db.generations import generation_for_message, set_generation_message
from db.runs import active_runs
from db.types import as_utc, utcnow
from service.errors import Code, PersonaDisabled, StillTraining, TextGone, UnknownPersona, UserError
from service.lookup import find_generation, find_persona, no_model
from service.policy import Actor

MAX_PROMPT_CHARS = 1500
MAX_CONTINUE_CHARS = 2000


def new_seed() -> int:
    return secrets.randbits(31)


@dataclass
class PreparedGeneration:
    """A generate job to enqueue (`payload`: core.contracts.GenerateRequest as JSON) and how to show it."""

    payload: dict
    display_name: str
    shown_prompt: str
    family: str
    note: str = ""  # a line for the user about how the request was derived (e.g. the target used)

    @property
    def params(self) -> dict:
        return self.payload["params"]

    @property
    def label(self) -> str:
        """How `/queue` lists the job."""
        return f"{self.payload['persona']}: {self.shown_prompt[:40]}"


def check_params(params: dict) -> dict:
    """Refuse out-of-range sampling parameters (the contract's bounds, which Discord's options and the
    console show too; length also within this deployment's IMPROBABLE_MAX_GENERATE_TOKENS)."""
    try:
        parse_sampling(params, labels=True)
    except SamplingError as e:
        raise UserError("{reason}.", reason=e.message) from None
    cap = get_settings().max_generate_tokens
    if params.get("max_tokens") is not None and params["max_tokens"] > cap:
        raise UserError("{label} {rule}.", label=label_of("max_tokens"), rule=rule_of("max_tokens", high=cap))
    return params


def sampling(persona: Persona, overrides: dict | None = None) -> dict:
    """The persona's sampling defaults, then the overrides; None values are left out; a seed is set."""
    params = merge_sampling(persona.sampling, overrides)
    if params.get("seed") is None:
        params["seed"] = new_seed()
    return check_params(params)


def _checkpoint_or_explain(persona: Persona, checkpoint: Checkpoint | None, session) -> Checkpoint:
    if checkpoint is not None:
        return checkpoint
    running = active_runs(session, persona=persona)
    if running:
        raise StillTraining(persona.slug, running[0].id, running[0].status.value)
    raise no_model(session, persona)


def prepare_generation(slug: str, prompt: str, actor: Actor, overrides: dict | None = None) -> PreparedGeneration:
    """Resolve the persona (closest names when unknown) and build the generate request."""
    prompt = (prompt or "")[:MAX_PROMPT_CHARS]
    if is_blend_spec(slug):
        return prepare_blend(slug, prompt, actor, overrides)
    with session_scope() as session:
        persona, checkpoint = find_persona(session, slug, actor)
        checkpoint = _checkpoint_or_explain(persona, checkpoint, session)
        return _request(persona, checkpoint.id, prompt, sampling(persona, overrides), actor, shown=prompt)


def prepare_blend(spec: str, prompt: str, actor: Actor, overrides: dict | None = None) -> PreparedGeneration:
    """A blended voice (`trump:0.7+shakespeare`): every persona resolved to its active checkpoint (character
    models only: the blend mixes next-character distributions), the first persona's sampling defaults, and
    the voices in the payload's `blend` (worker/blending.py). The row is recorded under the first persona."""
    try:
        voices = parse_blend(spec)
    except BlendSpecError as e:
        raise UserError("{reason}.", reason=str(e)) from None
    with session_scope() as session:
        resolved = []
        for voice in voices:
            persona, checkpoint = find_persona(session, voice.persona, actor)
            if persona.family != Family.CHAR_RNN:
                raise UserError("{persona} is a {family} persona: only character models (char-rnn) can be blended, "
                                "because the blend mixes next-character probabilities.", persona=Code(persona.slug),
                                family=persona.family.value)
            resolved.append((persona, _checkpoint_or_explain(persona, checkpoint, session), voice.weight))
        first = resolved[0][0]
        request = _request(first, resolved[0][1].id, prompt, sampling(first, overrides), actor, shown=prompt)
        request.payload["blend"] = [{"checkpoint_id": c.id, "weight": round(w, 3), "persona": p.slug}
                                    for p, c, w in resolved]
        request.display_name = " + ".join(f"{p.display_name} {w:.0%}" for p, _, w in resolved)
        return request


def _request(persona: Persona, checkpoint_id: int, prompt: str, params: dict, actor: Actor, *, shown: str,
             parent: int | None = None) -> PreparedGeneration:
    request = GenerateRequest(checkpoint_id=checkpoint_id, persona=persona.slug, prompt=prompt, params=params,
                              guild_id=actor.guild_id, channel_id=actor.channel_id, user_id=actor.user_id,
                              parent_generation_id=parent)
    return PreparedGeneration(request.payload(), persona.display_name, shown, persona.family.value)


def join_text(prompt: str, completion: str, family: str) -> str:
    """Prompt and completion as one text (word models join words with a space)."""
    if family != Family.CHAR_RNN.value and prompt and completion and not prompt[-1].isspace() \
            and not completion[0].isspace() and completion[0] not in ".,;:!?'\")]":
        return f"{prompt} {completion}"
    return prompt + completion


MIN_IMPROBABILITY = 1e-4  # below this a target picks among words the model practically never writes
FIRST_IMPROBABILITY = 0.1  # "more improbable" on a text written without the drive
IMPROBABILITY_STEP = 5  # each press divides the target by this


def lower_improbability(p: float | None) -> float:
    """The next 'more improbable' target: 0.1 when the drive was off, then a fifth each time, never below
    MIN_IMPROBABILITY."""
    if not p:
        return FIRST_IMPROBABILITY
    return max(float(f"{p / IMPROBABILITY_STEP:.3g}"), MIN_IMPROBABILITY)


def _more_improbable(params: dict) -> str:
    """Lower the target in `params` (with a new seed, so the text never repeats); the note to show."""
    before = params.get("improbability")
    params["improbability"] = lower_improbability(before)
    params["seed"] = new_seed()
    if before and before <= MIN_IMPROBABILITY:
        return (f"improbability target {params['improbability']:g}: already the lowest it goes "
                f"({MIN_IMPROBABILITY:g}), so only the seed changed")
    if before:
        return f"improbability target lowered from {before:g} to {params['improbability']:g}"
    return f"improbability drive on: target {params['improbability']:g} (each word about that probable)"


def follow_up(generation_id: int, mode: str, actor: Actor, extra_prompt: str = "") -> PreparedGeneration:
    """A request derived from an earlier generation. mode: "regenerate" (same parameters, new seed),
    "continue" (its text as the prompt, new seed) or "improbable" (lower target probability and a new seed,
    so pressing it twice never gives the same text). Only a text of the actor's server may be followed up
    (another server's is TextGone, as a missing one); a built-in's text continues in the server's own copy
    when it has one."""
    with session_scope() as session:
        gen = find_generation(session, generation_id, actor)
        if gen.deleted_at is not None:  # its text was blanked by Delete
            raise TextGone(gen.id)
        persona = gen.persona
        if persona.guild_id is None and actor.guild_id is not None:
            persona, _ = find_persona(session, persona.slug, actor)
        if persona.disabled:
            raise PersonaDisabled(persona.slug)
        checkpoint = _checkpoint_or_explain(persona, persona.active_checkpoint, session)
        params = {k: v for k, v in (gen.params or {}).items() if k in SAMPLING_KEYS}
        note = ""
        if mode == "regenerate":
            params["seed"] = new_seed()
            prompt, shown = gen.prompt, gen.prompt
        elif mode == "improbable":
            note = _more_improbable(params)
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
        request = _request(persona, checkpoint.id, prompt, check_params(params), actor, shown=shown, parent=gen.id)
        request.note = note
        return request


def generation_of_message(message_id: int) -> int | None:
    with session_scope() as session:
        gen = generation_for_message(session, message_id)
        return gen.id if gen is not None else None


def attach_message(generation_id: int, message_id: int) -> None:
    with session_scope() as session:
        set_generation_message(session, generation_id, message_id)


@dataclass(frozen=True)
class Shown:
    """Where a generation was shown: its message (None until posted) and server (None: a DM)."""

    message_id: int | None
    guild_id: int | None


def where_shown(generation_id: int) -> Shown | None:
    """The message and server of a generation (a result button acts only on its own message), None when
    there is no such row."""
    with session_scope() as session:
        gen = session.get(Generation, generation_id)
        return None if gen is None else Shown(gen.message_id, gen.guild_id)


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
            find_persona(session, slug, guild_id)
        except UnknownPersona as e:
            if e.suggestions:
                raise
            return default, text.strip()
    return slug, prompt



# -- generations being shown right now (a restarted bot finishes them: bot/streaming.py) ---------------------

@dataclass
class InFlight:
    """A generate job whose Discord message was still waiting for its outcome when the bot last stopped."""

    task_id: str
    request: PreparedGeneration
    channel_id: int | None
    interaction_token: str | None  # the message is that interaction's original response…
    reply_to: int | None  # …or the bot's reply (message_id, once posted) to this message
    message_id: int | None
    user_id: int | None
    guild_id: int | None
    created_at: datetime
    webhook_id: int | None = None  # message_id was posted as the persona through this channel webhook

    @property
    def age(self) -> float:
        return (utcnow() - as_utc(self.created_at)).total_seconds()


def remember_in_flight(task_id: str, request: PreparedGeneration, *, channel_id: int | None,
                       interaction_token: str | None = None, reply_to: int | None = None,
                       user_id: int | None = None, guild_id: int | None = None) -> None:
    """Keep a job and where its message is until its outcome is shown. Plain UPDATE-or-INSERT statements: a
    row forgotten meanwhile (a fast job whose outcome was already shown) is written again, never an error,
    and a restarted bot finishes it idempotently."""
    values = dict(request=asdict(request), channel_id=channel_id, interaction_token=interaction_token,
                  reply_to=reply_to, user_id=user_id, guild_id=guild_id)
    with session_scope() as session:
        found = session.execute(update(InflightGeneration).where(InflightGeneration.task_id == task_id)
                                .values(**values)).rowcount
        if not found:
            session.add(InflightGeneration(task_id=task_id, **values))


def placed_in_flight(task_id: str, message_id: int, webhook_id: int | None = None) -> None:
    """The job's message now exists (a reply is posted with its first text; `webhook_id`: posted as the persona
    through that channel webhook). A plain UPDATE: the row may already be forgotten (the reply was the outcome,
    shown while this ran), which matches nothing."""
    with session_scope() as session:
        session.execute(update(InflightGeneration).where(InflightGeneration.task_id == task_id)
                        .values(message_id=message_id, webhook_id=webhook_id))


def forget_in_flight(task_id: str) -> None:
    """The job's outcome is shown. Idempotent: a plain DELETE, so forgetting twice, or racing a
    placed_in_flight, is no error."""
    with session_scope() as session:
        session.execute(delete(InflightGeneration).where(InflightGeneration.task_id == task_id))


def in_flight_generations(shards: Shards | None = None) -> list[InFlight]:
    """The remembered jobs of the servers on these shards (core.shards; None: every one), oldest first: the
    process of another shard resumes its own."""
    shards = shards or Shards()
    with session_scope() as session:
        rows = session.scalars(select(InflightGeneration).order_by(InflightGeneration.created_at)).all()
        return [InFlight(task_id=r.task_id, request=PreparedGeneration(**r.request), channel_id=r.channel_id,
                         interaction_token=r.interaction_token, reply_to=r.reply_to, message_id=r.message_id,
                         user_id=r.user_id, guild_id=r.guild_id, created_at=r.created_at, webhook_id=r.webhook_id)
                for r in rows if shards.owns(r.guild_id)]
