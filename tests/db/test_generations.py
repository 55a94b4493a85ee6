"""Generations: a recorded text round-trips with everything a regenerate needs, found by its message."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from db.generations import generation_for_message, recent_generations, record_generation, set_generation_message
from db.models import Generation
from db.personas import get_persona

GUILD, CHANNEL, USER = 2**62 + 1, 2**62 + 2, 2**63 - 1  # snowflakes are 64-bit


@pytest.fixture
def trump(session):
    return get_persona(session, "trump", None)


def test_record_generation_round_trip(session, trump):
    gen = record_generation(session, trump, prompt="Make America", output="great again", seed=2**63 - 1,
                            params={"temperature": 0.8, "improbability": 0.05}, latency_ms=123,
                            user_id=USER, guild_id=GUILD, channel_id=CHANNEL, interaction_id=2**62 + 9)
    set_generation_message(session, gen, 2**62 + 10)
    again = record_generation(session, trump, prompt="Make America", output="great", parent=gen,
                              message_id=2**62 + 11)
    session.commit()
    session.expire_all()
    found = generation_for_message(session, 2**62 + 10)
    assert found.id == gen.id and found.seed == 2**63 - 1 and found.user_id == USER
    assert found.params == {"temperature": 0.8, "improbability": 0.05} and found.latency_ms == 123
    assert found.created_at.tzinfo is not None and found.persona.slug == "trump"
    assert generation_for_message(session, 2**62 + 11).parent_id == gen.id
    assert generation_for_message(session, 1) is None
    assert [g.id for g in recent_generations(session, user_id=USER)] == [gen.id]
    assert {g.id for g in recent_generations(session, since=datetime.now(UTC) - timedelta(hours=1))} == {
        gen.id, again.id}
    assert session.scalar(select(Generation.guild_id).where(Generation.id == gen.id)) == GUILD
