"""Every opted-in channel in one read (service.ambient.all_settings, on a real migrated SQLite file) and the
bot's copy of them (bot.ambient.OptedIn: read at most every SETTING_TTL seconds, its own changes at once)."""

from __future__ import annotations

import asyncio
import threading

import service.ambient
from bot import ambient
from service.ambient import Ambient
from tests.environment import configured

from .test_service import MANAGER, _activate, env  # noqa: F401 - pytest fixtures used by name


def test_all_settings_are_read_in_one_go_within_the_ceilings(env):  # noqa: F811
    _activate("alice")
    on = service.ambient.enable(MANAGER, 42, "alice", 0.1, "60")
    service.ambient.enable(MANAGER, 43, "alice", 0.05, "120")
    service.ambient.disable(MANAGER, 43)
    assert service.ambient.all_settings() == {42: on}
    with configured({"IMPROBABLE_CEILING_AMBIENT_CHANCE": "0.05"}):  # an operator lowers the ceiling
        assert service.ambient.all_settings()[42].chance == 0.05 == service.ambient.setting(42).chance


def test_the_bot_reads_them_all_at_once_and_keeps_its_own_change_made_during_a_read(monkeypatch):
    reads = []
    stored = {1: Ambient(1, "alice", 0.1, 60)}
    release = threading.Event()
    release.set()

    def all_settings():
        reads.append(dict(stored))
        release.wait(5)  # a slow read
        return dict(stored)

    monkeypatch.setattr(service.ambient, "all_settings", all_settings)

    async def scenario():
        opted = ambient.OptedIn()
        assert await opted.get(1) == stored[1] and await opted.get(2) is None
        assert len(reads) == 1  # one read for every channel, not one per channel
        opted.read_at -= ambient.SETTING_TTL  # stale: the next message reads again
        release.clear()
        reading = asyncio.create_task(opted.get(3))
        while len(reads) < 2:
            await asyncio.sleep(0.01)  # the read has started, without channel 3
        opted.set(3, Ambient(3, "alice", 0.2, 30))  # /ambient on here, meanwhile
        release.set()
        assert (await reading).persona == "alice"
        assert len(reads) == 2 and await opted.get(3) is not None
        opted.set(1, None)  # /ambient off here
        assert await opted.get(1) is None

    asyncio.run(scenario())
