"""Fair queues between servers, measured through the real queue: Redis, real `celery worker` processes (a
trainer, `--pool solo`; a generate worker, threads pool and the batching engine), PostgreSQL.

    python -m bench.speed.fairness                # about 3 minutes
    python -m bench.speed.fairness --x-runs 100 --x-jobs 100 --y-jobs 20

Training: server X queues --x-runs tiny runs (a second or two each; one message each, as the bot sends them)
and, once X's first run is training, server Y queues one. Reported: how many of X's runs started between Y's
request and Y's start (target ≤ 1: worker/training.py claims the fairest queued run), Y's wait, and where a
FIFO would have put Y. Then X's runs go on alone for a while: its runs per minute and the trainer's idle gap
between runs (the cost of claiming from SQL).

Generation: Y sends --y-jobs jobs one at a time (a pause between them, as a member does) while X keeps
--x-jobs jobs in flight (each answered job is replaced at once). Reported: Y's p95 latency against Y alone on
the same host, persona and precision (target ≤ 2×), with X on another persona and with X on Y's persona; and
X's throughput while Y asks against X alone (target ≥ 80 %: fairness must not idle the engine). The phases run
one after another, so training does not load the CPU that generation is measured on.

The personas are the bundled alice (Y) and shakespeare (X on another persona). Redis database --redis-db is
flushed; the database is a fresh PostgreSQL schema (dropped afterwards). Writes bench/results/fairness.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, load_corpus, service_environment, start_worker
from bench.speed.queue_load import percentile, postgres_schema, stop_worker

SERVER_X, SERVER_Y = 1001, 2002
TARGETS = {"x_runs_before_y": 1, "y_p95_vs_alone": 2.0, "x_throughput_share": 0.8}
TINY_RUN = {"init": "", "n_layers": 1, "n_hidden": 32, "n_embd": 16, "batch_size": 8, "seq_len": 32,
            "dropout": 0.0, "eval_interval": 30, "log_interval": 10, "patience": 0, "max_steps": 30}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--x-runs", type=int, default=100)
    parser.add_argument("--x-alone-seconds", type=float, default=20, help="X's runs observed alone after Y's")
    parser.add_argument("--x-jobs", type=int, default=100, help="X's generate jobs kept in flight")
    parser.add_argument("--y-jobs", type=int, default=40, help="Y's generate jobs, one at a time")
    parser.add_argument("--y-pause", type=float, default=0.3, help="seconds between Y's jobs")
    parser.add_argument("--x-alone-jobs-seconds", type=float, default=15, help="X's flood measured alone")
    parser.add_argument("--lead", type=float, default=4, help="seconds X floods before the window opens")
    parser.add_argument("--chars", type=int, default=200, help="characters per generate job")
    parser.add_argument("--worker-threads", type=int, default=16)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--redis-db", type=int, default=7)
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--note", default="")
    parser.add_argument("--out", type=Path, default=RESULTS / "fairness.json")
    return parser.parse_args()


# -- the services -----------------------------------------------------------------------------------------

def environment(args, work: Path, database_url: str) -> dict[str, str]:
    redis_url = f"redis://127.0.0.1:6379/{args.redis_db}"
    return service_environment(work, redis_url, database_url, result_backend=redis_url, torch_threads=1,
                               generate_precision=args.precision, visibility_timeout=600, train_report_seconds=1)


def wait_ready(app, proc: subprocess.Popen, name: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker {name} exited; see its log")
        if app.control.ping(destination=[f"{name}@localhost"], timeout=0.5):
            return
    raise TimeoutError(f"worker {name} did not come up")


def send(app, name: str, *args) -> str:
    """Enqueue without the result subscription Celery's Redis backend opens (the bench polls the results)."""
    result = app.send_task(name, args=list(args))
    consumer = getattr(result.backend, "result_consumer", None)
    if consumer is not None:
        consumer.cancel_for(result.id)
    return result.id


# -- training ---------------------------------------------------------------------------------------------

def queue_runs(app, corpus, guild_id: int, n: int) -> list[int]:
    import db
    from db.personas import get_persona
    from db.runs import create_run

    ids = []
    for i in range(n):
        with db.session_scope() as session:
            ids.append(create_run(session, get_persona(session, "alice", None), corpus=corpus, config=TINY_RUN,
                                  requested_by=guild_id * 1000 + i, guild_id=guild_id).id)
        send(app, "improbable.train", ids[-1])
    return ids


