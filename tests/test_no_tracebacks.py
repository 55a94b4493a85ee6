"""The common misconfigurations, run as a user runs them (`improbable ...` as a subprocess): each ends with a
non-zero exit status and exactly one `error:` line that says what to do, never a Python traceback.

The bot's cases talk to a local fake Discord (tests/bot/fake_discord.py) that refuses the token (HTTP 401:
discord.LoginFailure) or closes the gateway with 4014 (discord.PrivilegedIntentsRequired), and to a closed
local port for "no network".
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web

from tests.bot.fake_discord import FakeDiscord, _json

ROOT = Path(__file__).resolve().parents[1]
IMPROBABLE = [sys.executable, "-c", "from improbable.cli import app; app()"]  # the `improbable` script's code


class RefusingDiscord(FakeDiscord):
    """A fake Discord that refuses the bot: `token` answers 401 to the login, `intents` closes the gateway
    with 4014 (disallowed intents) after the identify, as Discord does without Message Content enabled."""

    def __init__(self, refuse: str) -> None:
        super().__init__()
        self.refuse = refuse

    async def _route(self, method, p, *args):
        if self.refuse == "token" and p == ["users", "@me"]:
            return _json({"message": "401: Unauthorized", "code": 0}, 401)
        return await super()._route(method, p, *args)

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        if self.refuse != "intents":
            return await super()._gateway(request)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}, "s": None, "t": None}))
        async for msg in ws:
            if json.loads(msg.data).get("op") == 2:
                await asyncio.sleep(0.05)
                await ws.close(code=4014, message=b"Disallowed intent(s).")
                break
        return ws


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


@pytest.fixture
def env(tmp_path):
    """The caller's environment without any IMPROBABLE_/DISCORD_ settings, a fresh data dir, a clean cwd."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("IMPROBABLE_", "DISCORD_"))}
    clean.update(IMPROBABLE_DATA_DIR=str(tmp_path / "data"), PYTHONPATH=str(ROOT), COLUMNS="200",
                 IMPROBABLE_TORCH_THREADS="1")
    return clean


def run_fails_cleanly(args: list[str], env: dict, cwd: Path, *phrases: str, **extra: str) -> str:
    result = subprocess.run([*IMPROBABLE, *args], env={**env, **extra}, cwd=cwd, capture_output=True, text=True,
                            timeout=240)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out  # one clear message: the whole of it on one line
    for phrase in phrases:
        assert phrase in errors[0], f"{phrase!r} not in {errors[0]!r}"
    return errors[0]


@pytest.mark.parametrize("refuse, phrases", [
    ("token", ("refused the token", "Reset Token")),
    ("intents", ("Message Content intent", "Privileged Gateway Intents")),
])
def test_bot_refused_by_discord(refuse, phrases, env, tmp_path):
    fake = RefusingDiscord(refuse).start()
    try:
        run_fails_cleanly(["bot"], env, tmp_path, *phrases, **fake.env())
    finally:
        fake.stop()


def test_bot_without_network(env, tmp_path):
    base = f"http://127.0.0.1:{closed_port()}/api/v10"
    run_fails_cleanly(["bot"], env, tmp_path, "cannot reach Discord", base, DISCORD_TOKEN="x", DISCORD_API_BASE=base)


def test_bot_without_a_token(env, tmp_path):
    result = subprocess.run([*IMPROBABLE, "bot"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    out = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in out
    assert "DISCORD_TOKEN is not set" in out and "improbable chat" in out


def test_recipe_whose_corpus_is_missing(env, tmp_path):
    empty = tmp_path / "corpora"
    empty.mkdir()
    run_fails_cleanly(["train", "--recipe", "shakespeare", "--out", str(tmp_path / "run")], env, tmp_path,
                      "no corpus called 'shakespeare'", IMPROBABLE_CORPUS_PATH=str(empty))


def test_unknown_persona(env, tmp_path):
    run_fails_cleanly(["generate", "trumpp", "-p", "We will"], env, tmp_path, "trumpp", "alice", "trump")


def test_bad_checkpoint_path(env, tmp_path):
    run_fails_cleanly(["info", str(tmp_path / "nope.safetensors")], env, tmp_path, "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    run_fails_cleanly(["generate", str(junk)], env, tmp_path, "junk.safetensors")


def test_invalid_setting_value(env, tmp_path):
    run_fails_cleanly(["corpora"], env, tmp_path, "IMPROBABLE_LOG_LEVEL", IMPROBABLE_LOG_LEVEL="LOUD")
