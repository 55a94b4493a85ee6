"""Streaming edits are throttled and the last text always shows (bot/streaming.py)."""

from __future__ import annotations

import asyncio
import time

from bot import streaming
from bot.formatting import Rendered


class Recorder(streaming.Output):
    def __init__(self):
        self.edits: list[tuple[float, str, object]] = []

    async def edit(self, rendered, view=streaming.MISSING):
        self.edits.append((time.monotonic(), rendered.content, view))
        return 42

    async def error(self, message):
        self.edits.append((time.monotonic(), f"error: {message}", None))


def test_edits_are_spaced_and_the_final_text_wins(monkeypatch):
    monkeypatch.setattr(streaming, "MIN_EDIT_INTERVAL", 0.2)
    out = Recorder()

    async def go():
        s = streaming.Streamer(out, 0.2)
        for i in range(30):  # text arriving every 20 ms
            s.update(Rendered(f"part {i}"))
            await asyncio.sleep(0.02)
        return await s.finish(Rendered("final"), view="buttons")

    assert asyncio.run(go()) == 42
    times = [t for t, _, _ in out.edits]
    assert all(b - a >= 0.19 for a, b in zip(times, times[1:]))
    assert out.edits[-1][1:] == ("final", "buttons")
    assert 2 <= len(out.edits) <= 6  # 0.6 s of text: a few edits, not 30
    assert out.edits[0][1] == "part 0"  # the first text shows at once


def test_interval_has_a_floor_of_one_second():
    assert streaming.Streamer(Recorder(), 0.1).interval == 1.0


def test_stop_drops_pending_text(monkeypatch):
    monkeypatch.setattr(streaming, "MIN_EDIT_INTERVAL", 0.2)
    out = Recorder()

    async def go():
        s = streaming.Streamer(out, 0.2)
        s.update(Rendered("a"))
        await asyncio.sleep(0.01)
        s.update(Rendered("b"))  # waits for the interval
        await s.stop()
        await asyncio.sleep(0.3)

    asyncio.run(go())
    assert [c for _, c, _ in out.edits] == ["a"]


class SilentJobs:
    """A job client whose job streams some text, goes quiet, then is given up as stalled."""

    async def wait(self, job, on_progress, timeout=None):
        from bot.jobs import STALLED, JobStalled

        await on_progress("PROGRESS", {"text": " once upon"})
        await asyncio.sleep(0.25)
        await on_progress("STALLED", {"silent": 12})
        await asyncio.sleep(0.25)
        raise JobStalled(STALLED)


def test_a_quiet_generator_is_shown_then_the_end_is_explained(monkeypatch):
    from types import SimpleNamespace

    from service.generation import PreparedGeneration

    monkeypatch.setattr(streaming, "MIN_EDIT_INTERVAL", 0.2)
    monkeypatch.setattr(streaming.service.generation, "forget_in_flight", lambda task_id: None)
    bot = SimpleNamespace(settings=SimpleNamespace(bot_stream_interval=0.2), jobs=SilentJobs())
    request = PreparedGeneration({"persona": "alice", "prompt": "Alice", "params": {"seed": 1}}, "Alice", "Alice",
                                 "char-rnn")
    out = Recorder()
    gid = asyncio.run(streaming.follow_generation(bot, out, request, SimpleNamespace(id="t1"), None, user_id=None,
                                                  guild_id=None, refund=False))
    shown = [c for _, c, _ in out.edits]
    assert gid is None and shown[0].endswith("once upon ▌")
    assert "went quiet 12 s ago" in shown[1] and "once upon" in shown[1]
    assert shown[-1].startswith("error: The generator working on this stopped answering")
