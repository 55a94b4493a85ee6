"""Sharding outside Discord: the settings (IMPROBABLE_SHARD_COUNT, IMPROBABLE_SHARD_IDS) and their checks, the
formula (core.shards), and what a bot process reads by its shards from the shared database: the in-flight
texts and training runs it resumes, the command-sync claim, the picture cooldown and the embedded sweep's turn
(one process of several). On a real migrated SQLite file; the end-to-end test with two bot processes is
tests/bot/test_e2e_shards.py."""

from __future__ import annotations

import asyncio
import types

import pytest

import db
import service.commands
import service.generation
import service.training
from core.settings import SettingsError, load_settings
from core.shards import Shards, shard_of
from db.personas import get_persona
from db.runs import create_run
from service.generation import PreparedGeneration
from service.quotas import Quotas
from tests.environment import configured

from .test_service import env  # noqa: F401 - pytest fixtures used by name

ON_0, ON_1 = 4 << 22, 5 << 22  # server ids on shard 0 and 1 of 2
REQUEST = PreparedGeneration(payload={"persona": "alice", "prompt": "Hi", "params": {}}, display_name="Alice",
                             shown_prompt="Hi", family="char-rnn")


def _settings(**values: str):
    with configured({f"IMPROBABLE_{k.upper()}": v for k, v in values.items()}):
        return load_settings(_env_file=None)


def test_shard_settings_are_read_and_checked():
    assert _settings(shard_count="", shard_ids="").shards == Shards()
    assert _settings(shard_count="4", shard_ids="1, 3").shards == Shards(4, (1, 3))
    assert _settings(shard_count="2", shard_ids="[0]").shard_ids == [0]
    for count, ids, says in (("", "1", "needs IMPROBABLE_SHARD_COUNT"), ("2", "2", "from 0 to 1"),
                             ("2", "1,1", "each shard id once"), ("0", "", "IMPROBABLE_SHARD_COUNT")):
        with pytest.raises(SettingsError, match=says) as caught:
            _settings(shard_count=count, shard_ids=ids)
        assert len(str(caught.value).splitlines()) == 1


def test_the_formula_and_what_a_process_owns():
    assert [shard_of(g, 2) for g in (ON_0, ON_1, None)] == [0, 1, 0]
    assert shard_of(81384788765712384, 16) == (81384788765712384 >> 22) % 16
    assert Shards(2, (1,)).owns(ON_1) and not Shards(2, (1,)).owns(ON_0) and not Shards(2, (1,)).owns(None)
    assert Shards(2, (0,)).owns(None) and Shards().owns(ON_1) and Shards(2).owns(ON_0)
    assert Shards(2, (0, 1)).describe() == "shard(s) 0, 1 of 2" and "all shards" in Shards().describe()


def test_a_process_resumes_the_texts_of_its_shards_only(env):  # noqa: F811
    for task, guild in (("t0", ON_0), ("t1", ON_1), ("dm", None)):
        service.generation.remember_in_flight(task, REQUEST, channel_id=9, interaction_token=task, user_id=7,
                                              guild_id=guild)
    tasks = {i: {r.task_id for r in service.generation.in_flight_generations(Shards(2, (i,)))} for i in (0, 1)}
    assert tasks == {0: {"t0", "dm"}, 1: {"t1"}}
    assert {r.task_id for r in service.generation.in_flight_generations()} == {"t0", "t1", "dm"}


def test_a_process_watches_the_training_runs_of_its_shards_only(env):  # noqa: F811
    with db.session_scope() as session:
        persona = get_persona(session, "alice", None)
        runs = {guild: create_run(session, persona, guild_id=guild, channel_id=9).id for guild in (ON_0, ON_1)}
    for run_id in runs.values():
        service.training.set_run_message(run_id, 9, 10)
    watched = {i: [r.id for r in service.training.runs_to_watch(Shards(2, (i,)))] for i in (0, 1)}
    assert watched == {0: [runs[ON_0]], 1: [runs[ON_1]]}
    assert sorted(r.id for r in service.training.runs_to_watch()) == sorted(runs.values())


def test_one_process_at_a_time_holds_a_command_sync_claim(env):  # noqa: F811
    assert service.commands.claim_sync("app-global")
    assert not service.commands.claim_sync("app-global")  # a second process waits
    assert service.commands.claim_sync("app-guild-5")  # another scope is free
    service.commands.release_sync("app-global")
    assert service.commands.claim_sync("app-global")
    assert not service.commands.claim_sync("app-guild-5", quotas=Quotas())


def test_the_picture_cooldown_holds_across_processes(env):  # noqa: F811
    from bot.pictures import Drawing

    first, second = Drawing(1, 60), Drawing(1, 60)  # two bot processes' pools, one database

    async def turns():
        return [await first.may_draw(7), await second.may_draw(7), await second.may_draw(8)]

    try:
        assert asyncio.run(turns()) == [True, False, True]
    finally:
        first.pool.shutdown()
        second.pool.shutdown()


def test_one_embedded_process_sweeps(env, monkeypatch):  # noqa: F811
    """Two bot processes in embedded mode start their sweep loops together: one sweeps."""
    from bot import operator
    from bot.limits import Limits

    swept = []

    async def sweep_once():
        swept.append(1)

    monkeypatch.setattr(operator, "is_eager", lambda: True)
    monkeypatch.setattr(operator, "sweep_once", sweep_once)

    async def two_processes():
        bots = [types.SimpleNamespace(settings=types.SimpleNamespace(sweep_seconds=3600.0), limits=Limits(),
                                      is_closed=lambda: False) for _ in range(2)]
        tasks = [asyncio.create_task(operator.sweep_loop(bot)) for bot in bots]
        await asyncio.sleep(0.5)
        for task in tasks:
            task.cancel()

    asyncio.run(two_processes())
    assert swept == [1]
