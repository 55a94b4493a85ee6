"""Load simulation: one real bot process (`python -m bot`) against the fake Discord announcing thousands of
servers, a realistic mix of events at rising rates, then generation throughput with 1, 2 and 4 generate
workers (separate processes, as separate hosts would be).

    nice -n 5 python -m bench.speed.load --guilds 1000                 # about 2 minutes
    nice -n 5 python -m bench.speed.load --guilds 10000                # about 5 minutes, generation first
    nice -n 5 python -m bench.speed.load --guilds 10000 --rates 200 400 --workers

What runs: redis-server on a spare port, a fresh schema in the local PostgreSQL (SQLite when it is unreachable
or --postgres is empty), a tiny char-RNN (1x32, 40 steps on Alice, as the e2e tests train it: the point is the
pipeline, the bot and the queue, not the model), one generate worker (celery, threads pool) during the rates,
and the bot with a production configuration (default cooldowns, ceilings and REST budget; commands synced
globally) against tests/bot/fake_load.FakeLoad: --channels text channels per server, ambient replies on in one
channel of --ambient-share of the servers (chance 0.02, cooldown 60 s), and as many shards as Discord would
recommend (one per 1,000 servers; --shards) when the fake and the bot shard.

The mix (MIX): members' messages in ambient channels 60 %, other chatter 30 %, mentions of the bot 3 %,
/generate 3 %, /personas 2 %, clicks on a result's Info button 2 %.

Measured: start-up (process start to the bot's "ready as … in N guild(s)" line: imports, database, command
sync, an IDENTIFY per shard — discord.py waits 5 s between two, as Discord allows one a 5 s — and every
GUILD_CREATE handled); RSS at ready and at the end; per rate: events sent and received by the bot
(`improbable_bot_gateway_events_total`), the event loop's lag p50/p99 over the step
(`improbable_event_loop_lag_seconds`, interpolated in its buckets) and the share of its samples ≤ 100 ms, the
time to each interaction's first response (Discord gives up after 3 s), finished texts and their p95, and
errors (protocol errors at the fake, interactions never answered, ERROR lines in the bot's log, interactions
the bot counted as failed). Generation: --gen-concurrency members each sending /generate (120 characters) and
waiting for the finished text, for --gen-seconds per worker count: texts per second, p50 and p95.

Targets at 10,000 servers in one process: RSS ≤ 1.5 GB, start-up ≤ 60 s, event-loop lag p99 ≤ 100 ms at
≥ 200 events/s. The host is shared: the fake Discord, this driver, Redis, PostgreSQL and the workers run on
the same cores as the bot, so the lag figures are an upper bound; `uptime` at start and end is in the JSON.
Writes bench/results/load.json (a run per server count, kept across invocations).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import RESULTS, ROOT, print_table
from bench.speed.queue_load import percentile, postgres_schema
from tests.bot.conftest import CORPORA, Proc, clean_env, free_port, install_checkpoint, start_redis
from tests.bot.fake_discord import API, custom_ids, opt
from tests.bot.fake_load import RESULT_BUTTON, FakeLoad

TARGETS = {"guilds": 10_000, "rss_mb": 1536, "startup_s": 60.0, "lag_p99_ms": 100.0, "at_events_per_s": 200}
MIX = (("ambient", 60), ("chatter", 30), ("mention", 3), ("generate", 3), ("personas", 2), ("click", 2))
MIXES = {"realistic": MIX, "chatter": (("chatter", 100),)}  # chatter: members' messages only, nothing to answer
AMBIENT = {"persona_slug": "alice", "chance": 0.02, "cooldown_seconds": 60}
WORDS = ("the cat is on the keyboard again", "anyone up for a raid tonight", "who ate my pizza", "nice one",
         "did you see the match", "I think it will rain", "new patch notes are out", "good morning everyone",
         "lol", "this channel is so quiet", "what are we playing later", "the queen was not amused")
# a do-nothing process beside the bot, sampling its own event loop's lag as the bot's monitor does: how late
# the shared host alone wakes a process at the same niceness (what part of the bot's lag is the host's)
CONTROL = ("import asyncio\n"
           "async def main():\n"
           "    loop = asyncio.get_running_loop()\n"
           "    while True:\n"
           "        start = loop.time()\n"
           "        await asyncio.sleep(0.1)\n"
           "        print(round(max(0.0, loop.time() - start - 0.1), 5), flush=True)\n"
           "asyncio.run(main())\n")
READY = re.compile(r"ready as .* in (\d+) guild")
FIRST_SHARD = re.compile(r"shard \d+ of \d+ ready")
AN_ID = re.compile(r"/(\d+|tok-[^/]+)")  # a snowflake or an interaction's token in a REST path
ERROR_LINE = re.compile(r"\b(ERROR|CRITICAL)\b|Traceback")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--guilds", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--rates", type=float, nargs="*", default=[50, 100, 200, 400],
                        help="events a second (none: start-up and memory only)")
    parser.add_argument("--step-seconds", type=float, default=15.0)
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2, 4],
                        help="generate worker processes, measured at the largest --guilds (none: skipped)")
    parser.add_argument("--gen-seconds", type=float, default=20.0)
    parser.add_argument("--gen-concurrency", type=int, default=32)
    parser.add_argument("--worker-threads", type=int, default=8, help="celery -c of each generate worker")
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--members", type=int, default=5, help="members announced per server besides owner and bot")
    parser.add_argument("--ambient-share", type=float, default=0.5)
    parser.add_argument("--shards", type=int, default=0, help="shards the fake recommends (0: one per 1,000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--mix", choices=sorted(MIXES), default="realistic")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for the bot and the workers (e.g. IMPROBABLE_DISCORD_REST_RATE=0)")
    parser.add_argument("--label", default="", help="appended to the run's key in the JSON (a variant's run)")
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--out", type=Path, default=RESULTS / "load.json")
    parser.add_argument("--logs", type=Path, default=Path(tempfile.gettempdir()) / "improbable-load",
                        help="the processes' logs (emptied first)")
    return parser.parse_args()


# -- the stack --------------------------------------------------------------------------------------------

@dataclass
class Stack:
    fake: FakeLoad
    env: dict[str, str]
    logs: Path
    redis_url: str
    metrics_port: int
    workers: list[Proc] = field(default_factory=list)
    bot: Proc | None = None
    control: Proc | None = None

    def stop(self) -> None:
        for proc in [self.bot, self.control, *self.workers]:
            if proc is not None:
                proc.stop()
        self.bot, self.control, self.workers = None, None, []


def tiny_model(work: Path) -> bytes:
    """The e2e tests' model: a char-RNN 1x32 trained for 40 steps on 6 KB of Alice."""
    from trainer.train import TrainConfig, train

    text = (CORPORA / "alice" / "alice.txt").read_text(encoding="utf-8")[:6000]
    config = TrainConfig(corpus="alice", out_dir=str(work), n_layers=1, n_hidden=32, n_embd=16, batch_size=8,
                         seq_len=32, max_steps=40, eval_interval=40, log_interval=40, warmup_steps=5, threads=1)
    train(config, text)
    return (work / "best.safetensors").read_bytes()


