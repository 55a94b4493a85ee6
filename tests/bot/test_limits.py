"""Cooldowns, job caps and the trainer check (bot/limits.py), without Discord, on shared SQLite counters."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from discord import app_commands

import db
from bot.limits import Limits, Refusal, actor_of, cooldown_message
from service.policy import Actor, Policy
from service.quotas import Quotas


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def quotas(tmp_path):
    """The shared counters on a migrated SQLite file, with a test clock."""
    url = f"sqlite:///{tmp_path / 'limits.db'}"
    db.upgrade(url, seed=False)
    engine = db.make_engine(url)
    yield Quotas(engine, Clock())
    engine.dispose()


def limits_with(policy: Policy, quotas: Quotas | None = None) -> Limits:
    return Limits(load=lambda guild_id: policy, quotas=quotas)


def test_generate_limits_cap_and_cooldown(quotas):
    limits = limits_with(Policy(cooldown_seconds=30, max_queued_jobs=2), quotas)
    other = limits_with(Policy(cooldown_seconds=30, max_queued_jobs=2), Quotas(quotas.engine, quotas.clock))

    async def go():
        await limits.check_generate(1, 7)
        with pytest.raises(app_commands.CommandOnCooldown) as e:
            await other.check_generate(1, 7)  # another bot process sees the cooldown
        assert 29 < e.value.retry_after <= 30 and "<t:" in cooldown_message(e.value)
        limits.refund(1, 7)
        await asyncio.gather(*limits._background)
        await other.check_generate(1, 7)
        await asyncio.to_thread(quotas.claim, "a", 7, 2, 2.0, member_cap=2, server_cap=20, ttl=60)
        with pytest.raises(Refusal, match="limit here is 2"):
            await other.check_generate(2, 7)
        await limits.check_generate(1, 8)  # cooldowns are per guild

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
    interaction = SimpleNamespace(user=user, guild_id=5, channel_id=9, permissions=perms,
                                  client=SimpleNamespace(settings=SimpleNamespace(owner_ids=[])))
    actor = actor_of(interaction)
    assert actor == Actor(1, 5, 9, can_manage=True, role_ids=frozenset({77, 78}))
