"""`python -m bot`: run the Discord bot, the deployment's service (docker-compose.yml). Without DISCORD_TOKEN
it says so in one line and waits (/readyz: not ready) instead of exiting; `improbable bot` exits instead."""

import sys

from bot.client import main

sys.exit(main(wait_without_token=True))
