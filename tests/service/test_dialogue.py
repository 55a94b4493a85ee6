"""Dialogues without Discord (service.dialogue): the personas resolved in the server (a disabled one, one
without a model, the same one twice refused), the turns capped, each turn prompted with the other's last text,
and the cost of the whole dialogue as the sum of its turns."""

from __future__ import annotations

import pytest

import service.dialogue
from db import session_scope
from db.personas import get_persona
from service.errors import NoModelYet, PersonaDisabled, UserError
from service.policy import Actor
from service.quotas import request_cost

from .test_service import GUILD, _activate, env  # noqa: F401 - pytest fixtures used by name

MEMBER = Actor(2, GUILD, 5)


def test_a_dialogue_alternates_and_prompts_each_turn_with_the_last_text(env):  # noqa: F811
    _activate("alice")
    _activate("shakespeare")
    plan = service.dialogue.plan_dialogue(MEMBER, "Alice", "shakespeare", "  the   weather ", 5)
    assert plan.topic == "the weather" and [plan.speaker(t).slug for t in range(5)] == \
        ["alice", "shakespeare", "alice", "shakespeare", "alice"]
    first = service.dialogue.turn_request(plan, 0, None, MEMBER)
    assert first.payload["prompt"] == "the weather" and first.payload["persona"] == "alice"
    assert first.shown_prompt == "" and first.params["max_tokens"] == service.dialogue.TURN_TOKENS["char-rnn"]
    second = service.dialogue.turn_request(plan, 1, "Rain, said she.", MEMBER)
    assert second.payload["prompt"] == "Rain, said she." and second.payload["persona"] == "shakespeare"
    assert service.dialogue.turn_request(plan, 2, "  \n", MEMBER).payload["prompt"] == "the weather"
    long = "x" * 5000
    assert service.dialogue.turn_request(plan, 3, long, MEMBER).payload["prompt"] == long[-1500:]
    each = request_cost(first.payload, first.family), request_cost(second.payload, second.family)
    assert service.dialogue.dialogue_cost(plan, MEMBER) == pytest.approx(3 * each[0] + 2 * each[1])


def test_a_dialogue_is_refused_for_disabled_untrained_or_repeated_personas_and_too_many_turns(env):  # noqa: F811
    _activate("alice")
    with pytest.raises(NoModelYet):
        service.dialogue.plan_dialogue(MEMBER, "alice", "trump", "hello")
    _activate("trump")
    with pytest.raises(UserError, match="two different personas"):
        service.dialogue.plan_dialogue(MEMBER, "alice", "Alice", "hello")
    with pytest.raises(UserError, match="2 to 12 turns"):
        service.dialogue.plan_dialogue(MEMBER, "alice", "trump", "hello", 13)
    with pytest.raises(UserError, match="topic"):
        service.dialogue.plan_dialogue(MEMBER, "alice", "trump", "   ")
    with pytest.raises(UserError, match="server"):
        service.dialogue.plan_dialogue(Actor(2, None, 5), "alice", "trump", "hello")
    with session_scope() as session:
        get_persona(session, "trump", None).disabled = True
    with pytest.raises(PersonaDisabled):
        service.dialogue.plan_dialogue(MEMBER, "alice", "trump", "hello")
