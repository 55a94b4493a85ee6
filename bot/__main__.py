"""`python -m bot`: run the Discord bot as a service. Without DISCORD_TOKEN it says so in one line and waits
(/readyz: not ready) instead of exiting, as `improbable bot --wait-without-token` (docker-compose.yml) does; a
start-up failure (a refused token, no route to Discord, a bad DISCORD_GATEWAY_URL) is one `error:` line, never
a traceback (bot/startup.py)."""

import sys

from bot.startup import run_bot

status, error = run_bot(wait_without_token=True)
if error:
    print(f"error: {error}", file=sys.stderr)
sys.exit(status)
