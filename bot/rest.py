"""The bot's REST calls wait for the deployment's REST budget (core/ratelimit.py), shared with the workers.

discord.py sends every REST request, webhooks' included, through the one aiohttp session of the client's
HTTPClient, and takes an aiohttp TraceConfig for it (`http_trace`): before each request to the API the trace
waits for a token (and for any pause a 429 set, in any process), and after its answer it lets the budget learn
Discord's 429s and exhausted routes. discord.py's own per-route handling stays as it is; the gateway, the CDN
and interaction endpoints (callbacks, edits of a command's response and its follow-ups) are not counted.
"""

from __future__ import annotations

from collections.abc import Callable

import aiohttp

from core.ratelimit import RestBudget, budget_for, route_key
from core.settings import Settings


def budget_trace(settings: Settings, budget: RestBudget | None = None,
                 application_id: Callable[[], int | None] = lambda: None) -> aiohttp.TraceConfig:
    """A TraceConfig for discord.Client(http_trace=...) that holds the bot's REST requests to the budget;
    `application_id` gives the bot's (known once logged in), whose webhooks are interactions' own."""
    budget = budget or budget_for(settings)
    base = settings.discord_api_base.rstrip("/")

    def route_of(method: str, url) -> str | None:
        url = str(url)
        return route_key(method, url[len(base):], application_id()) if url.startswith(base + "/") else None

    async def on_start(_session, context, params: aiohttp.TraceRequestStartParams) -> None:
        context.route = route_of(params.method, params.url)
        context.counted = context.route is not None
        if context.counted:
            await budget.acquire_async(context.route)

    async def on_end(_session, context, params: aiohttp.TraceRequestEndParams) -> None:
        if getattr(context, "counted", False):
            await budget.observe_async(context.route, params.response.status, params.response.headers)

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    trace.on_request_end.append(on_end)
    return trace
