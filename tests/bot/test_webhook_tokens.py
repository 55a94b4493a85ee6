"""A webhook's token never reaches the bot's log: discord.py's DEBUG lines carry it in URLs and answers."""

from __future__ import annotations

import logging

import bot.webhooks  # noqa: F401 - installs the filter


def test_discord_debug_lines_hide_webhook_tokens(caplog):
    caplog.set_level(logging.DEBUG)
    logging.getLogger("discord.http").debug("%s %s has received %s", "POST", "https://x/channels/1/webhooks",
                                            {"id": "5", "token": "s3cret-TOKEN_1.x"})
    logging.getLogger("discord.webhook.async_").debug("Webhook ID %s with %s %s has returned status code %s", 5,
                                                      "POST", "https://x/webhooks/5/s3cret-TOKEN_1.x?wait=1", 200)
    assert len(caplog.records) == 2 and "s3cret" not in caplog.text
    assert "webhooks/5/<token>?wait=1" in caplog.text and "'token': '<token>'" in caplog.text