def prepare_database(database_url: str, storage: Path, model: bytes, fake: FakeLoad, share: float) -> int:
    """Schema, the model as alice's checkpoint, ambient replies in the first channel of `share` of the servers;
    returns how many servers have them."""
    import db
    from db.models import AmbientChannel

    db.upgrade(database_url)
    install_checkpoint(database_url, storage, model)
    with_ambient = fake.load_guilds[:round(share * len(fake.load_guilds))]
    engine = db.make_engine(database_url)
    try:
        with db.session_scope(engine) as session:
            session.add_all(AmbientChannel(channel_id=g.channels[0].id, guild_id=g.id, **AMBIENT) for g in with_ambient)
    finally:
        engine.dispose()
    return len(with_ambient)


def start_workers(stack: Stack, count: int, threads: int) -> None:
    """`count` generate workers, each its own process (as on separate hosts), ready to consume."""
    from core.settings import Settings
    from worker.app import make_app

    names = [f"load{i}@bench" for i in range(len(stack.workers), len(stack.workers) + count)]
    for name in names:
        cmd = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", "generate", "--pool", "threads",
               "-c", str(threads), "-n", name, "--without-gossip", "--without-mingle", "-l", "WARNING"]
        stack.workers.append(Proc(name.split("@")[0], cmd, stack.env, stack.logs, ROOT))
    app = make_app(Settings(broker_url=stack.redis_url, _env_file=None))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        answered = {n for reply in app.control.ping(destination=names, timeout=1.0) for n in reply}
        if answered >= set(names):
            return
        dead = [w.name for w in stack.workers if not w.alive()]
        if dead:
            raise RuntimeError(f"worker(s) {dead} exited:\n{stack.workers[-1].log()}")
    raise TimeoutError(f"workers {names} did not answer in 120 s")


