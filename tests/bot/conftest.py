"""Fixtures for the bot's end-to-end tests: the real bot process (`python -m bot`) against a fake Discord,
with a real Redis (its own redis-server on a spare port), a real Celery worker and a SQLite database.

Everything is session-scoped and started once: the fake Discord, redis-server, a migrated database with a
tiny trained `alice` checkpoint, the worker and the bot. Tests use their own users/channels and never rely
on each other's state. Every subprocess is terminated at teardown (killed if it does not exit).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.environment import unavailable, wait_until

from .fake_discord import FakeDiscord

ROOT = Path(__file__).resolve().parents[2]
CORPORA = ROOT.parent / "shared" / "corpora"
if not CORPORA.is_dir():
    CORPORA = Path("/work/shared/corpora")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A subprocess with its output in a log file; stop() terminates it (then kills it)."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], logs: Path, cwd: Path):
        self.name, self.env = name, env
        self.log_path = logs / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - open as long as the process runs
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def log(self, tail: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def start_redis(logs: Path, name: str, port: int | None = None) -> tuple[Proc, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("redis-server is not installed")
    port = port or free_port()
    proc = Proc(name, [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                       "--dir", str(logs)], dict(os.environ), logs, logs)
    import redis

    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            if time.monotonic() > deadline or not proc.alive():
                proc.stop()
                raise RuntimeError(f"redis-server did not start:\n{proc.log()}") from None
            time.sleep(0.05)
    client.close()
    return proc, f"redis://127.0.0.1:{port}/0"


def clean_env(**extra: str) -> dict[str, str]:
    """os.environ without IMPROBABLE_/DISCORD_ variables of the caller, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMPROBABLE_", "DISCORD_"))}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


@dataclass
class Stack:
    fake: FakeDiscord
    env: dict[str, str]
    database_url: str
    storage_dir: Path
    logs: Path
    bot: Proc
    worker: Proc
    redis_url: str
    checkpoint_id: int

    def celery(self):
        """A Celery app on the test broker (for the test itself to enqueue, e.g. the schedule dispatcher)."""
        from core.settings import Settings
        from worker.app import make_app

        return make_app(Settings(broker_url=self.redis_url, _env_file=None))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> bytes:
    """A char-rnn 1x32 trained for 40 steps on 6 KB of Alice (a checkpoint file's bytes)."""
    from trainer.train import TrainConfig, train

    out = tmp_path_factory.mktemp("tiny-model")
    text = (CORPORA / "alice" / "alice.txt").read_text(encoding="utf-8")[:6000]
    config = TrainConfig(corpus="alice", out_dir=str(out), n_layers=1, n_hidden=32, n_embd=16, batch_size=8,
                         seq_len=32, max_steps=40, eval_interval=40, log_interval=40, warmup_steps=5, threads=1)
    train(config, text)
    return (out / "best.safetensors").read_bytes()


def install_checkpoint(database_url: str, storage_dir: Path, data: bytes, slug: str = "alice") -> int:
    """Store `data` as a finished run's best checkpoint of a built-in persona and make it active."""
    import db
    from db.checkpoints import save_checkpoint
    from db.personas import get_persona
    from db.runs import create_run, start_run, succeed_run

    engine = db.make_engine(database_url)
    try:
        with db.session_scope(engine) as session:
            persona = get_persona(session, slug, None)
            run = create_run(session, persona, recipe=persona.recipe)
            start_run(session, run)
            ckpt = save_checkpoint(session, db.Storage(str(storage_dir)), persona, run, "best", data,
                                   val_loss=3.1, activate=True)
            succeed_run(session, run, metrics={"val_loss": 3.1, "sample": "Alice was here."})
            return ckpt.id
    finally:
        engine.dispose()


def guild_limits(database_url: str, guild_id: int, **values) -> None:
    import db
    from db.guilds import update_guild_settings

    engine = db.make_engine(database_url)
    try:
        with db.session_scope(engine) as session:
            update_guild_settings(session, guild_id, **values)
    finally:
        engine.dispose()