def run_rows(ids: list[int]) -> dict[int, tuple]:
    import db
    from db.models import TrainingRun

    with db.session_scope() as session:
        return {r.id: (r.status, r.created_at, r.started_at, r.finished_at)
                for r in session.query(TrainingRun).filter(TrainingRun.id.in_(ids))}


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def measure_training(args, app, env: dict, work: Path) -> dict:
    import db
    from db.ingest import ingest
    from db.runs import request_cancel

    text = load_corpus("alice").text[:6000]
    with db.session_scope() as session:
        corpus = ingest(text.encode(), "alice.txt", session=session).corpus
    proc = start_worker(env, name="fair-train", queues="train", pool="solo", concurrency=1,
                        log_path=work / "train.log", log_level="INFO")
    try:
        wait_ready(app, proc, "fair-train")
        warm = queue_runs(app, corpus, 0, 1)[0]  # the trainer's first run imports and initialises: not measured
        wait_for(lambda: run_rows([warm])[warm][3], 120, "the warm-up run")
        xs = queue_runs(app, corpus, SERVER_X, args.x_runs)
        wait_for(lambda: run_rows(xs[:1])[xs[0]][2], 120, "X's first run to start")
        y = queue_runs(app, corpus, SERVER_Y, 1)[0]
        at_y = [status.value for status, *_ in run_rows(xs).values()]
        queued_x_at_y, running_x_at_y = at_y.count("queued"), at_y.count("running")
        wait_for(lambda: run_rows([y])[y][3], 120, "Y's run to finish")
        rows = run_rows([*xs, y])
        _, y_created, y_started, y_finished = rows[y]
        x_before_y = sorted(i for i in xs if rows[i][2] and y_created < rows[i][2] < y_started)
        observe_from = time.monotonic()
        time.sleep(args.x_alone_seconds)
        rows = run_rows(xs)
        with db.session_scope() as session:
            for i in xs:
                if rows[i][0].value == "queued":
                    request_cancel(session, i)
        wait_for(lambda: all(r[0].finished for r in run_rows(xs).values()), 120, "X's running run to end")
        rows = run_rows(xs)
    finally:
        stop_worker(proc, work / "train.log")
    done = sorted((r[2], r[3]) for r in rows.values() if r[3] and r[2] and r[0].value == "succeeded")
    durations = [(f - s).total_seconds() for s, f in done]
    gaps = [(done[k + 1][0] - done[k][1]).total_seconds() for k in range(len(done) - 1)]
    after_y = [s for s, _ in done if s > y_finished]
    span = (max(f for _, f in done) - min(s for s, _ in done)).total_seconds() if done else 0
    return {"x_runs_queued": args.x_runs, "x_runs_queued_when_y_asked": queued_x_at_y,
            "x_runs_ahead_of_y": running_x_at_y + len(x_before_y),  # the target: ≤ 1
            "x_runs_running_when_y_asked": running_x_at_y,
            "x_runs_started_between_y_request_and_y_start": len(x_before_y),
            "y_wait_to_start_s": (y_started - y_created).total_seconds(),
            "fifo_position_of_y": queued_x_at_y + 1,
            "fifo_wait_estimate_s": queued_x_at_y * statistics.fmean(durations) if durations else None,
            "x_runs_succeeded": len(done), "x_run_seconds_median": statistics.median(durations),
            "trainer_gap_between_runs_median_s": statistics.median(gaps) if gaps else None,
            "trainer_busy_fraction": sum(durations) / span if span else None,
            "x_runs_per_minute_alone": len(after_y) / ((time.monotonic() - observe_from) / 60)}


# -- generation -------------------------------------------------------------------------------------------

