"""Discord's global rate limit against one REST budget: the fake Discord answers 429 (Retry-After, `global`)
past its limit and counts them; the bot's discord.py HTTP client (through bot/rest.py's trace) and a worker's
scheduled-post requests (worker/schedules.py), sharing the budget through the real Redis, send as fast as they
can and get no 429; without the bucket the same traffic is answered 429s."""

from __future__ import annotations

import asyncio
import os
import threading

import discord
import pytest

from core.ratelimit import PREFIX
from tests.environment import configured, reachable_redis

from .fake_discord import FakeDiscord

REDIS_URL = os.environ.get("IMPROBABLE_TEST_RATELIMIT_REDIS_URL", "redis://127.0.0.1:6379/7")
LIMIT = 25  # the fake's requests a second (Discord's is 50)
WORKER_POSTS, BOT_POSTS = (3, 10), 20  # (threads, posts each) of the worker; posts of the bot


@pytest.fixture
def fake():
    client = reachable_redis(REDIS_URL)
    fake = FakeDiscord().start()
    fake.rate_limit = LIMIT
    saved_base = discord.http.Route.BASE
    yield fake
    discord.http.Route.BASE = saved_base
    fake.stop()
    for key in client.scan_iter(match=PREFIX + "*"):
        client.delete(key)
    client.close()


def _worker_posts(channel_id: int, errors: list) -> int:
    from worker.schedules import post_message

    ids: list[int] = []

    def post(n: int) -> None:
        for _ in range(WORKER_POSTS[1]):
            try:
                ids.append(post_message(channel_id, f"scheduled {n}"))
            except Exception as e:  # noqa: BLE001 - counted by the caller
                errors.append(e)

    threads = [threading.Thread(target=post, args=(n,)) for n in range(WORKER_POSTS[0])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return len(ids)


async def _bot_posts(fake: FakeDiscord, errors: list) -> int:
    """BOT_POSTS messages sent at once by discord.py's HTTPClient, with the trace the bot gives it."""
    from bot.rest import budget_trace
    from core.settings import get_settings

    discord.http.Route.BASE = fake.api_base  # (what bot.client.point_discord_at does)
    http = discord.http.HTTPClient(asyncio.get_running_loop(), http_trace=budget_trace(get_settings()))
    await http.static_login("fake-token")
    route = discord.http.Route("POST", "/channels/{channel_id}/messages", channel_id=fake.channel_id)
    try:
        sent = await asyncio.gather(*(http.request(route, json={"content": f"bot {i}"}) for i in range(BOT_POSTS)),
                                    return_exceptions=True)
    finally:
        await http.close()
    errors += [e for e in sent if isinstance(e, BaseException)]
    return len(sent) - len(errors)


def _traffic(fake: FakeDiscord, rate: str) -> tuple[int, list]:
    """Both sides at once through a budget of `rate` a second (burst 4): (messages posted, errors)."""
    env = {**fake.env(), "IMPROBABLE_DISCORD_TOKEN": "fake-token", "IMPROBABLE_BROKER_URL": REDIS_URL,
           "IMPROBABLE_DISCORD_REST_RATE": rate, "IMPROBABLE_DISCORD_REST_BURST": "4"}
    errors: list = []
    with configured(env):
        result: dict[str, int] = {}
        bot = threading.Thread(target=lambda: result.update(bot=asyncio.run(_bot_posts(fake, errors))))
        bot.start()
        posted = _worker_posts(fake.channel_id, errors)
        bot.join(60)
    return posted + result.get("bot", 0), errors


def test_the_bot_and_the_workers_share_one_budget_under_discords_limit(fake):
    total = WORKER_POSTS[0] * WORKER_POSTS[1] + BOT_POSTS
    assert _traffic(fake, str(LIMIT - 6)) == (total, [])  # rate 19 + burst 4 < 25 in any second
    assert fake.rate_limited == 0
    assert len(fake.channel_messages(fake.channel_id)) == total
    # the control: no bucket, the same traffic is answered 429s (waited out and retried, a few times)
    _traffic(fake, "0")
    assert fake.rate_limited > 0
    assert not fake.errors, fake.errors


def test_the_fake_answers_like_discord_past_its_limit(fake):
    import json
    import urllib.error
    import urllib.request

    statuses, answers = [], []
    for i in range(LIMIT + 3):
        request = urllib.request.Request(f"{fake.api_base}/channels/{fake.channel_id}/messages", method="POST",
                                         data=json.dumps({"content": str(i)}).encode(),
                                         headers={"Authorization": "Bot x", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                statuses.append(response.status)
        except urllib.error.HTTPError as e:
            statuses.append(e.code)
            answers.append((dict(e.headers), json.loads(e.read())))
    assert statuses.count(200) == LIMIT and statuses.count(429) == 3 == fake.rate_limited
    headers, body = answers[0]
    assert body["global"] is True and 0 < body["retry_after"] <= 1
    assert headers["X-RateLimit-Global"] == "true" and headers["X-RateLimit-Scope"] == "global"
    assert float(headers["Retry-After"]) == body["retry_after"] and headers["Via"]


def test_the_bot_sends_its_requests_through_the_budget():
    from bot.client import ImprobableBot
    from core.settings import Settings

    trace = ImprobableBot(Settings(_env_file=None)).http.http_trace  # what its aiohttp session is built with
    assert trace is not None and [f.__qualname__ for f in trace.on_request_start] == ["budget_trace.<locals>.on_start"]
