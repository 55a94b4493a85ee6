"""The bot's start-up failures (`improbable bot`, `python -m bot`) as one line that says what to do, instead of
discord.py's traceback.

The common ones: a wrong or revoked token (LoginFailure), the Message Content intent not enabled in the
developer portal (PrivilegedIntentsRequired), no route to Discord (a connection error), a DISCORD_GATEWAY_URL
that is no gateway URL or cannot be reached (bot.client.StartupProblem), a database that cannot be reached.
Anything else still says what it was and how to see the details.
"""

from __future__ import annotations

import asyncio
import logging

PORTAL = "https://discord.com/developers/applications"


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def explain(error: BaseException, api_base: str) -> str | None:
    """The line to print for a start-up failure, or None for an error that is not a known start-up one."""
    import aiohttp
    import discord

    from bot.client import StartupProblem

    if isinstance(error, StartupProblem):  # its message is the whole line
        return str(error)
    if isinstance(error, discord.LoginFailure):
        return (f"Discord refused the token in DISCORD_TOKEN ({_one_line(error)}): copy it again from {PORTAL} "
                "→ your application → Bot → Reset Token")
    if isinstance(error, discord.PrivilegedIntentsRequired):
        return (f"Discord refused the connection: the bot needs the Message Content intent; enable it at {PORTAL} "
                "→ your application → Bot → Privileged Gateway Intents, then start the bot again")
    if isinstance(error, aiohttp.ClientError | OSError | asyncio.TimeoutError):
        return (f"cannot reach Discord at {api_base} ({_one_line(error)}): check the network connection, "
                "or DISCORD_API_BASE / DISCORD_GATEWAY_URL if you set them")
    if isinstance(error, discord.HTTPException):
        return f"Discord answered {error.status} while starting ({_one_line(error)}): try again in a minute"
    # the database's errors, told by their class (the bot reaches the database only through the service)
    if any(cls.__module__.startswith("sqlalchemy.") for cls in type(error).__mro__):
        return (f"cannot use the database ({_one_line(error)[:200]}): check IMPROBABLE_DATABASE_URL, "
                "and that `python -m db upgrade` has run")
    return None


def run_bot(wait_without_token: bool = False) -> tuple[int, str | None]:
    """Run the bot; (exit status, the error line or None)."""
    from bot.client import main as bot_main
    from core.settings import get_settings

    try:
        return bot_main(wait_without_token=wait_without_token), None
    except KeyboardInterrupt:
        return 130, None
    except Exception as e:  # one line for the user; the details are a log level away
        logging.getLogger(__name__).debug("the bot stopped", exc_info=True)
        line = explain(e, get_settings().discord_api_base)
        if line is None:
            line = (f"the bot stopped: {type(e).__name__}: {_one_line(e)[:300]} "
                    "(run with IMPROBABLE_LOG_LEVEL=DEBUG for the details)")
        return 1, line