class Driver:
    """Sends generate jobs and watches their results in Redis (one MGET per 5 ms for all jobs in flight):
    X keeps `x_jobs` in flight, Y sends `y_jobs` one at a time with a pause between them."""

    def __init__(self, app, redis_client, chars: int):
        self.app, self.redis, self.chars = app, redis_client, chars
        self.seq = 0

    def request(self, checkpoint_id: int, persona: str, guild_id: int) -> dict:
        self.seq += 1
        return {"checkpoint_id": checkpoint_id, "persona": persona, "prompt": "The ",
                "params": {"max_tokens": self.chars, "temperature": 0.8, "seed": self.seq},
                "guild_id": guild_id, "channel_id": guild_id + 1, "user_id": guild_id + 2}

    def drain(self, pending: dict, timeout: float = 300) -> None:
        """Wait for the jobs still in flight (not counted), so the next scenario starts on an idle engine."""
        from worker.app import RESULT_KEY_PREFIX

        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            ids = list(pending)
            for task_id, raw in zip(ids, self.redis.mget([RESULT_KEY_PREFIX + t for t in ids]), strict=True):
                if raw is not None and json.loads(raw).get("status") in ("SUCCESS", "FAILURE"):
                    pending.pop(task_id)
            time.sleep(0.05)

    def run(self, x: tuple | None, y: tuple | None, x_jobs: int, y_jobs: int, y_pause: float,
            seconds: float, lead: float = 0.0) -> dict:
        """x, y: (checkpoint_id, persona) or None. X's flood starts `lead` seconds before the window measured
        (steady state); the window lasts until Y's jobs are done (or `seconds` without Y)."""
        from worker.app import RESULT_KEY_PREFIX

        pending: dict[str, tuple[str, float]] = {}  # task id -> (who, sent at)
        latencies = {"x": [], "y": []}
        chars = {"x": 0, "y": 0}
        in_worker: list[float] = []
        started = time.perf_counter() + (lead if x else 0.0)
        y_sent, y_next = 0, started

        def submit(who, spec, guild):
            pending[send(self.app, "improbable.generate", self.request(spec[0], spec[1], guild))] = (
                who, time.perf_counter())

        for _ in range(x_jobs if x else 0):
            submit("x", x, SERVER_X)
        while True:
            now = time.perf_counter()
            y_busy = any(who == "y" for who, _ in pending.values())
            if y and not y_busy and y_sent < y_jobs and now >= y_next:
                submit("y", y, SERVER_Y)
                y_sent, y_busy = y_sent + 1, True
            if (y and y_sent >= y_jobs and not y_busy) or (not y and now - started >= seconds):
                break
            ids = list(pending)
            for task_id, raw in zip(ids, self.redis.mget([RESULT_KEY_PREFIX + t for t in ids]), strict=True):
                if raw is None:
                    continue
                meta = json.loads(raw)
                if meta.get("status") not in ("SUCCESS", "FAILURE"):
                    continue
                who, sent = pending.pop(task_id)
                if meta["status"] == "FAILURE":
                    raise RuntimeError(f"generate job failed: {meta.get('result')}")
                if time.perf_counter() >= started:  # X's jobs count once the window opens
                    latencies[who].append(time.perf_counter() - sent)
                    chars[who] += len(meta["result"]["text"])
                    if who == "y":  # from the task's start in the worker to its answer
                        in_worker.append((meta["result"].get("latency_ms") or 0) / 1000)
                if who == "x":
                    submit("x", x, SERVER_X)
                else:
                    y_next = time.perf_counter() + y_pause
            time.sleep(0.005)
        wall = time.perf_counter() - started
        self.drain(pending)
        return {"wall_s": wall, "x_jobs_done": len(latencies["x"]), "x_chars_per_s": chars["x"] / wall,
                "y_jobs": len(latencies["y"]),
                "y_p50_s": percentile(latencies["y"], 50) if latencies["y"] else None,
                "y_p95_s": percentile(latencies["y"], 95) if latencies["y"] else None,
                "y_max_s": max(latencies["y"], default=None),
                "y_in_worker_p95_s": percentile(in_worker, 95) if in_worker else None,
                "y_latencies_s": [round(v, 3) for v in latencies["y"]],
                "x_p50_s": percentile(latencies["x"], 50) if latencies["x"] else None}


def measure_generation(args, app, env: dict, work: Path) -> dict:
    import redis

    import db
    from db.bundled import register_bundled
    from db.personas import get_persona

    with db.session_scope() as session:
        register_bundled(session, db.open_storage())
    with db.session_scope() as session:
        alice = (get_persona(session, "alice", None).active_checkpoint_id, "alice")
        shakespeare = (get_persona(session, "shakespeare", None).active_checkpoint_id, "shakespeare")
    proc = start_worker(env, name="fair-gen", queues="generate", pool="threads", concurrency=args.worker_threads,
                        log_path=work / "generate.log", log_level="INFO")
    driver = Driver(app, redis.Redis.from_url(env["IMPROBABLE_BROKER_URL"]), args.chars)
    try:
        wait_ready(app, proc, "fair-gen")
        driver.run(alice, None, 16, 0, 0, 5)  # warm-up: both models loaded, first batches
        driver.run(shakespeare, None, 16, 0, 0, 5)
        out = {"y_alone": driver.run(None, alice, 0, args.y_jobs, args.y_pause, 0)}
        out["x_alone"] = driver.run(shakespeare, None, args.x_jobs, 0, 0, args.x_alone_jobs_seconds, args.lead)
        out["x_alone_same_persona"] = driver.run(alice, None, args.x_jobs, 0, 0, args.x_alone_jobs_seconds,
                                                 args.lead)
        out["x_flood_other_persona"] = driver.run(shakespeare, alice, args.x_jobs, args.y_jobs, args.y_pause, 0,
                                                  args.lead)
        out["x_flood_same_persona"] = driver.run(alice, alice, args.x_jobs, args.y_jobs, args.y_pause, 0, args.lead)
    finally:
        stop_worker(proc, work / "generate.log")
    base = out["y_alone"]["y_p95_s"]
    for name, alone in (("x_flood_other_persona", "x_alone"), ("x_flood_same_persona", "x_alone_same_persona")):
        out[name]["y_p95_vs_alone"] = out[name]["y_p95_s"] / base
        out[name]["x_throughput_share"] = out[name]["x_chars_per_s"] / out[alone]["x_chars_per_s"]
    return out


