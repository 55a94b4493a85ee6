"""Generate jobs under load through the real queue: Redis, a real `celery worker` (threads pool, the
batching engine), the real task and database writes. N concurrent jobs of 280 characters each, against
the same jobs sent one after another.

    python -m bench.speed.queue_load              # N = 1, 8, 32, 64, 256 and 32 serial (about 3 minutes)
    python -m bench.speed.queue_load --concurrency 32 --rounds 5
    python -m bench.speed.queue_load --int8 off   # serial jobs stepped in float32 too
    python -m bench.speed.queue_load --concurrency --side-by-side 128 256 --rounds 5 --engine thread

Prints a markdown table (p50/p95/p99 latency, throughput, speed-up over serial, the widest batch a job was
stepped in) and writes JSON to bench/results/queue_load.json. Targets (this 2-core machine,
a 2×256 char LSTM, 280 characters per job): p95 ≤ 0.5 s at 32 concurrent, aggregate throughput ≥ 20× serial,
256 concurrent jobs batched ≥ 200 wide. The worker runs with `--worker-threads` Celery threads (16, as
docker-compose.yml): a generate task hands its job to the engine and returns, so the threads do not bound
the batch (worker/serve/delivery.py).
Side by side (--side-by-side, 128 and 256): the same N jobs straight into a worker.serve.engine.Engine in
this process (same model, precision, int8 setting and intra-op threads as the worker's engine; no Redis, no
Celery, no database), alternating with N jobs through the queue, --rounds times each; the queue's throughput
over the engine's is the ratio (target ≥ 0.8: the queue may cost at most a fifth of what the engine can do).
Serial jobs run alone, so with `--int8 auto` (the default setting) they step with int8 weights where that is
faster: the serial baseline is then the fast single-stream path, not float32.

The model is loaded from bench/results/queue_model/best.safetensors, or trained for --train-seconds on
Alice first (quality is not the point). Redis database --redis-db is flushed. The database is a fresh
schema in the local PostgreSQL (--postgres, dropped afterwards), or a SQLite file in a temporary folder
when PostgreSQL is unreachable or --postgres is empty.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, ROOT, load_corpus, service_environment, start_worker

MODEL_DIR = RESULTS / "queue_model"
TARGETS = {"p95_at_32_s": 0.5, "speedup_at_32": 20.0, "batch_at_256": 200, "queue_vs_engine": 0.8}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def ensure_model(train_seconds: float) -> Path:
    path = MODEL_DIR / "best.safetensors"
    if path.exists():
        return path
    from trainer.train import TrainConfig, train

    print(f"training a 2x256 char LSTM on alice for {train_seconds:.0f} s → {path}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:  # keep only best.safetensors (3.5 MB), not the resume state
        config = TrainConfig(corpus="alice", out_dir=tmp, n_layers=2, n_hidden=256, n_embd=64,
                             minutes=train_seconds / 60, eval_interval=100_000, seed=1)
        train(config, load_corpus("alice"))
        MODEL_DIR.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(tmp) / "best.safetensors", path)
    return path


def postgres_schema(url: str):
    """(URL of a new schema, drop()) in the PostgreSQL at url, or (None, None) when it is unreachable."""
    if not url:
        return None, None
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    schema = f"queue_load_{os.getpid()}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT", pool_size=1)
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as e:  # noqa: BLE001 - fall back to SQLite, and say so
        print(f"PostgreSQL unreachable ({type(e).__name__}); using SQLite", flush=True)
        admin.dispose()
        return None, None

    def drop():
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()

    schema_url = make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
    return schema_url.render_as_string(hide_password=False), drop


def setup_environment(args, work: Path, database_url: str | None) -> dict[str, str]:
    return service_environment(work, f"redis://{args.redis_host}:{args.redis_port}/{args.redis_db}", database_url,
                               torch_threads=args.torch_threads, generate_precision=args.precision,
                               generate_int8=args.int8, generate_engine=args.engine, visibility_timeout=600)


def register_checkpoint(model_path: Path) -> int:
    import db
    from db.checkpoints import add_checkpoint
    from db.personas import get_persona

    db.upgrade()
    db.open_storage().put("checkpoints/alice/bench/best.safetensors", model_path.read_bytes())
    with db.session_scope() as session:
        return add_checkpoint(session, get_persona(session, "alice", None),
                              "checkpoints/alice/bench/best.safetensors", activate=True).id


def wait_ready(app, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the worker exited; see its log")
        if app.control.ping(destination=["bench@localhost"], timeout=0.5):
            return
    raise TimeoutError("the worker did not come up")


def request(checkpoint_id: int, i: int, chars: int) -> dict:
    return {"checkpoint_id": checkpoint_id, "persona": "alice", "prompt": "Alice ",
            "params": {"max_tokens": chars, "temperature": 0.8, "top_p": 0.95, "seed": 10_000 + i},
            "guild_id": 1, "channel_id": 1, "user_id": i}


def run_concurrent(enqueue, checkpoint_id: int, n: int, chars: int) -> dict:
    """Send n jobs at once; each job's latency runs from its own send to its result's arrival."""
    from celery.result import ResultSet

    sent, done, results = {}, {}, {}
    started = time.perf_counter()
    pending = []
    for i in range(n):
        sent_at = time.perf_counter()
        r = enqueue("improbable.generate", request(checkpoint_id, i, chars))
        sent[r.id] = sent_at
        pending.append(r)

    def arrived(task_id, value):
        done[task_id] = time.perf_counter()
        results[task_id] = value

    ResultSet(pending).join_native(callback=arrived, timeout=300, interval=0.005)  # default 0.5 s polls
    wall = time.perf_counter() - started
    return summarize([done[t] - sent[t] for t in sent], list(results.values()), wall)


class EngineAlone:
    """The worker's engine without the queue: the same model, precision, int8 and threads, in this process."""

    def __init__(self, model_path: Path, args: argparse.Namespace):
        from worker.serve.cache import Entry
        from worker.serve.engine import Engine
        from worker.serve.runtime import engine_threads

        self.engine = Engine("cpu", args.torch_threads or engine_threads(), int8=args.int8)
        checkpoint, n_bytes = self.engine.load(1, model_path.read_bytes(), model_path.name, args.precision)
        self.entry = Entry(1, checkpoint, None, n_bytes)
        for n in (1, 8):  # warm-up, as the worker's (first-call allocations, the int8 decision)
            self.run(n, 280)

    def run(self, n: int, chars: int) -> dict:
        """n jobs submitted at once (the queue's requests: prompt, parameters, seeds, owner)."""
        from core.contracts import GenerateRequest

        requests = [GenerateRequest.model_validate(request(1, i, chars)) for i in range(n)]
        started = time.perf_counter()
        jobs = [self.engine.submit(self.entry, r.prompt, r.params, owner=r.guild_id) for r in requests]
        streams = [j.future.result(timeout=300) for j in jobs]
        wall = time.perf_counter() - started
        results = [{"text": s.text, "batch_peak": j.batch_peak, "latency_ms": 0} for s, j in zip(streams, jobs)]
        return summarize([0.0] * n, results, wall)


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc; every thread of it), and of its live children (a
    worker's engine process)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") + sum(process_cpu(c) for c in children(pid))


def children(pid: int) -> list[int]:
    try:
        return [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                for c in (task / "children").read_text().split()]
    except OSError:
        return []


def cpu_during(pids: dict[str, int], fn) -> tuple[object, dict[str, float]]:
    """(fn(), CPU seconds that this process ("bench") and each of `pids` (name → pid) spent meanwhile)."""
    def now() -> dict[str, float]:
        return {"bench": time.process_time(), **{name: process_cpu(pid) for name, pid in pids.items()}}

    before = now()
    result = fn()
    return result, {name: seconds - before[name] for name, seconds in now().items()}


def engine_thread_clock(pid: int) -> tuple[float, float] | None:
    """(seconds on a CPU, seconds runnable but waiting for one) so far of process `pid`'s engine thread (named
    worker.serve.engine.OS_THREAD_NAME; /proc/<pid>/task/<tid>/schedstat, Linux), or None where unknown."""
    from worker.serve.engine import OS_THREAD_NAME

    for comm in Path(f"/proc/{pid}/task").glob("*/comm"):
        try:
            if comm.read_text().strip() == OS_THREAD_NAME:
                on_cpu, waiting, _ = (comm.parent / "schedstat").read_text().split()
                return int(on_cpu) / 1e9, int(waiting) / 1e9
        except (OSError, ValueError):
            continue
    return next(filter(None, map(engine_thread_clock, children(pid))), None)  # an engine in its own process


def engine_time(pid: int, fn) -> tuple[object, dict[str, float]]:
    """(fn(), where the engine thread of process `pid` spent fn's wall time: on a CPU, runnable but waiting
    for one (other threads and processes had both cores), and off the CPU while not runnable (waiting for
    the GIL, or for work: jobs still on their way), each as a share of the wall time)."""
    before, started = engine_thread_clock(pid), time.perf_counter()
    result = fn()
    after, wall = engine_thread_clock(pid), time.perf_counter() - started
    if before is None or after is None:
        return result, {}
    on_cpu, runnable = after[0] - before[0], after[1] - before[1]
    return result, {"on_cpu": on_cpu / wall, "runnable": runnable / wall, "off_cpu": 1 - (on_cpu + runnable) / wall}


def side_by_side(enqueue, checkpoint_id: int, alone: EngineAlone, args: argparse.Namespace,
                 pids: dict[str, int]) -> dict:
    """{N: engine and queue throughput, alternated round by round, and their ratio (medians)}; beside it the
    CPU seconds per 1,000 characters each spent (the engine: this process; the queue: this process, the
    worker and Redis, each), which a loaded machine disturbs less than wall time. (Redis's CPU includes
    whatever else uses the same Redis meanwhile.) And where each engine thread spent its round (engine_time):
    the engine alone is on a CPU nearly all the time; the worker's also waits for the GIL, for a core, and
    for jobs still on their way."""
    rows = {}
    for n in args.side_by_side:
        engine, queued = [], []
        for _ in range(args.rounds):
            engine.append(engine_time(os.getpid(), lambda n=n: cpu_during({}, lambda: alone.run(n, args.chars))))
            queued.append(engine_time(pids["worker"], lambda n=n: cpu_during(
                pids, lambda: run_concurrent(enqueue, checkpoint_id, n, args.chars))))
        engine_rate = statistics.median(r["chars_per_s"] for (r, _), _ in engine)
        queue_rate = statistics.median(r["chars_per_s"] for (r, _), _ in queued)
        chars = n * args.chars / 1000
        rows[n] = {"engine_chars_s": engine_rate, "queue_chars_s": queue_rate, "ratio": queue_rate / engine_rate,
                   "engine_rounds": [round(r["chars_per_s"]) for (r, _), _ in engine],
                   "queue_rounds": [round(r["chars_per_s"]) for (r, _), _ in queued],
                   "engine_cpu_s_per_1k_chars": statistics.median(cpu["bench"] / chars for (_, cpu), _ in engine),
                   "queue_cpu_s_per_1k_chars": statistics.median(sum(cpu.values()) / chars for (_, cpu), _ in queued),
                   "queue_cpu_s_per_1k_chars_by_process": {
                       name: round(statistics.median(cpu[name] / chars for (_, cpu), _ in queued), 4)
                       for name in queued[0][0][1]},
                   "engine_thread_alone": _median_shares([t for _, t in engine]),
                   "engine_thread_in_worker": _median_shares([t for _, t in queued]),
                   "queue_p95_s": statistics.median(r["p95_s"] for (r, _), _ in queued),
                   "queue_batch_peak": max(r["batch_peak"] for (r, _), _ in queued)}
    return rows


def _median_shares(rounds: list[dict[str, float]]) -> dict[str, float]:
    rounds = [r for r in rounds if r]
    return {key: round(statistics.median(r[key] for r in rounds), 3) for key in rounds[0]} if rounds else {}


def redis_pids(address: str) -> list[int]:
    """The local redis-server listening on `address` (host:port), when this user may read it (its CPU counts
    for the queue)."""
    found = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == "redis-server" and \
                    address in (comm.parent / "cmdline").read_text().replace("\0", " "):
                process_cpu(int(comm.parent.name))
                found.append(int(comm.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def run_serial(enqueue, checkpoint_id: int, n: int, chars: int) -> dict:
    latencies, results = [], []
    started = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        results.append(enqueue("improbable.generate", request(checkpoint_id, i, chars)).get(timeout=300))
        latencies.append(time.perf_counter() - t)
    return summarize(latencies, results, time.perf_counter() - started)


def summarize(latencies: list[float], results: list[dict], wall: float) -> dict:
    chars = sum(len(r["text"]) for r in results)
    return {"jobs": len(results), "p50_s": percentile(latencies, 50), "p95_s": percentile(latencies, 95),
            "p99_s": percentile(latencies, 99), "mean_s": statistics.fmean(latencies), "wall_s": wall,
            "chars": chars, "chars_per_s": chars / wall, "jobs_per_s": len(results) / wall,
            "batch_peak": max(r["batch_peak"] for r in results),
            "worker_latency_p50_ms": percentile([r["latency_ms"] for r in results], 50)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 8, 32, 64, 256])
    parser.add_argument("--side-by-side", type=int, nargs="*", default=[128, 256],
                        help="N jobs into the engine alone and through the queue, alternated (empty: skip)")
    parser.add_argument("--serial-jobs", type=int, default=32)
    parser.add_argument("--chars", type=int, default=280)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per concurrency level (best p95 kept)")
    parser.add_argument("--train-seconds", type=float, default=30)
    parser.add_argument("--worker-threads", type=int, default=16, help="celery -c (threads that hand jobs over)")
    parser.add_argument("--torch-threads", type=int, default=0, help="engine intra-op threads (0: automatic)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="served weights")
    parser.add_argument("--int8", choices=["auto", "on", "off"], default="auto", help="single-stream int8 steps")
    parser.add_argument("--engine", choices=["thread", "process"], default="process",
                        help="the worker's engine: a thread of its process, or a process of its own")
    parser.add_argument("--redis-host", default="127.0.0.1")
    parser.add_argument("--redis-port", type=int, default=6379)
    parser.add_argument("--redis-db", type=int, default=6)
    parser.add_argument("--note", default="", help="free text kept in the JSON (e.g. the machine's load)")
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
                        help="PostgreSQL to make a temporary schema in ('' = SQLite)")
    parser.add_argument("--out", type=Path, default=RESULTS / "queue_load.json")
    return parser.parse_args()


def stop_worker(proc: subprocess.Popen, log_path: Path) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.returncode not in (0, -15):
        print(log_path.read_text()[-3000:], file=sys.stderr)


def measure(args: argparse.Namespace, model_path: Path, database_url: str | None,
            drop_schema) -> tuple[dict, dict, dict]:
    """(serial, {concurrency: best round}, {N: queue against the engine alone}) through a real worker on a
    fresh Redis database and schema."""
    with tempfile.TemporaryDirectory(prefix="queue-load-") as tmp:
        work = Path(tmp)
        env = setup_environment(args, work, database_url)
        checkpoint_id = register_checkpoint(model_path)
        from worker.app import app, configure, enqueue

        configure()
        proc = start_worker(env, name="bench", queues="generate", pool="threads",
                            concurrency=args.worker_threads, log_path=work / "worker.log")
        try:
            wait_ready(app, proc)
            for n in (1, 8):  # warm-up: torch import, checkpoint load, first batches
                run_concurrent(enqueue, checkpoint_id, n, args.chars)
            serial = run_serial(enqueue, checkpoint_id, args.serial_jobs, args.chars)
            rows = {}
            for n in args.concurrency:
                rounds = [run_concurrent(enqueue, checkpoint_id, n, args.chars) for _ in range(args.rounds)]
                rows[n] = min(rounds, key=lambda r: r["p95_s"])
                rows[n]["p95_s_rounds"] = [round(r["p95_s"], 3) for r in rounds]
                rows[n]["speedup_vs_serial"] = rows[n]["chars_per_s"] / serial["chars_per_s"]
            queue_pids = {"worker": proc.pid, **{f"redis{i or ''}": pid for i, pid in
                                                 enumerate(redis_pids(f"{args.redis_host}:{args.redis_port}"))}}
            sides = side_by_side(enqueue, checkpoint_id, EngineAlone(model_path, args), args, queue_pids) \
                if args.side_by_side else {}
        finally:
            stop_worker(proc, work / "worker.log")
            import redis

            redis.Redis.from_url(env["IMPROBABLE_BROKER_URL"]).flushdb()  # the jobs' results
            if drop_schema:
                from db.session import _cached_engine

                _cached_engine.cache_clear()
                drop_schema()
    return serial, rows, sides


def print_report(args: argparse.Namespace, model_path: Path, postgres: bool, serial: dict, rows: dict) -> None:
    print(f"\nmodel {model_path.relative_to(ROOT)}, {args.chars} chars per job, worker -c {args.worker_threads}, "
          f"engine ({args.engine}) threads {args.torch_threads or 'auto'}, {args.precision}, int8 {args.int8}, "
          f"{'PostgreSQL' if postgres else 'SQLite'}, "
          f"{os.cpu_count()} CPUs (shared, noisy)\n")
    print("| jobs | p50 s | p95 s | p99 s | throughput chars/s | speed-up vs serial | max batch |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.serial_jobs} serial | {serial['p50_s']:.3f} | {serial['p95_s']:.3f} | {serial['p99_s']:.3f} | "
          f"{serial['chars_per_s']:,.0f} | 1.0× | {serial['batch_peak']} |")
    for n, r in rows.items():
        print(f"| {n} concurrent | {r['p50_s']:.3f} | {r['p95_s']:.3f} | {r['p99_s']:.3f} | {r['chars_per_s']:,.0f} "
              f"| {r['speedup_vs_serial']:.1f}× | {r['batch_peak']} |")
    at32 = rows.get(32)
    if at32:
        print(f"\ntargets at 32 concurrent: p95 {at32['p95_s']:.3f} s (≤ {TARGETS['p95_at_32_s']}), "
              f"speed-up {at32['speedup_vs_serial']:.1f}× (≥ {TARGETS['speedup_at_32']})")
    at256 = rows.get(256)
    if at256:
        print(f"target at 256 concurrent: max batch {at256['batch_peak']} (≥ {TARGETS['batch_at_256']})")


def print_side_by_side(sides: dict) -> None:
    if not sides:
        return
    print(f"\n| jobs | engine alone chars/s | whole queue chars/s | queue / engine (≥ {TARGETS['queue_vs_engine']}) "
          "| CPU s per 1k chars (engine; queue) | queue p95 s | rounds (engine; queue) |")
    print("|---|---|---|---|---|---|---|")
    for n, r in sides.items():
        print(f"| {n} | {r['engine_chars_s']:,.0f} | {r['queue_chars_s']:,.0f} | {r['ratio']:.2f} | "
              f"{r['engine_cpu_s_per_1k_chars']:.3f}; {r['queue_cpu_s_per_1k_chars']:.3f} "
              f"{r['queue_cpu_s_per_1k_chars_by_process']} | "
              f"{r['queue_p95_s']:.3f} | {r['engine_rounds']}; {r['queue_rounds']} |")
    print("\nwhere the engine thread spent its rounds (share of wall time; medians):\n")
    print("| jobs | side | on a CPU | runnable, waiting for a core | off the CPU (GIL, or no work yet) |")
    print("|---|---|---|---|---|")
    for n, r in sides.items():
        for side, key in (("engine alone", "engine_thread_alone"), ("in the worker", "engine_thread_in_worker")):
            t = r.get(key) or {}
            if t:
                print(f"| {n} | {side} | {t['on_cpu']:.2f} | {t['runnable']:.2f} | {t['off_cpu']:.2f} |")


def main() -> None:
    args = parse_args()
    from trainer.precision import cpu_model

    model_path = ensure_model(args.train_seconds)
    database_url, drop_schema = postgres_schema(args.postgres)
    load_at_start = os.getloadavg()
    serial, rows, sides = measure(args, model_path, database_url, drop_schema)
    print_report(args, model_path, database_url is not None, serial, rows)
    print_side_by_side(sides)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": {"platform": platform.platform(), "cpu": cpu_model(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "load_average_at_start": load_at_start,
                    "load_average_at_end": os.getloadavg()},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "targets": TARGETS, "serial": serial, "concurrent": rows, "queue_vs_engine": sides}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