def purge_queues(stack: Stack) -> int:
    """Drop the jobs waiting in the broker's queues; how many there were."""
    from core.settings import Settings
    from worker.app import make_app

    return make_app(Settings(broker_url=stack.redis_url, _env_file=None)).control.purge() or 0


def stop_workers(stack: Stack) -> None:
    for proc in stack.workers:
        proc.stop()
    stack.workers = []


def start_bot(stack: Stack) -> dict:
    """The bot process; returns its start-up: seconds to the first IDENTIFY and to 'ready', RSS at ready."""
    fake = stack.fake
    env = {**stack.env, "IMPROBABLE_METRICS_PORT": str(stack.metrics_port)}
    started = time.monotonic()
    stack.bot = proc = Proc("bot", [sys.executable, "-m", "bot"], env, stack.logs, ROOT)
    identified = first_shard = None
    while True:
        if identified is None and fake.identify is not None:
            identified = time.monotonic() - started
        text = proc.log(tail=20_000)
        if first_shard is None and FIRST_SHARD.search(text):
            first_shard = time.monotonic() - started
        match = READY.search(text)
        if match:
            ready = time.monotonic() - started
            break
        if not proc.alive() or time.monotonic() - started > 600:
            raise RuntimeError(f"the bot did not get ready:\n{proc.log()}")
        time.sleep(0.05)
    rss, peak = memory_mb(proc.proc.pid)
    shards = len(getattr(fake, "identifies", {})) or 1
    return {"startup_s": round(ready, 2), "to_first_identify_s": round(identified or ready, 2),
            "identify_to_ready_s": round(ready - (identified or ready), 2), "shards": shards,
            "first_shard_ready_s": round(first_shard or ready, 2),
            "identify_waits_s": 5.0 * (shards - 1), "guilds_ready": int(match.group(1)),
            "rss_mb_at_ready": rss, "peak_rss_mb_at_ready": peak}