# -- report -----------------------------------------------------------------------------------------------

def report(train: dict, gen: dict) -> None:
    print("\n## Training: X queues", train["x_runs_queued"], "runs, then Y one\n")
    print("| figure | value | target |\n|---|---|---|")
    print(f"| X's runs Y waited for ({train['x_runs_running_when_y_asked']} running when Y asked, "
          f"{train['x_runs_started_between_y_request_and_y_start']} started after) | {train['x_runs_ahead_of_y']} | "
          f"≤ {TARGETS['x_runs_before_y']} |")
    print(f"| Y's wait to start | {train['y_wait_to_start_s']:.1f} s | |")
    print(f"| Y's place in a FIFO (X's runs queued ahead) | {train['fifo_position_of_y']} "
          f"(≈ {train['fifo_wait_estimate_s'] or 0:.0f} s) | |")
    print(f"| X's run (median) | {train['x_run_seconds_median']:.1f} s | |")
    print(f"| trainer idle between runs (median) | {train['trainer_gap_between_runs_median_s'] or 0:.2f} s | |")
    print(f"| trainer busy fraction | {train['trainer_busy_fraction'] or 0:.0%} | |")
    print(f"| X's runs per minute alone | {train['x_runs_per_minute_alone']:.1f} | |")
    print("\n## Generation: X keeps jobs in flight, Y asks one at a time\n")
    print("| scenario | Y p50 s | Y p95 s | Y p95 vs alone (≤ 2×) | Y p95 in the worker s | X chars/s "
          "| X share of alone (≥ 80 %) |")
    print("|---|---|---|---|---|---|---|")
    for name in ("y_alone", "x_alone", "x_alone_same_persona", "x_flood_other_persona", "x_flood_same_persona"):
        r = gen[name]
        y50 = f"{r['y_p50_s']:.3f}" if r["y_p50_s"] is not None else "–"
        y95 = f"{r['y_p95_s']:.3f}" if r["y_p95_s"] is not None else "–"
        ratio = f"{r['y_p95_vs_alone']:.2f}×" if "y_p95_vs_alone" in r else "–"
        share = f"{r['x_throughput_share']:.0%}" if "x_throughput_share" in r else "–"
        inside = f"{r['y_in_worker_p95_s']:.3f}" if r["y_in_worker_p95_s"] is not None else "–"
        print(f"| {name} | {y50} | {y95} | {ratio} | {inside} | {r['x_chars_per_s']:,.0f} | {share} |")


def main() -> None:
    args = parse_args()
    from trainer.precision import cpu_model

    load_before = os.getloadavg()
    database_url, drop_schema = postgres_schema(args.postgres)
    if database_url is None:
        sys.exit("the fairness bench needs PostgreSQL (SKIP LOCKED claims between trainers)")
    try:
        with tempfile.TemporaryDirectory(prefix="fairness-") as tmp:
            work = Path(tmp)
            env = environment(args, work, database_url)
            import db
            from worker.app import app, configure

            configure()
            db.upgrade()
            train = measure_training(args, app, env, work)
            gen = measure_generation(args, app, env, work)
    finally:
        from db.session import _cached_engine

        _cached_engine.cache_clear()
        drop_schema()
    report(train, gen)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": {"platform": platform.platform(), "cpu": cpu_model(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "load_average_at_start": load_before,
                    "load_average_at_end": os.getloadavg()},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "targets": TARGETS, "training": train, "generation": gen}, indent=1, default=str))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
