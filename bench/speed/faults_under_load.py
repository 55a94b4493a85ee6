"""Faults under load: generate jobs submitted at a steady rate for --minutes while a generate worker is killed
(SIGKILL) every minute and restarted at once (as a supervisor would), and Redis and PostgreSQL are each
restarted once. Did every job get an answer, exactly one, with one `generations` row, and how slow were the
answers before, during and after each fault?

    nice -n 5 python -m bench.speed.faults_under_load                          # 2,000 jobs over 10 minutes
    nice -n 5 python -m bench.speed.faults_under_load --minutes 2 --jobs 300   # quick (about 2.5 minutes)

The stack is the fault suite's (tests/faults/conftest.py): its own redis-server on a spare port (append-only
file; this one is restarted, never the shared 6379), a private PostgreSQL cluster (`pg_createcluster`, needs
root; restarted, then dropped; never the shared 5432), the tests' tiny model (a char LSTM 1x32: generation is
cheap, the point is the fault handling), --workers real `celery worker` processes (threads pool) with the
production liveness settings (2 h visibility timeout, 10 s generate leases), and a fake Discord.
Jobs are submitted and followed as the bot does, through bot.jobs.Jobs (one instance, this process's event
loop): `submit` of the `improbable.generate` task with a GenerateRequest, then `wait` on the result backend.

Timeline: a kill at 0:20 of every minute (of the worker holding the most jobs then, by their leases); Redis restarted at 0:50 of minute int(0.4 × minutes), PostgreSQL at
0:50 of minute int(0.7 × minutes), each down --redis-down / --pg-down seconds. Submission runs for the whole
--minutes (longer if the last restart's windows need it), then the jobs in flight are drained.

What is counted, per job: completed; failed with a clear error (the user is told: the queue unavailable at
submit, a worker's failure); lost (never answered: the bot gave up on a silent job, timed out, or still had
no answer after --drain). Duplicates: `generations` rows per request id (> 1), final states stored per task
(SUCCESS or FAILURE published more than once on the result backend, watched by a pattern subscription),
answers that changed after the bot read them (stored result differs from the one received), and re-runs (a
job run again after a fault and answered from its recorded row: not a second answer, but counted). Also
counted: jobs taken over by a reaper (worker log lines), jobs the bot sent again because their message was
lost (bot/jobs.py), jobs whose user saw "the generator went quiet".
Latency (submit to answer, completed jobs) per fault: during = the jobs it hit (submitted from --window
before it began, and waiting for their answer at some moment from its start to --window after it ended);
before = submitted in the --window seconds before it and not hit; after = submitted between --window and
2 × --window after it ended. Before and after leave out jobs that another fault hit.
Prints tables, writes bench/results/faults_under_load.json (with `uptime` and the CPU model).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import platform
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.common import RESULTS, print_table
from bench.speed.queue_load import percentile

OUT = RESULTS / "faults_under_load.json"
KILL_AT, RESTART_AT = 20.0, 50.0  # seconds into a minute


@dataclass
class Fault:
    kind: str  # kill, redis, postgres
    at: float  # seconds from the start, planned
    start: float = 0.0  # seconds from the start, as done
    end: float = 0.0  # back (a kill: the moment of the kill)
    note: str = ""


@dataclass
class Outcome:
    index: int
    task_id: str
    sent: float  # seconds from the start
    answered: float | None = None
    kind: str = "unanswered"  # completed, failed, unavailable, stalled, timeout, unanswered
    message: str = ""
    generation_id: int | None = None
    digest: str = ""  # of the text received
    worker: str = ""
    rerun: bool = False  # answered from a row an earlier run of it recorded
    stall_notices: int = 0
    resent: int = 0  # times the bot sent it again (its message found nowhere: bot/jobs.py)

    @property
    def latency(self) -> float | None:
        return None if self.answered is None else self.answered - self.sent


LOST_KINDS = ("stalled", "timeout", "unanswered", "error")
CLEAR_KINDS = ("failed", "unavailable")


def plan(args) -> tuple[list[Fault], float]:
    """The faults in time order and how long jobs are submitted."""
    faults = [Fault("kill", 60.0 * m + KILL_AT) for m in range(args.minutes)]
    redis_minute, pg_minute = int(args.minutes * 0.4), int(args.minutes * 0.7)
    if redis_minute == pg_minute:
        raise SystemExit("--minutes must be at least 2 (Redis and PostgreSQL restart in different minutes)")
    faults += [Fault("redis", 60.0 * redis_minute + RESTART_AT), Fault("postgres", 60.0 * pg_minute + RESTART_AT)]
    faults.sort(key=lambda f: f.at)
    last = max(f.at + (args.redis_down if f.kind == "redis" else args.pg_down if f.kind == "postgres" else 0)
               for f in faults)
    return faults, max(60.0 * args.minutes, last + 2 * args.window + 5)


# -- the stack -------------------------------------------------------------------------------------------------

@dataclass
class Stack:
    services: object  # tests.worker.conftest.Services
    redis: object  # tests.faults.conftest.OwnRedis
    postgres: object  # tests.faults.conftest.PrivatePostgres
    checkpoint_id: int
    workers: list = field(default_factory=list)  # the live WorkerProcess of each slot
    ready: list = field(default_factory=list)  # seconds each restarted worker took to be ready

    def start_worker(self, slot: int, threads: int):
        from tests.worker.support import WorkerProcess

        worker = WorkerProcess(self.services, f"gen{slot}", "generate", "threads", threads)
        if slot < len(self.workers):
            self.workers[slot] = worker
        else:
            self.workers.append(worker)
        return worker


@contextmanager
def stack(args):
    """Own Redis, a private PostgreSQL cluster, the tiny model, --workers generate workers; all torn down."""
    import db
    from tests.faults.conftest import OwnRedis, PrivatePostgres, fault_env, tiny_checkpoint
    from tests.worker.conftest import Services
    from tests.worker.support import FakeDiscord

    with tempfile.TemporaryDirectory(prefix="faults-load-") as tmp:
        work = Path(tmp)
        (work / "redis").mkdir()
        (work / "logs").mkdir()
        redis, postgres, discord = OwnRedis(work / "redis"), PrivatePostgres(), FakeDiscord()
        redis.start()
        try:
            postgres.create()
            db.upgrade(postgres.url)
            env = fault_env(redis.url, postgres.url, work / "data", discord.url)
            env.pop("IMPROBABLE_PARTIAL_INTERVAL")  # the production interval (0.5 s)
            services = Services(env, postgres.url, work / "data", discord, work / "logs")
            with services.serving():
                built = Stack(services, redis, postgres, tiny_checkpoint(work / "model"))
                for slot in range(args.workers):
                    built.start_worker(slot, args.worker_threads)
                for w in built.workers:
                    w.wait_ready(120)
                yield built
        finally:
            from db.session import _cached_engine

            _cached_engine.cache_clear()
            redis.stop()
            postgres.drop()


# -- the faults ------------------------------------------------------------------------------------------------

def drive_faults(built: Stack, faults: list[Fault], t0: float, args, stop: threading.Event) -> None:
    """Each fault at its planned time (a thread): kill -9 a worker (in turn) and start it again at once;
    stop Redis / PostgreSQL for their downtime and start them again."""
    kills = 0
    for fault in faults:
        if stop.wait(max(0.0, t0 + fault.at - time.monotonic())):
            return
        fault.start = time.monotonic() - t0
        try:
            if fault.kind == "kill":
                slot, held = victim_slot(built, kills)
                kills += 1
                victim = built.workers[slot]
                victim.kill()
                fault.end = time.monotonic() - t0
                watch_ready(built.start_worker(slot, args.worker_threads), built.ready, time.monotonic())
                fault.note = f"{victim.hostname} holding {held} jobs"
            elif fault.kind == "redis":
                built.redis.restart(down_seconds=args.redis_down)
                fault.end = time.monotonic() - t0
            else:
                built.postgres.stop()
                time.sleep(args.pg_down)
                built.postgres.start()
                fault.end = time.monotonic() - t0
        except BaseException as e:  # noqa: BLE001 - said in the report, the load goes on
            fault.end = time.monotonic() - t0
            fault.note = f"{fault.note} FAILED: {type(e).__name__}: {e}".strip()
        print(f"  {fault.start:6.1f} s  {fault.kind} {fault.note} (back at {fault.end:.1f} s)", flush=True)


def victim_slot(built: Stack, kills: int) -> tuple[int, int]:
    """(the worker holding the most generate leases right now, how many; the next in turn on a tie): a kill
    should catch jobs in flight, not an idle worker."""
    import redis

    from worker.serve.leases import LEASES

    try:
        values = redis.Redis.from_url(built.redis.url, socket_connect_timeout=1).hvals(LEASES)
    except redis.exceptions.RedisError:
        values = []
    owners = Counter(v.split(b"\n", 1)[0].rsplit(b":", 1)[-1] for v in values)
    held = [owners[str(w.proc.pid).encode()] for w in built.workers]
    turn = kills % len(held)
    slot = max(range(len(held)), key=lambda i: (held[i], i == turn))
    return slot, held[slot]


def watch_ready(worker, restarted: list, started: float, limit: float = 180.0) -> None:
    """Append the seconds a restarted worker took to log `ready.` (None: not within `limit`), in a thread."""
    def watch():
        while time.monotonic() - started < limit:
            if worker.proc.poll() is None and b" ready." in worker.log_path.read_bytes():
                restarted.append(round(time.monotonic() - started, 1))
                return
            time.sleep(0.5)
        restarted.append(None)

    threading.Thread(target=watch, name="watch-ready", daemon=True).start()


# -- the result backend's final states --------------------------------------------------------------------------

class FinalStates:
    """Counts the SUCCESS and FAILURE states stored per task (the Redis backend publishes every state it
    stores on the task's key), resubscribing after Redis restarts."""

    def __init__(self, url: str):
        self.url = url
        self.finals: Counter = Counter()
        self.gaps = 0  # reconnections (a state stored meanwhile would be missed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="final-states", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import redis

        while not self._stop.is_set():
            try:
                client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.psubscribe("celery-task-meta-*")
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is not None:
                        self._count(message)
            except redis.exceptions.RedisError:
                self.gaps += 1
                self._stop.wait(0.2)

    def _count(self, message: dict) -> None:
        try:
            meta = json.loads(message["data"])
        except (TypeError, ValueError):
            return
        if meta.get("status") in ("SUCCESS", "FAILURE"):
            self.finals[meta.get("task_id")] += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


# -- the load: jobs submitted and followed as the bot does -------------------------------------------------------

def job_payload(checkpoint_id: int, index: int, chars: int) -> dict:
    """A GenerateRequest as the bot sends it (its JSON payload): 50 users in 5 servers, a seed per job."""
    from core.contracts import GenerateRequest
    from tests.worker.support import generate_request

    request = generate_request(checkpoint_id, seed=index, max_tokens=chars, user_id=1000 + index % 50,
                               guild_id=1 + index % 5)
    return GenerateRequest.model_validate(request).payload()


async def follow_one(jobs, outcome: Outcome, payload: dict, t0: float) -> None:
    from bot.jobs import GENERATE, JobError, JobStalled, JobTimeout, Unavailable

    async def progress(state: str, meta: dict) -> None:
        if state == "STALLED":
            outcome.stall_notices += 1

    submitting, job = True, None
    try:
        job = await jobs.submit(GENERATE, payload, user_id=payload["user_id"], guild_id=payload["guild_id"],
                                task_id=outcome.task_id)
        submitting = False
        result = await jobs.wait(job, progress)
    except JobError as e:
        outcome.answered, outcome.message = time.monotonic() - t0, e.message
        outcome.kind = ("unavailable" if submitting or isinstance(e, Unavailable) else "stalled"
                        if isinstance(e, JobStalled) else "timeout" if isinstance(e, JobTimeout) else "failed")
        if outcome.kind in LOST_KINDS:
            outcome.answered = None  # the bot gave up: no answer came
        return
    except Exception as e:  # noqa: BLE001 - what the bot would log as "something went wrong": a bug, counted
        outcome.kind, outcome.message = "error", f"{type(e).__name__}: {e}"
        return
    finally:
        outcome.resent = job.resent if job is not None else 0
    outcome.answered, outcome.kind = time.monotonic() - t0, "completed"
    outcome.generation_id, outcome.worker = result.get("generation_id"), result.get("worker", "")
    outcome.digest, outcome.rerun = digest(result), bool(result.get("duplicate"))


def digest(result: dict) -> str:
    return hashlib.sha256(f"{result.get('generation_id')}\n{result.get('text')}".encode()).hexdigest()[:16]


async def submit_all(built: Stack, args, duration: float, t0: float) -> list[Outcome]:
    """--jobs jobs evenly spread over `duration` seconds from t0, each followed to its end; then the ones in
    flight are given --drain seconds."""
    from bot.jobs import Jobs

    jobs = Jobs()
    outcomes, tasks = [], []
    gap = duration / args.jobs
    for index in range(args.jobs):
        await asyncio.sleep(max(0.0, t0 + index * gap - time.monotonic()))
        outcome = Outcome(index, uuid.uuid4().hex, time.monotonic() - t0)
        outcomes.append(outcome)
        payload = job_payload(built.checkpoint_id, index, args.chars)
        tasks.append(asyncio.create_task(follow_one(jobs, outcome, payload, t0)))
        if index % max(1, args.jobs // 20) == 0:
            done = sum(o.kind != "unanswered" for o in outcomes)
            print(f"  {outcome.sent:6.1f} s  submitted {index + 1}, finished {done}", flush=True)
    _, pending = await asyncio.wait(tasks, timeout=args.drain)
    for task in pending:  # still no answer after the drain: lost
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return outcomes


def warm_up(built: Stack, args) -> None:
    """A few jobs through every worker before the clock starts (torch, the checkpoint, first batches)."""
    from worker.app import enqueue

    pending = [enqueue("improbable.generate", job_payload(built.checkpoint_id, 10**6 + i, args.chars))
               for i in range(4 * len(built.workers))]
    for p in pending:
        p.get(timeout=120)


def run_load(built: Stack, args, faults: list[Fault], duration: float) -> tuple[list[Outcome], float]:
    warm_up(built, args)
    stop = threading.Event()
    t0 = time.monotonic() + 1.0
    driver = threading.Thread(target=drive_faults, args=(built, faults, t0, args, stop), name="faults")
    driver.start()
    try:
        outcomes = asyncio.run(submit_all(built, args, duration, t0))
    finally:
        stop.set()
        driver.join()
    return outcomes, time.monotonic() - t0


# -- counting -----------------------------------------------------------------------------------------------------

def rows_per_request(task_ids: set[str]) -> tuple[Counter, int]:
    """(`generations` rows per request id of these jobs, request ids with more than one row in the whole table)."""
    from sqlalchemy import func, select

    import db
    from db.models import Generation

    with db.session_scope() as session:
        counts = session.execute(select(Generation.request_id, func.count()).group_by(Generation.request_id)).all()
    per_job = Counter({request_id: n for request_id, n in counts if request_id in task_ids})
    return per_job, sum(1 for _, n in counts if n > 1)


def changed_answers(outcomes: list[Outcome]) -> list[str]:
    """Completed jobs whose stored result now differs from the one the bot received."""
    from worker.app import app

    changed = []
    for o in outcomes:
        if o.kind == "completed":
            meta = app.backend.get_task_meta(o.task_id)
            if meta.get("status") != "SUCCESS" or digest(meta.get("result") or {}) != o.digest:
                changed.append(o.task_id)
    return changed


def republished(built: Stack) -> int:
    """Jobs that a reaper took over from a dead worker (its log line), all workers."""
    return sum(p.read_text(errors="replace").count("re-publishing it") for p in built.services.logs.glob("*.log"))


def count(built: Stack, outcomes: list[Outcome], finals: FinalStates) -> dict:
    kinds = Counter(o.kind for o in outcomes)
    ids = {o.task_id for o in outcomes}
    rows, duplicated_anywhere = rows_per_request(ids)
    completed = [o for o in outcomes if o.kind == "completed"]
    return {
        "submitted": len(outcomes), "completed": kinds["completed"],
        "failed_clear_error": sum(kinds[k] for k in CLEAR_KINDS),
        "lost": sum(kinds[k] for k in LOST_KINDS),
        "by_kind": dict(kinds),
        "messages": dict(Counter(f"{o.kind}: {o.message}" for o in outcomes if o.kind != "completed")),
        "duplicate_rows": sum(n - 1 for n in rows.values() if n > 1),
        "request_ids_with_several_rows_in_table": duplicated_anywhere,
        "completed_without_row": sum(1 for o in completed if rows[o.task_id] == 0),
        "failed_but_recorded": sum(1 for o in outcomes if o.kind != "completed" and rows[o.task_id] > 0),
        "answered_twice": sum(1 for i in ids if finals.finals[i] > 1),
        "final_state_seen": sum(1 for i in ids if finals.finals[i] > 0),  # (the subscription works: ~ answered)
        "answer_changed_after_read": len(changed_answers(outcomes)),
        "reruns_answered_from_row": sum(o.rerun for o in completed),
        "republished_by_reaper": republished(built),
        "stall_notices_shown": sum(1 for o in outcomes if o.stall_notices),
        "sent_again_by_bot": sum(o.resent for o in outcomes),
        "subscription_gaps": finals.gaps,
        "restarted_workers_ready_s": built.ready,
    }


# -- latency per phase --------------------------------------------------------------------------------------------

def hit(o: Outcome, fault: Fault, window: float) -> bool:
    """Whether the job was waiting for its answer at some moment from the fault's start to --window after it
    ended (the fault could slow or lose it)."""
    return o.sent < fault.end + window and (o.answered is None or o.answered >= fault.start)


def raw_phases(fault: Fault, faults: list[Fault], outcomes: list[Outcome], window: float) -> dict[str, list]:
    """The jobs before / during / after the fault (module docstring); before and after leave out the jobs that
    another fault hit."""
    start, end = fault.start, fault.end
    spared = [o for o in outcomes if not any(hit(o, g, window) for g in faults if g is not fault)]
    return {
        "before": [o for o in spared if start - window <= o.sent < start and not hit(o, fault, window)],
        "during": [o for o in outcomes if start - window <= o.sent and hit(o, fault, window)],
        "after": [o for o in spared if end + window <= o.sent < end + 2 * window],
    }


def summary(jobs: list[Outcome]) -> dict:
    latencies = [o.latency for o in jobs if o.kind == "completed"]
    return {"jobs": len(jobs), "completed": len(latencies),
            "p50_s": round(percentile(latencies, 50), 2) if latencies else None,
            "p95_s": round(percentile(latencies, 95), 2) if latencies else None,
            "max_s": round(max(latencies), 2) if latencies else None,
            "not_completed": dict(Counter(o.kind for o in jobs if o.kind != "completed"))}


def latency_table(faults: list[Fault], outcomes: list[Outcome], window: float) -> list[dict]:
    """One row per fault, and one for all the kills pooled (a job counted once per phase)."""
    rows, pooled = [], {"before": {}, "during": {}, "after": {}}
    for f in faults:
        jobs = raw_phases(f, faults, outcomes, window)
        rows.append({"fault": f.kind, "note": f.note, "start_s": round(f.start, 1), "end_s": round(f.end, 1),
                     **{name: summary(js) for name, js in jobs.items()}})
        if f.kind == "kill":
            for name, js in jobs.items():
                pooled[name].update((o.task_id, o) for o in js)
    kills = sum(f.kind == "kill" for f in faults)
    if kills:
        rows.append({"fault": f"all {kills} kills", "note": "", "start_s": None, "end_s": None,
                     **{name: summary(list(js.values())) for name, js in pooled.items()}})
    return rows


def steady(faults: list[Fault], outcomes: list[Outcome], window: float) -> dict:
    """The jobs that no fault hit."""
    return summary([o for o in outcomes if not any(hit(o, f, window) for f in faults)])


# -- the report ---------------------------------------------------------------------------------------------------

def machine() -> dict:
    from trainer.precision import cpu_model

    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")),
                 cpu_model())
    return {"cpu": model, "platform": platform.platform(), "python": platform.python_version(),
            "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}


def cell(phase: dict) -> str:
    if not phase["completed"]:
        return f"– ({phase['jobs']})"
    failed = sum(phase["not_completed"].values())
    return f"{phase['p50_s']} / {phase['p95_s']} ({phase['completed']}{f', {failed} not' if failed else ''})"


def print_report(counts: dict, table: list[dict], steady_row: dict, args, wall: float) -> None:
    print_table(f"faults under load: {counts['submitted']} jobs over {wall / 60:.1f} minutes", [{
        "submitted": counts["submitted"], "completed": counts["completed"],
        "failed, clear error": counts["failed_clear_error"], "lost": counts["lost"],
        "duplicate rows": counts["duplicate_rows"], "answered twice": counts["answered_twice"],
        "answer changed": counts["answer_changed_after_read"], "re-runs from row": counts["reruns_answered_from_row"],
        "taken over": counts["republished_by_reaper"], "sent again": counts["sent_again_by_bot"],
        "completed without row": counts["completed_without_row"]}])
    print_table("latency, p50 / p95 s (completed jobs; ', n not': jobs of the window that failed or were lost)",
                [{"fault": r["fault"], "at s": r["start_s"], "back s": r["end_s"], "before": cell(r["before"]),
                  "during": cell(r["during"]), "after": cell(r["after"])} for r in table])
    print(f"\nclear of every fault: {cell(steady_row)}; restarted workers ready after {counts['restarted_workers_ready_s']} s")
    for message, n in sorted(counts["messages"].items(), key=lambda kv: -kv[1]):
        print(f"  {n} × {message}")


def keep_detail(folder: Path, built: Stack, outcomes: list[Outcome]) -> None:
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "jobs.json").write_text(json.dumps([asdict(o) for o in outcomes]))
    for log in built.services.logs.glob("*.log"):
        shutil.copyfile(log, folder / log.name)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=int, default=10, help="submission time (a worker killed each minute)")
    parser.add_argument("--jobs", type=int, default=2000, help="jobs submitted, evenly spread")
    parser.add_argument("--chars", type=int, default=1000,
                        help="characters a job generates (5 × a default /generate: a kill catches jobs in flight)")
    parser.add_argument("--workers", type=int, default=2, help="generate worker processes")
    parser.add_argument("--worker-threads", type=int, default=16, help="celery -c of each")
    parser.add_argument("--redis-down", type=float, default=10.0, help="seconds Redis stays down")
    parser.add_argument("--pg-down", type=float, default=10.0, help="seconds PostgreSQL stays down")
    parser.add_argument("--window", type=float, default=10.0, help="seconds of each before/during/after window")
    parser.add_argument("--drain", type=float, default=330.0, help="seconds the jobs in flight get at the end")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--detail", type=Path, help="a folder for every job's outcome and the workers' logs")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    faults, duration = plan(args)
    at_start = machine()
    print(f"{args.jobs} jobs over {duration:.0f} s, {len(faults)} faults; {at_start['cpu']}; {at_start['uptime']}",
          flush=True)
    with stack(args) as built:
        finals = FinalStates(built.redis.url)
        try:
            outcomes, wall = run_load(built, args, faults, duration)
            time.sleep(2.0)  # the last states published
        finally:
            finals.close()
        counts = count(built, outcomes, finals)
        if args.detail:
            keep_detail(args.detail, built, outcomes)
    table = latency_table(faults, outcomes, args.window)
    steady_row = steady(faults, outcomes, args.window)
    print_report(counts, table, steady_row, args, wall)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": f"python -m bench.speed.faults_under_load --minutes {args.minutes} --jobs {args.jobs}",
        "machine": {**at_start, "uptime_end": machine()["uptime"]},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "submission_seconds": duration, "wall_seconds": round(wall, 1), "counts": counts,
        "faults": [asdict(f) for f in faults], "latency": table, "clear_of_faults": steady_row,
        "jobs_not_completed": [asdict(o) for o in outcomes if o.kind != "completed"],
        "reruns": [asdict(o) for o in outcomes if o.rerun]}, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
