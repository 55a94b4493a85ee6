"""The conversation window of ambient replies (service.ambient): its settings clamped to the operator's ambient
ceilings, its open/closed state in the shared quota tables (two Quotas objects, as two bot processes, see the
same window), its own cooldown, and the server's ambient replies per hour counting its answers too."""

from __future__ import annotations

import db
import service.ambient
import service.policy
from db import Generation, session_scope
from db.personas import get_persona
from service.ambient import Window
from service.quotas import Quotas
from tests.environment import configured

from .test_service import GUILD, MANAGER, _activate, env  # noqa: F401 - pytest fixtures used by name


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_window_is_stored_and_clamped_to_the_ambient_ceilings(env):  # noqa: F811
    _activate("alice")
    on = service.ambient.enable(MANAGER, 42, "alice", 0.05, "10m", window="5m", window_chance=0.5,
                                window_cooldown="1m")
    assert on.window == Window(300, 0.2, 60) and on.notes == ("window chance 0.5 is past this deployment's "
                                                              "ceiling: set to 0.2.",)
    assert service.ambient.setting(42) == on and service.ambient.setting(42).window == on.window
    on = service.ambient.enable(MANAGER, 42, "alice", 0.05, "10m", window="2h", window_chance=0.1,
                                window_cooldown="0")
    assert on.window == Window(service.ambient.MAX_WINDOW_SECONDS, 0.1, 30) and len(on.notes) == 2
    with configured({"IMPROBABLE_CEILING_AMBIENT_CHANCE": "0.05", "IMPROBABLE_CEILING_AMBIENT_COOLDOWN_SECONDS":
                     "90"}):  # a lowered ceiling applies to the stored window too
        assert service.ambient.setting(42).window == Window(3600, 0.05, 90)
    assert service.ambient.enable(MANAGER, 43, "alice", 0.05, "10m").window.seconds == 0  # no window by default


def test_the_window_is_shared_state_that_closes_after_its_time(env):  # noqa: F811
    clock = Clock()
    engine = db.make_engine(service.policy.get_settings().database_url)
    one, other = Quotas(engine, clock), Quotas(engine, clock)  # two bot processes
    try:
        assert service.ambient.window_left(7, one) == 0
        service.ambient.open_window(7, 3, one)
        assert service.ambient.window_left(7, other) == 3
        clock.now += 2
        service.ambient.open_window(7, 3, other)  # a new reply to the persona: open for the full length again
        clock.now += 2.5
        assert service.ambient.window_left(7, one) == 0.5
        clock.now += 0.5
        assert service.ambient.window_left(7, one) == 0 and service.ambient.window_left(7, other) == 0
        service.ambient.open_window(7, 60, one)
        service.ambient.close_window(7, other)
        assert service.ambient.window_left(7, one) == 0
    finally:
        engine.dispose()


def test_turning_ambient_off_closes_the_window(env):  # noqa: F811
    _activate("alice")
    service.ambient.enable(MANAGER, 44, "alice", 0.05, "10m", window="5m")
    service.ambient.open_window(44, 300)
    assert service.ambient.window_left(44) > 0
    assert service.ambient.disable(MANAGER, 44)
    assert service.ambient.window_left(44) == 0


def test_window_answers_keep_their_cooldown_and_count_in_the_servers_hour(env):  # noqa: F811
    clock = Clock()
    quotas = Quotas(clock=clock)
    with configured({"IMPROBABLE_CEILING_AMBIENT_COOLDOWN_SECONDS": "5",
                     "IMPROBABLE_CEILING_AMBIENT_REPLIES_PER_HOUR": "3"}):
        top = service.policy.ceilings()
        window = Window(300, 1.0, 0)  # asks for no cooldown: the ceiling's least (5 s) applies
        assert service.ambient.window_turn(GUILD, 8, window, top, quotas)
        assert not service.ambient.window_turn(GUILD, 8, window, top, quotas)
        clock.now += 5
        assert service.ambient.window_turn(GUILD, 8, window, top, quotas)
        # an ordinary ambient reply of the server counts in the same hour: the fourth is refused
        assert quotas.take(f"ambient:guild:{GUILD}", 1, top.ambient_replies_per_hour, 3600) is not None
        clock.now += 5
        assert not service.ambient.window_turn(GUILD, 9, window, top, quotas)
        clock.now += 3600
        assert service.ambient.window_turn(GUILD, 9, window, top, quotas)


def test_an_ambient_reply_is_told_from_a_requested_text(env):  # noqa: F811
    ckpt = _activate("alice")
    with session_scope() as session:
        persona = get_persona(session, "alice", None)
        rows = [Generation(persona_id=persona.id, checkpoint_id=ckpt, user_id=None, quoted_user_id=5),
                Generation(persona_id=persona.id, checkpoint_id=ckpt, user_id=None),
                Generation(persona_id=persona.id, checkpoint_id=ckpt, user_id=5)]
        session.add_all(rows)
        session.flush()
        ids = [g.id for g in rows]
    assert [service.ambient.answered_unasked(i) for i in ids] == [True, None, False]
    assert service.ambient.answered_unasked(10**9) is False