def wait_worker(stack_celery, proc: Proc, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"the worker exited:\n{proc.log()}")
        replies = stack_celery.control.inspect(timeout=0.5).active_queues() or {}
        if any(q.get("name") == "generate" for qs in replies.values() for q in qs or ()):
            return
    raise RuntimeError(f"the worker did not become ready in {timeout} s:\n{proc.log()}")


# A bot whose command scope (global or one guild) differs from the last one synced against the same fake
# syncs at start-up even though its tree did not change (the fake forgets the other scope's commands).
RESYNC = {"IMPROBABLE_DISCORD_SYNC_ALWAYS": "true"}


def start_bot(fake: FakeDiscord, env: dict[str, str], logs: Path, name: str, *,
              synced_globally: bool = False) -> Proc:
    """The bot process, once connected. `synced_globally`: its commands work in every guild (as a public
    bot's do), not only the first; it is started once its guilds have reached its cache ('ready')."""
    bot_env = {**env, **fake.env(), "IMPROBABLE_METRICS_ADDR": "127.0.0.1"}
    bot_env.setdefault("IMPROBABLE_METRICS_PORT", str(free_port()))  # see messages_handled
    if synced_globally:
        bot_env.pop("DISCORD_SYNC_GUILD", None)
    proc = Proc(name, [sys.executable, "-m", "bot"], bot_env, logs, ROOT)
    try:
        fake.wait_for(lambda: fake.identify is not None and fake.commands or not proc.alive(), 60, "the bot to connect")
        if synced_globally:
            fake.wait_for(lambda: "ready as" in proc.log() or not proc.alive(), 60, "the bot ready in its guilds")
    except TimeoutError:
        proc.stop()
        raise RuntimeError(f"the bot did not connect:\n{proc.log()}") from None
    if not proc.alive():
        raise RuntimeError(f"the bot exited:\n{proc.log()}")
    return proc


def messages_handled(bot: Proc) -> int:
    """How many members' messages the bot has finished handling, whatever it did with them (its /metrics:
    improbable_bot_messages_total, less the messages of bots, webhooks and its own). A test that checks that
    nothing answers a message waits for this count to pass the message, instead of sleeping."""
    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://127.0.0.1:{bot.env['IMPROBABLE_METRICS_PORT']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    families = [f for f in text_string_to_metric_families(text) if f.name == "improbable_bot_messages"]
    return int(sum(s.value for f in families for s in f.samples
                   if s.name.endswith("_total") and s.labels["outcome"] != "bot"))


def wait_handled(bot: Proc, count: int, what: str) -> None:
    """Until the bot has finished handling `count` members' messages (see messages_handled)."""
    wait_until(lambda: messages_handled(bot) >= count, 60, what, poll=0.1)


def swap_bot(stack, name: str, *, synced_globally: bool = False, **settings: str) -> None:
    """Replace the stack's bot by one with these settings (IMPROBABLE_…) on top of the stack's, its commands
    synced afresh (the fake forgets the other scope's commands when the scope changes)."""
    stack.bot.stop()
    with stack.fake.cond:
        stack.fake.identify, stack.fake.commands = None, {}
    stack.bot = start_bot(stack.fake, {**stack.env, **RESYNC, **settings}, stack.logs, name,
                          synced_globally=synced_globally)


