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
