"""The operator docs in README.md agree with the code: the permissions integer, the invite URL, metric names."""

from __future__ import annotations

import re

import discord

from core import metrics

from .deploytools import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
PERMISSIONS = ("view_channel", "send_messages", "send_messages_in_threads", "embed_links", "attach_files",
               "read_message_history")


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


def test_permissions_integer_and_invite_url():
    value = discord.Permissions(**dict.fromkeys(PERMISSIONS, True)).value
    setup = _section("Discord application setup")
    assert f"**{value}**" in setup
    assert ("https://discord.com/oauth2/authorize?client_id=<APP_ID>&scope=bot+applications.commands"
            f"&permissions={value}") in setup
    for row in re.findall(r"^\s*\| ([A-Z][^|]+?) \| [^|]+ \| (\d+) \| (\d+) \|$", setup, re.M):
        name, bit, shown = row
        flag = name.strip().lower().replace(" ", "_").replace("channels", "channel")
        assert getattr(discord.Permissions, flag).flag == int(shown) == 1 << int(bit), name
    assert "Message Content" in setup and "mention chat" in setup


def test_the_bot_asks_for_the_intents_the_readme_describes():
    from bot.client import intents

    value = intents()
    assert value.guilds and value.guild_messages and value.message_content
    assert not value.members and not value.presences  # the other privileged intents stay off


def test_metric_names_in_the_readme_exist():
    deployment = _section("Deployment")
    observability = deployment[deployment.index("### Observability"):]
    for name in re.findall(r"`(improbable_[a-z_]+)", observability):
        known = metrics.METRIC_NAMES + metrics.CLUSTER_METRIC_NAMES + ("improbable_build_info",)
        assert name in known, f"README names {name}, which no collector exports"
    for name in ("improbable_jobs_total", "improbable_queue_depth", "improbable_generate_latency_seconds",
                 "improbable_generate_tokens_per_second", "improbable_checkpoint_cache_requests_total",
                 "improbable_training_progress_ratio"):
        assert name in deployment