@pytest.fixture(scope="session")
def stack(tmp_path_factory, tiny_model):
    import db

    base = tmp_path_factory.mktemp("e2e")
    logs = base / "logs"
    logs.mkdir()
    storage_dir, data_dir = base / "storage", base / "data"
    database_url = f"sqlite:///{base / 'improbable.db'}"
    db.upgrade(database_url)
    fake = FakeDiscord().start()
    redis_proc, redis_url = start_redis(logs, "redis")
    procs: list[Proc] = [redis_proc]
    try:
        checkpoint_id = install_checkpoint(database_url, storage_dir, tiny_model)
        guild_limits(database_url, fake.guild_id, cooldown_seconds=0, train_cooldown_seconds=0,
                     max_queued_jobs_per_user=3, trainer_role_id=fake.trainer_role)
        env = clean_env(
            IMPROBABLE_DATABASE_URL=database_url, IMPROBABLE_STORAGE_URL=str(storage_dir),
            IMPROBABLE_DATA_DIR=str(data_dir), IMPROBABLE_BROKER_URL=redis_url,
            IMPROBABLE_CORPUS_PATH=str(CORPORA), IMPROBABLE_TORCH_THREADS="1",
            IMPROBABLE_PARTIAL_INTERVAL="0.2", IMPROBABLE_TRAIN_REPORT_SECONDS="0.5",
            IMPROBABLE_BOT_PROGRESS_INTERVAL="1", IMPROBABLE_BOT_STREAM_INTERVAL="1",
            IMPROBABLE_BOT_JOB_TIMEOUT="60", IMPROBABLE_GENERATE_TIMEOUT="30",
            # the tests' server has no cooldowns, answers every ambient chance and schedules every minute: the
            # deployment's ceilings allow it here (tests/service/test_quotas.py checks the defaults)
            IMPROBABLE_CEILING_MIN_COOLDOWN_SECONDS="0", IMPROBABLE_CEILING_MIN_TRAIN_COOLDOWN_SECONDS="0",
            IMPROBABLE_CEILING_AMBIENT_CHANCE="1", IMPROBABLE_CEILING_MIN_SCHEDULE_INTERVAL_SECONDS="60",
            IMPROBABLE_CEILING_JOBS_PER_SERVER="1000", IMPROBABLE_CEILING_TRAIN_MINUTES_PER_DAY="100000",
            IMPROBABLE_PICTURE_COOLDOWN_SECONDS="0",
            DISCORD_TOKEN="fake-token", DISCORD_API_BASE=fake.api_base)
        worker = Proc("worker", [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", "generate,train",
                                 "--pool", "threads", "-c", "4", "-n", "e2e@%h", "--without-gossip",
                                 "--without-mingle", "-l", "INFO"], env, logs, ROOT)
        procs.append(worker)
        bot = start_bot(fake, env, logs, "bot")
        procs.append(bot)
        s = Stack(fake, env, database_url, storage_dir, logs, bot, worker, redis_url, checkpoint_id)
        wait_worker(s.celery(), worker)
        yield s
        procs.append(s.bot)  # a test may have restarted it
    finally:
        for proc in reversed(procs):
            proc.stop()
        fake.stop()


@pytest.fixture
def e2e(stack, request):
    """The stack, checked after each test: no unknown routes or protocol violations at the fake, no edit of
    a message less than 1 s after the previous one, and the bot and worker still running."""
    fake = stack.fake
    with fake.cond:
        fake.errors.clear()
        start = len(fake.requests)
    yield stack
    problems = list(fake.errors)
    with fake.cond:
        fake.errors.clear()
        recorded = fake.requests[start:]
    edits: dict[str, list[float]] = {}
    for r in recorded:
        if r.method == "PATCH" and "/messages/" in r.path:
            edits.setdefault(r.path, []).append(r.at)
    for path, times in edits.items():
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        if any(g < 0.9 for g in gaps):
            problems.append(f"edits of {path} closer than 1 s: {[round(g, 2) for g in gaps]}")
    for r in recorded:
        body = r.json if isinstance(r.json, dict) else {}
        data = body.get("data", body) if r.path.endswith("/callback") else body
        if isinstance(data, dict) and data.get("content") and data.get("allowed_mentions", {}).get("parse") != []:
            problems.append(f"{r.method} {r.path} sent content without AllowedMentions.none(): {data}")
    for proc in (stack.bot, stack.worker):
        if not proc.alive():
            problems.append(f"{proc.name} died:\n{proc.log()}")
    if problems:
        pytest.fail("\n".join(problems) + f"\n--- bot log ---\n{stack.bot.log()}", pytrace=False)
