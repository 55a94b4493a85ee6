"""`python -m bot`: run the Discord bot as a service. Without DISCORD_TOKEN it says so in one line and waits
(/readyz: not ready) instead of exiting, as `improbable bot --wait-without-token` (docker-compose.yml) does."""

import sys

from bot.client import main

sys.exit(main(wait_without_token=True))
