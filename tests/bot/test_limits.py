"""Cooldowns, queued-job caps and the trainer check (bot/limits.py), without Discord or a database."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from discord import app_commands

from bot.limits import Cooldowns, Limits, Refusal, actor_of, cooldown_message
from service.policy import Actor, Policy


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_cooldown_per_key_and_per_guild_setting():
    clock = Clock()
    cd = Cooldowns(clock)
    assert cd.hit("u1", 10) is None
    bucket = cd.hit("u1", 10)
    assert bucket is not None and bucket.get_retry_after(clock.now) == pytest.approx(10)
    assert cd.hit("u2", 10) is None  # another user is not affected
    clock.now += 10.5
    assert cd.hit("u1", 10) is None
    assert cd.hit("u1", 0) is None and cd.hit("u1", 0) is None  # 0 = no cooldown


def test_cooldown_refund_and_changed_setting():
    clock = Clock()
    cd = Cooldowns(clock)
    cd.hit("u", 60)
    cd.reset("u")
    assert cd.hit("u", 60) is None
    assert cd.hit("u", 5) is None  # a new setting starts a new bucket


def limits_with(policy: Policy) -> Limits:
    return Limits(load=lambda guild_id: policy)


def test_generate_limits_cap_and_cooldown():
    limits = limits_with(Policy(cooldown_seconds=30, max_queued_jobs=2))

    async def go():
        await limits.check_generate(1, 7, in_flight=0)
        with pytest.raises(app_commands.CommandOnCooldown) as e:
            await limits.check_generate(1, 7, in_flight=0)
        assert 29 < e.value.retry_after <= 30 and "<t:" in cooldown_message(e.value)
        limits.refund(1, 7)
        await limits.check_generate(1, 7, in_flight=1)
        with pytest.raises(Refusal, match="limit here is 2"):
            await limits.check_generate(2, 7, in_flight=2)
        await limits.check_generate(1, 8, in_flight=0)  # cooldowns are per guild

    asyncio.run(go())


def test_policy_is_cached():
    calls = []
    limits = Limits(load=lambda g: calls.append(g) or Policy())

    async def go():
        await limits.policy(1)
        await limits.policy(1)
        limits.forget(1)
        await limits.policy(1)

    asyncio.run(go())
    assert calls == [1, 1]


def test_may_train_by_permission_or_role():
    limits = limits_with(Policy(trainer_role_id=77))

    async def go():
        assert await limits.may_train(Actor(1, 5, can_manage=True))
        assert await limits.may_train(Actor(1, 5, role_ids=frozenset({77})))
        assert not await limits.may_train(Actor(1, 5, role_ids=frozenset({78})))

    asyncio.run(go())


def test_actor_from_an_interaction():
    role = SimpleNamespace(id=77, is_default=lambda: False)
    everyone = SimpleNamespace(id=5, is_default=lambda: True)
    user = SimpleNamespace(id=1, roles=[role, everyone], _roles=[78])
    perms = SimpleNamespace(manage_guild=False, administrator=True)
    interaction = SimpleNamespace(user=user, guild_id=5, channel_id=9, permissions=perms)
    actor = actor_of(interaction)
    assert actor == Actor(1, 5, 9, can_manage=True, role_ids=frozenset({77, 78}))