# -- measuring --------------------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used, from /proc."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mb(pid: int) -> tuple[float, float]:
    """(resident, peak resident) of a process in MB, from /proc."""
    values = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return round(values["VmRSS"], 1), round(values["VmHWM"], 1)


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """The bot's /metrics as {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def counter(metrics: dict, name: str, **labels) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in metrics.items() if n == name and wanted <= set(ls))


def redis_calls(redis_url: str) -> dict[str, int]:
    """Commands Redis has run since it started, by name (INFO commandstats): the bot's round trips, the
    workers' and the broker's together."""
    import redis

    stats = redis.Redis.from_url(redis_url).info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def lag_stats(before: dict, after: dict) -> dict:
    """p50/p99 of the event-loop lag samples taken between two scrapes (linear inside a bucket, as
    Prometheus' histogram_quantile), and the share of them ≤ 100 ms."""
    name = "improbable_event_loop_lag_seconds_bucket"
    buckets = sorted((float(dict(ls)["le"]), after[(n, ls)] - before.get((n, ls), 0.0))
                     for (n, ls) in after if n == name)
    total = buckets[-1][1]
    if not total:
        return {"lag_samples": 0}

    def quantile(q: float) -> float:
        rank, low, below = q * total, 0.0, 0.0
        for le, count in buckets:
            if count >= rank:
                return low if math.isinf(le) else low + (le - low) * (rank - below) / max(count - below, 1e-9)
            low, below = le, count
        return low

    within = next(c for le, c in buckets if le >= 0.1)
    return {"lag_samples": int(total), "lag_p50_ms": round(quantile(0.5) * 1000, 1),
            "lag_p99_ms": round(quantile(0.99) * 1000, 1), "lag_le_100ms_pct": round(100 * within / total, 2)}


def storage_sizes(database_url: str, redis_url: str) -> dict:
    """Rows and bytes (table, indexes and TOAST) of every table in the run's PostgreSQL schema, and Redis's
    memory and keys: what a server's data costs, for docs/scaling.md."""
    import redis
    from sqlalchemy import text

    import db
    from db.models import Base

    out: dict = {"redis": {}, "tables": {}}
    info = redis.Redis.from_url(redis_url).info()
    out["redis"] = {"used_memory_bytes": info["used_memory"], "keys": info.get("db0", {}).get("keys", 0)}
    if not database_url.startswith("postgresql"):
        return out
    engine = db.make_engine(database_url)
    try:
        with engine.connect() as conn:
            for name in Base.metadata.tables:
                rows = conn.execute(text(f'SELECT count(*) FROM "{name}"')).scalar()
                size = conn.execute(text(f"SELECT pg_total_relation_size('\"{name}\"')")).scalar()
                if rows:
                    out["tables"][name] = {"rows": rows, "bytes": size, "bytes_per_row": round(size / rows)}
    finally:
        engine.dispose()
    return out


def log_errors(proc: Proc, since: int) -> tuple[int, list[str], int]:
    """(error lines in the bot's log after byte `since`, the first few, the log's length now)."""
    data = proc.log_path.read_bytes()
    lines = [line for line in data[since:].decode(errors="replace").splitlines() if ERROR_LINE.search(line)]
    return len(lines), lines[:5], len(data)


def global_requests(fake: FakeLoad, since: int) -> int:
    """REST requests after the `since`-th that count against Discord's global 50 a second: all but the
    interaction endpoints (the callback, and the webhook routes of the interaction's token)."""
    exempt = (f"{API}/interactions/", f"{API}/webhooks/{fake.app_id}/")
    return sum(1 for r in fake.requests[since:] if not r.path.startswith(exempt) and not r.path.startswith("/cdn/"))


def requests_by_route(fake: FakeLoad, since: int, top: int = 8) -> dict[str, int]:
    """The REST requests after the `since`-th by method and path with ids and tokens left out, most first."""
    routes = collections.Counter(r.method + " " + AN_ID.sub("/{id}", r.path) for r in fake.requests[since:])
    return dict(routes.most_common(top))


def pct(values: list[float], q: float) -> float | None:
    return round(percentile(values, q), 3) if values else None


# -- driving: coroutines on the fake's loop ---------------------------------------------------------------

@dataclass
class Traffic:
    fake: FakeLoad
    rng: random.Random
    ambient: list[int]  # channels with ambient replies on
    quiet: list[int]  # the other channels
    mix: tuple = MIX

    def text(self) -> str:
        return self.rng.choice(WORDS)

    async def one(self, kind: str) -> str:
        fake, rng = self.fake, self.rng
        user = rng.choice(fake.pool)
        if kind == "click" and fake.results:
            msg = rng.choice(fake.results)
            await fake.send_click(kind, msg, next(c for c in custom_ids(msg) if c.startswith(RESULT_BUTTON)), user)
        elif kind == "ambient":
            await fake.send_message(kind, rng.choice(self.ambient), user, self.text())
        elif kind == "mention":
            await fake.send_message(kind, rng.choice(self.quiet), user, f"<@{fake.app_id}> alice: {self.text()}",
                                    mention_bot=True)
        elif kind == "generate":
            await fake.send_slash(kind, "generate", self.generate_options(), user, rng.choice(self.quiet))
        elif kind == "personas":
            await fake.send_slash(kind, "personas", [], user, rng.choice(self.quiet))
        else:
            kind = "chatter"
            await fake.send_message(kind, rng.choice(self.quiet), user, self.text(), track=False)
        return kind

    def generate_options(self) -> list[dict]:
        return [opt("persona", "alice"), opt("prompt", self.text()), opt("length", 120)]

    async def drive(self, rate: float, seconds: float) -> tuple[collections.Counter, float]:
        """Events at `rate` a second for `seconds`, kinds drawn by the mix."""
        loop = asyncio.get_running_loop()
        kinds, weights = zip(*self.mix)
        sent: collections.Counter = collections.Counter()
        start, i = loop.time(), 0
        while loop.time() - start < seconds:
            due = start + i / rate
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            sent[await self.one(self.rng.choices(kinds, weights)[0])] += 1
            i += 1
        return sent, loop.time() - start

    async def closed_loop(self, concurrency: int, seconds: float, timeout: float = 30.0) -> dict:
        """`concurrency` members each sending /generate and waiting for its finished text, for `seconds`."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        latencies: list[float] = []
        failed = 0

        async def member() -> None:
            nonlocal failed
            while loop.time() - start < seconds:
                future = await self.fake.send_slash("generate", "generate", self.generate_options(),
                                                    self.rng.choice(self.fake.pool), self.rng.choice(self.quiet),
                                                    wait=True)
                try:
                    delay = await asyncio.wait_for(future, timeout)
                except TimeoutError:
                    self.fake.forget(future)
                    delay = None
                if delay is None:
                    failed += 1
                else:
                    latencies.append(delay)

        await asyncio.gather(*(member() for _ in range(concurrency)))
        return {"latencies": latencies, "failed": failed, "elapsed": loop.time() - start}

# -- one step of load, the generation phase ---------------------------------------------------------------

def step(stack: Stack, traffic: Traffic, rate: float, seconds: float, grace: float = 5.0) -> dict:
    """`rate` events a second for `seconds`; lag over the step, answers `grace` seconds after it."""
    fake, bot = stack.fake, stack.bot
    marks = (len(fake.errors), len(fake.acks), len(fake.finished), len(fake.sent_interactions), len(fake.requests))
    errors_before, _, log_at = log_errors(bot, bot.log_path.stat().st_size)
    before, cpu, own = scrape(stack.metrics_port), cpu_seconds(bot.proc.pid), cpu_seconds(os.getpid())
    calls = redis_calls(stack.redis_url)
    control_at = stack.control.log_path.stat().st_size
    sent, elapsed = fake.run_on_loop(traffic.drive(rate, seconds)).result(seconds + 120)
    after, cpu, own = scrape(stack.metrics_port), cpu_seconds(bot.proc.pid) - cpu, cpu_seconds(os.getpid()) - own
    calls = {k: v - calls.get(k, 0) for k, v in redis_calls(stack.redis_url).items() if v > calls.get(k, 0)}
    written = stack.control.log_path.read_bytes()[control_at:]
    host_lag = [float(x) for x in written[:written.rfind(b"\n") + 1].decode().split()]
    time.sleep(grace)
    acks = [t for _, t in fake.acks[marks[1]:]]
    finished = [t for _, t in fake.finished[marks[2]:]]
    unanswered = sum(1 for ix in fake.sent_interactions[marks[3]:] if not ix.acks)
    n_log_errors, first_errors, _ = log_errors(bot, log_at)
    received = sum(counter(after, "improbable_bot_gateway_events_total", event=e)
                   - counter(before, "improbable_bot_gateway_events_total", event=e)
                   for e in ("MESSAGE_CREATE", "INTERACTION_CREATE"))
    failed = counter(after, "improbable_bot_interactions_total", outcome="error") \
        - counter(before, "improbable_bot_interactions_total", outcome="error")
    fake_errors = fake.errors[marks[0]:]
    row = {"rate": rate, "events_sent": sum(sent.values()), "sent_per_s": round(sum(sent.values()) / elapsed, 1),
           "events_received": int(received), "bot_cpu_pct": round(100 * cpu / elapsed, 1),
           "bot_cpu_ms_per_event": round(1000 * cpu / max(received, 1), 2),
           "fake_cpu_pct": round(100 * own / elapsed, 1), "load_average": os.getloadavg()[0],
           **lag_stats(before, after),
           "host_lag_p99_ms": round(1000 * percentile(host_lag, 99), 1) if host_lag else None,
           "ack_p50_s": pct(acks, 50), "ack_p99_s": pct(acks, 99), "interactions": len(acks) + unanswered,
           "texts_finished": len(finished), "text_p95_s": pct(finished, 95),
           "rest_requests": len(fake.requests) - marks[4],
           "rest_global_per_s": round(global_requests(fake, marks[4]) / (elapsed + grace), 1),
           "rest_by_route": requests_by_route(fake, marks[4]),
           "errors": len(fake_errors) + unanswered + n_log_errors + int(failed),
           "error_detail": {"fake": fake_errors[:5], "unanswered_interactions": unanswered,
                            "bot_log": first_errors, "bot_log_lines": n_log_errors,
                            "interactions_failed": int(failed)},
           "redis_calls_per_s": {k: round(v / elapsed, 1) for k, v in sorted(calls.items(), key=lambda kv: -kv[1])},
           "rest_held_back": int(counter(after, "improbable_discord_rest_wait_seconds_count")
                                 - counter(before, "improbable_discord_rest_wait_seconds_count")),
           "sent_by_kind": dict(sent), "refused": int(counter(after, "improbable_bot_interactions_total",
                                                              outcome="refused")
                                                      - counter(before, "improbable_bot_interactions_total",
                                                                outcome="refused"))}
    print(f"  {rate:>5.0f}/s: sent {row['sent_per_s']}/s, received {row['events_received']}, lag p99 "
          f"{row.get('lag_p99_ms')} ms, ack p99 {row['ack_p99_s']} s, errors {row['errors']}", flush=True)
    return row


def generation(stack: Stack, traffic: Traffic, args: argparse.Namespace) -> list[dict]:
    """Texts per second and p50/p95 with each count of generate workers (a fixed /generate loop)."""
    rows = []
    for count in args.workers:
        stop_workers(stack)
        purged = purge_queues(stack)  # what earlier load left queued (its members have long given up)
        start_workers(stack, count, args.worker_threads)
        fake = stack.fake
        fake.run_on_loop(traffic.closed_loop(args.gen_concurrency, 3.0)).result(120)  # checkpoint loads
        before, cpu = scrape(stack.metrics_port), cpu_seconds(stack.bot.proc.pid)
        workers_cpu = sum(cpu_seconds(w.proc.pid) for w in stack.workers)
        out = fake.run_on_loop(traffic.closed_loop(args.gen_concurrency, args.gen_seconds)).result(
            args.gen_seconds + 120)
        lag = lag_stats(before, scrape(stack.metrics_port))
        cpu = cpu_seconds(stack.bot.proc.pid) - cpu
        workers_cpu = sum(cpu_seconds(w.proc.pid) for w in stack.workers) - workers_cpu
        lat = out["latencies"]
        rows.append({"workers": count, "concurrency": args.gen_concurrency, "texts": len(lat),
                     "texts_per_s": round(len(lat) / out["elapsed"], 2), "p50_s": pct(lat, 50),
                     "p95_s": pct(lat, 95), "failed_or_refused": out["failed"], "lag_p99_ms": lag.get("lag_p99_ms"),
                     "bot_cpu_pct": round(100 * cpu / out["elapsed"], 1),
                     "workers_cpu_pct": round(100 * workers_cpu / out["elapsed"], 1),
                     "load_average": os.getloadavg()[0], "purged_before": purged})
        print(f"  {count} worker(s): {rows[-1]['texts_per_s']} texts/s, p95 {rows[-1]['p95_s']} s", flush=True)
    return rows


# -- a run per server count -------------------------------------------------------------------------------

def fake_for(args: argparse.Namespace, n: int) -> FakeLoad:
    shards = args.shards or max(1, math.ceil(n / 1000))
    import inspect

    options = {"shards": shards} if "shards" in inspect.signature(FakeLoad.__mro__[1].__init__).parameters else {}
    return FakeLoad(n, channels=args.channels, members=args.members, seed=args.seed, **options).start()


def run_guilds(args: argparse.Namespace, n: int, work: Path, model: bytes, generate: bool) -> dict:
    fake = fake_for(args, n)
    database_url, drop = postgres_schema(args.postgres)
    logs = args.logs / str(n)
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    redis_proc, redis_url = start_redis(logs, "redis")
    storage = work / f"storage-{n}"
    database_url = database_url or f"sqlite:///{work / f'load-{n}.db'}"
    env = clean_env(IMPROBABLE_DATABASE_URL=database_url, IMPROBABLE_STORAGE_URL=str(storage),
                    IMPROBABLE_DATA_DIR=str(work / f"data-{n}"), IMPROBABLE_BROKER_URL=redis_url,
                    IMPROBABLE_CORPUS_PATH=str(CORPORA), IMPROBABLE_TORCH_THREADS="1",
                    DISCORD_TOKEN="fake-token", DISCORD_API_BASE=fake.api_base, DISCORD_GATEWAY_URL=fake.gateway_url,
                    **dict(item.split("=", 1) for item in args.set))
    stack = Stack(fake, env, logs, redis_url, free_port())
    try:
        with_ambient = prepare_database(database_url, storage, model, fake, args.ambient_share)
        start_workers(stack, 1, args.worker_threads)
        stack.control = Proc("control", [sys.executable, "-c", CONTROL], env, logs, ROOT)
        print(f"{n} servers ({with_ambient} with ambient replies): starting the bot", flush=True)
        result = {"guilds": n, "servers_with_ambient": with_ambient, "database": database_url.split(":")[0],
                  **start_bot(stack)}
        print(f"  ready in {result['startup_s']} s on {result['shards']} shard(s), RSS {result['rss_mb_at_ready']} MB, "
              f"pid {stack.bot.proc.pid}",
              flush=True)
        rng = random.Random(args.seed)
        ambient = [g.channels[0].id for g in fake.load_guilds[:with_ambient]]
        quiet = [c.id for g in fake.load_guilds for c in g.channels if c.id not in set(ambient)]
        traffic = Traffic(fake, rng, ambient, quiet, MIXES[args.mix])
        if generate and args.workers:  # first: the rates leave queued jobs behind where they outrun the workers
            result["generation"] = generation(stack, traffic, args)
            stop_workers(stack)
            purge_queues(stack)
            start_workers(stack, 1, args.worker_threads)
        result["rates"] = [step(stack, traffic, rate, args.step_seconds) for rate in args.rates]
        result["rss_mb_at_end"], result["peak_rss_mb"] = memory_mb(stack.bot.proc.pid)
        result["storage"] = storage_sizes(database_url, redis_url)
        return result
    finally:
        stack.stop()
        redis_proc.stop()
        fake.stop()
        if drop:
            from db.session import _cached_engine

            _cached_engine.cache_clear()
            drop()


# -- the report -------------------------------------------------------------------------------------------

def verdicts(runs: dict) -> list[dict]:
    """The targets against the run at TARGETS['guilds'] servers (misses reported as misses)."""
    run = runs.get(str(TARGETS["guilds"]))
    if run is None:
        return []
    rates = [r for r in run.get("rates", []) if r["rate"] >= TARGETS["at_events_per_s"] and "lag_p99_ms" in r]
    worst = max((r["lag_p99_ms"] for r in rates), default=None)
    rows = [("RSS at the end (MB)", f"≤ {TARGETS['rss_mb']}", run["peak_rss_mb"], run["peak_rss_mb"] <= TARGETS["rss_mb"]),
            ("start-up (s)", f"≤ {TARGETS['startup_s']:.0f}", run["startup_s"], run["startup_s"] <= TARGETS["startup_s"]),
            (f"event-loop lag p99 at ≥ {TARGETS['at_events_per_s']}/s (ms)", f"≤ {TARGETS['lag_p99_ms']:.0f}", worst,
             worst is not None and worst <= TARGETS["lag_p99_ms"])]
    return [{"target": name, "bound": bound, "measured": value, "met": "yes" if ok else "MISSED"}
            for name, bound, value, ok in rows]


def report(runs: dict, args: argparse.Namespace, machine: dict) -> None:
    columns = ("rate", "sent_per_s", "events_received", "bot_cpu_pct", "bot_cpu_ms_per_event", "lag_p50_ms",
               "lag_p99_ms", "lag_le_100ms_pct", "host_lag_p99_ms", "ack_p50_s", "ack_p99_s", "texts_finished", "text_p95_s",
               "rest_requests", "rest_global_per_s", "refused", "errors", "load_average")
    for key, run in sorted(runs.items(), key=lambda kv: (kv[1]["guilds"], kv[0])):
        title = (f"{key}: {run['guilds']:,} servers, {run['settings']['channels']} channels each: start-up "
                 f"{run['startup_s']} s ({run['shards']} shard(s), IDENTIFY waits {run['identify_waits_s']} s, first "
                 f"shard ready {run.get('first_shard_ready_s')} s), RSS {run['rss_mb_at_ready']} MB at ready, "
                 f"{run['rss_mb_at_end']} MB at the end (peak {run['peak_rss_mb']} MB)")
        if run["rates"]:
            print_table(title, [{k: r.get(k) for k in columns} for r in run["rates"]])
        else:
            print(f"\n## {title}")
        if run.get("generation"):
            print_table(f"{key}: /generate with 1, 2, 4 workers (tiny model: the pipeline, not the model)",
                        run["generation"])
    print_table(f"targets at {TARGETS['guilds']:,} servers in one process", verdicts(runs))
    print(f"\n{machine['cpu']}, {machine['cpus']} CPUs, uptime at start: {machine['uptime_start']}")


def main() -> None:
    args = parse_args()
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    runs = previous.get("runs", {})
    machine = {"cpu": cpu_model(), "cpus": os.cpu_count(), "platform": platform.platform(),
               "uptime_start": uptime(), "nice": os.nice(0)}
    with tempfile.TemporaryDirectory(prefix="load-") as tmp:
        work = Path(tmp)
        model = tiny_model(work / "model")
        for n in args.guilds:
            runs[f"{n}{args.label}"] = {**run_guilds(args, n, work, model, generate=n == max(args.guilds)),
                            "machine": {**machine, "uptime_end": uptime()},
                            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    machine["uptime_end"] = uptime()
    report(runs, args, machine)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"targets": TARGETS, "mixes": {k: dict(v) for k, v in MIXES.items()}, "ambient": AMBIENT,
                                    "verdicts": verdicts(runs), "runs": runs}, indent=1, ensure_ascii=False))
    print(f"wrote {args.out}")


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def cpu_model() -> str:
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), platform.machine())


if __name__ == "__main__":
    main()
