"""`python -m bot`: run the Discord bot (needs DISCORD_TOKEN)."""

import sys

from bot.client import main

sys.exit(main())
