"""Dialogues (`/dialogue persona_a persona_b topic turns`): two personas answer each other in turn. The first
turn continues the topic; every later turn is generated with the other persona's last text as its prompt.
This module resolves the two personas in the server (a disabled persona or one without a model is refused),
builds each turn's generate request, says what the whole dialogue costs (core.cost units: the sum of its
turns, admitted at once before the first turn), and reads back a turn's text. Each turn is an ordinary
generate job, recorded as a generation row of its persona (so Info, Report and /privacy see it); bot/dialogue.py
posts the turns. A dialogue being posted is kept in SQL until it ends, so that a bot restarted meanwhile ends it
with a note (it is not resumed: the turns are short, and running the command again is as quick)."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from sqlalchemy import delete, select, update

from core.shards import Shards
from db import Generation, session_scope
from db.models import InflightDialogue
from service.errors import Code, UserError
from service.generation import MAX_PROMPT_CHARS, PreparedGeneration, prepare_generation
from service.lookup import find_trained_persona
from service.policy import Actor
from service.quotas import request_cost

MAX_TURNS = 12
MIN_TURNS = 2
DEFAULT_TURNS = 6
MAX_TOPIC_CHARS = 300
# a turn is a line of conversation, not a page: about a third of a default request
TURN_TOKENS = {"char-rnn": 200, "word-gru": 30, "word-mlp": 30}


@dataclass(frozen=True)
class Speaker:
    slug: str
    display_name: str
    family: str


@dataclass(frozen=True)
class Dialogue:
    speakers: tuple[Speaker, Speaker]
    topic: str
    turns: int

    def speaker(self, turn: int) -> Speaker:
        """Who speaks at `turn` (0-based): the first persona on even turns, the second on odd ones."""
        return self.speakers[turn % 2]


def plan_dialogue(actor: Actor, persona_a: str, persona_b: str, topic: str, turns: int = DEFAULT_TURNS) -> Dialogue:
    """The dialogue as asked, or the refusal: a server's channel only, MIN_TURNS..MAX_TURNS turns, a topic of
    at most MAX_TOPIC_CHARS, two different personas of this server, each enabled and trained."""
    if actor.guild_id is None:
        raise UserError("Dialogues work in a server's channels only.")
    if not MIN_TURNS <= turns <= MAX_TURNS:
        raise UserError("A dialogue has {low} to {high} turns.", low=MIN_TURNS, high=MAX_TURNS)
    topic = re.sub(r"\s+", " ", topic or "").strip()
    if not topic:
        raise UserError("Give the dialogue a topic: the first persona's opening words (e.g. {example}).",
                        example=Code("topic: the weather"))
    if len(topic) > MAX_TOPIC_CHARS:
        raise UserError("The topic can be at most {limit} characters.", limit=MAX_TOPIC_CHARS)
    speakers = []
    with session_scope() as session:
        for slug in (persona_a, persona_b):
            persona, _ = find_trained_persona(session, slug, actor)
            speakers.append(Speaker(persona.slug, persona.display_name, persona.family.value))
    if speakers[0].slug == speakers[1].slug:
        raise UserError("A dialogue needs two different personas ({persona} twice).", persona=Code(speakers[0].slug))
    return Dialogue((speakers[0], speakers[1]), topic, turns)


def turn_prompt(dialogue: Dialogue, previous: str | None) -> str:
    """The prompt of a turn: the other persona's last text (its tail, when long), the topic for the first turn
    or after a turn that produced no text."""
    return previous[-MAX_PROMPT_CHARS:] if previous and previous.strip() else dialogue.topic


def turn_request(dialogue: Dialogue, turn: int, previous: str | None, actor: Actor) -> PreparedGeneration:
    """The generate request of `turn`. Its message shows only the turn's own text (the prompt is the previous
    message, already in the channel)."""
    speaker = dialogue.speaker(turn)
    request = prepare_generation(speaker.slug, turn_prompt(dialogue, previous), actor,
                                 {"max_tokens": TURN_TOKENS.get(speaker.family, TURN_TOKENS["char-rnn"])})
    return replace(request, shown_prompt="")


def dialogue_cost(dialogue: Dialogue, actor: Actor) -> float:
    """The cost of every turn together (core.cost units), from each persona's request and checkpoint."""
    each = [request_cost(r.payload, r.family) for r in (turn_request(dialogue, t, dialogue.topic, actor)
                                                        for t in (0, 1))]
    return round(sum(each[t % 2] for t in range(dialogue.turns)), 2)


def turn_text(generation_id: int) -> str:
    """A finished turn's text, as recorded (the next turn's prompt)."""
    with session_scope() as session:
        gen = session.get(Generation, generation_id)
        return gen.output if gen is not None else ""


# -- dialogues being posted (a restarted bot ends each with a note: bot/dialogue.py) ------------------------

@dataclass(frozen=True)
class Interrupted:
    """A dialogue that was still being posted when the bot last stopped."""

    id: str
    guild_id: int | None
    channel_id: int
    speakers: str
    turns: int
    started: int  # how many of its turns had started (the last one may have been finished after the restart)


def remember_dialogue(dialogue_id: str, dialogue: Dialogue, guild_id: int | None, channel_id: int) -> None:
    a, b = dialogue.speakers
    with session_scope() as session:
        session.add(InflightDialogue(id=dialogue_id, guild_id=guild_id, channel_id=channel_id,
                                       speakers=f"{a.display_name} and {b.display_name}"[:200],
                                       turns=dialogue.turns, started=0))


def turn_started(dialogue_id: str, turn: int) -> None:
    """Turn `turn` (0-based) is being posted."""
    with session_scope() as session:
        session.execute(update(InflightDialogue).where(InflightDialogue.id == dialogue_id)
                        .values(started=turn + 1))


def forget_dialogue(dialogue_id: str) -> None:
    with session_scope() as session:
        session.execute(delete(InflightDialogue).where(InflightDialogue.id == dialogue_id))


def interrupted_dialogues(shards: Shards | None = None) -> list[Interrupted]:
    """The dialogues of the servers on these shards (core.shards; None: every one) that a bot was posting when
    it stopped, oldest first."""
    shards = shards or Shards()
    with session_scope() as session:
        rows = session.scalars(select(InflightDialogue).order_by(InflightDialogue.created_at)).all()
        return [Interrupted(r.id, r.guild_id, r.channel_id, r.speakers, r.turns, r.started) for r in rows
                if shards.owns(r.guild_id)]
