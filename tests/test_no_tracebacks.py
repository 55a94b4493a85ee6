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
    return fails_cleanly([*IMPROBABLE, *args], env, cwd, *phrases, **extra)


def fails_cleanly(command: list[str], env: dict, cwd: Path, *phrases: str, **extra: str) -> str:
    result = subprocess.run(command, env={**env, **extra}, cwd=cwd, capture_output=True, text=True, timeout=240)
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


@pytest.mark.parametrize("url, phrases", [
    ("not a url", ("DISCORD_GATEWAY_URL 'not a url' is not a gateway URL", "wss://")),
    ("ws://127.0.0.1:{port}/gateway", ("cannot reach the Discord gateway at ws://127.0.0.1:", "DISCORD_GATEWAY_URL")),
])
def test_bot_service_with_a_bad_gateway_url(url, phrases, env, tmp_path):
    """`python -m bot` (the service) stops with one line before it reaches Discord, not discord.py's connection
    retried every 5 s with a traceback each time."""
    fails_cleanly([sys.executable, "-m", "bot"], env, tmp_path, *phrases, DISCORD_TOKEN="x",
                  DISCORD_GATEWAY_URL=url.format(port=closed_port()))


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


# -- the console and the services: an expected failure is one line, never a traceback ------------------------

def chat_lines(env: dict, cwd: Path, line: str, **extra: str) -> tuple[int, list[str]]:
    result = subprocess.run([*IMPROBABLE, "chat", "-c", line], env={**env, **extra}, cwd=cwd, capture_output=True,
                            text=True, timeout=240)
    out = result.stdout + result.stderr
    assert "Traceback" not in out, out
    return result.returncode, out.splitlines()


@pytest.mark.parametrize("corpus, phrase", [
    (None, "There is no corpus called 'shakespeare'. No corpora are available."),
    ("x" * 20_000, "The text repeats itself"),
])
def test_console_retrain_whose_corpus_is_missing_or_unusable(corpus, phrase, env, tmp_path):
    folder = tmp_path / "corpora"
    folder.mkdir()
    if corpus is not None:
        (folder / "shakespeare.txt").write_text(corpus)
    status, lines = chat_lines(env, tmp_path, "/persona retrain shakespeare", IMPROBABLE_CORPUS_PATH=str(folder))
    assert status == 1, lines
    about = [line for line in lines if "failed" in line or "corpus" in line.lower() or "repeats" in line]
    assert len(about) == 1, lines  # the console's own line, no log line or worker traceback beside it
    assert about[0].startswith("! run 1 failed: ") and phrase in about[0], about
    assert "Error:" not in about[0], about  # the message, not the exception's class


DIVERGING_RUN = """
import random

import db, service.personas
from db.ingest import ingest
from db.personas import get_persona
from db.runs import create_run
from worker.training import train_run

service.personas.prepare_database()
rng = random.Random(0)
words = "the king queen speaks of love and war night day sword crown heart fair sweet death time lord".split()
text = "\\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))) + "." for _ in range(600))
with db.session_scope() as session:
    corpus = ingest(text.encode(), "poems.txt", session=session).corpus
with db.session_scope() as session:
    run = create_run(session, get_persona(session, "alice", None), corpus=corpus, config={
        "init": "", "n_layers": 1, "n_hidden": 16, "n_embd": 8, "batch_size": 4, "seq_len": 16, "dropout": 0.0,
        "eval_interval": 20, "patience": 0, "patience_epochs": 0, "max_steps": 50, "lr": float("inf"),
        "max_nan_restarts": 0})
print("summary:", train_run(run.id))
"""


def test_a_run_that_fails_in_training_is_one_line(env, tmp_path):
    """A real run whose loss diverges (an infinite learning rate): the run fails with its message, the task
    ends normally (a Celery worker logs no traceback for it), and nothing else is printed."""
    done = subprocess.run([sys.executable, "-c", DIVERGING_RUN], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=240)
    out = done.stdout + done.stderr
    assert done.returncode == 0 and "Traceback" not in out, out
    summary = [line for line in out.splitlines() if line.startswith("summary:")]
    assert len(summary) == 1 and "'status': 'failed'" in summary[0] and "loss became nan" in summary[0], out
    assert "TrainingDiverged" not in out, out


def _readyz(port: int) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


@pytest.mark.parametrize("command", [[sys.executable, "-m", "bot"], [*IMPROBABLE, "bot", "--wait-without-token"]],
                         ids=["python -m bot", "improbable bot --wait-without-token"])
def test_the_bot_service_waits_for_a_token(command, env, tmp_path):
    """The bot as a service (docker-compose.yml) without DISCORD_TOKEN: one line, /readyz says why, the process
    stays up (no exit for a restart policy to loop on) and stops cleanly when told to."""
    import time

    subprocess.run([sys.executable, "-m", "db", "upgrade"], env=env, cwd=tmp_path, check=True, capture_output=True,
                   timeout=120)
    port = closed_port()
    bot = subprocess.Popen(command, env={**env, "IMPROBABLE_METRICS_PORT": str(port)},
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while (ready := _readyz(port))[0] != 503 and time.monotonic() < deadline and bot.poll() is None:
            time.sleep(0.2)
        assert ready[0] == 503 and "DISCORD_TOKEN (not set)" in ready[1], ready
        time.sleep(2)
        assert bot.poll() is None, "the bot exited without a token"
    finally:
        bot.terminate()
        out = bot.communicate(timeout=30)[0]
    assert bot.returncode == 0, out
    assert "Traceback" not in out, out
    lines = [line for line in out.splitlines() if "DISCORD_TOKEN" in line]
    assert len(lines) == 1 and "docker compose up -d bot" in lines[0], out
    assert not [line for line in out.splitlines() if "WARNING" in line or "ERROR" in line and line not in lines], out
