"""Improbable: a Discord bot that talks in borrowed voices.

This package is the front door only: the `improbable` command (cli.py) and its health checks (health.py).
Nothing imports it; everything it starts lives in core, service, bot, worker, trainer and db.
"""

__version__ = "0.1.0"
