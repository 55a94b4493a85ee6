"""The bot and the service never import torch (they talk to the models only through Celery)."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
import bot.client, bot.chat, bot.generate, bot.jobs, bot.limits, bot.personas, bot.queue, bot.replies
import bot.schedules, bot.streaming, bot.training, bot.views, bot.console
import service.generation, service.personas, service.policy, service.schedules, service.training
from bot.client import ImprobableBot
from bot.jobs import Jobs
client = ImprobableBot()
assert len(list(client.tree.walk_commands())) >= 14
heavy = sorted(m for m in ("torch", "numpy", "trainer.model", "worker.tasks") if m in sys.modules)
print(",".join(heavy) or "clean")
"""


def test_bot_modules_do_not_import_torch():
    env = {"IMPROBABLE_BROKER_URL": "redis://127.0.0.1:1/0", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "clean"
