"""The event-loop lag monitor (core.metrics.watch_event_loop): a callback that holds the loop shows as lag."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import REGISTRY

from core import metrics

NAME = "improbable_event_loop_lag_seconds"


def _samples() -> tuple[float, float]:
    """(samples in all, samples later than 0.25 s)."""
    count = REGISTRY.get_sample_value(f"{NAME}_count") or 0.0
    fast = REGISTRY.get_sample_value(f"{NAME}_bucket", {"le": "0.25"}) or 0.0
    return count, count - fast


def test_a_blocked_loop_is_recorded_as_lag():
    async def scenario() -> None:
        watch = asyncio.create_task(metrics.watch_event_loop(0.01))
        await asyncio.sleep(0.05)
        time.sleep(0.4)  # a handler that blocks the loop (a synchronous call)
        await asyncio.sleep(0.05)
        watch.cancel()

    count, slow = _samples()
    asyncio.run(scenario())
    after_count, after_slow = _samples()
    assert after_count - count >= 3  # sampled before, during and after
    assert after_slow - slow >= 1  # the sleep that spanned the blocking call woke ~0.4 s late
