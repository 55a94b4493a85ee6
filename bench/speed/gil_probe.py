"""Does a Python thread in the engine's process slow the engine down more than the CPU it takes?

    .venv/bin/python -m bench.speed.gil_probe [--busy 0 0.1 0.2 0.35] [--rounds 3] [--jobs 128] [--chars 280]

The engine alone (bench/speed/queue_load.py's EngineAlone: the queue model, one intra-op thread) runs `--jobs`
jobs of `--chars` characters while one other thread of the same process runs pure Python for a share `--busy` of
each millisecond-scale period and sleeps the rest, as Celery's consumer and task threads do between messages. On a
host with a core to spare for that thread, any slowdown is the GIL's: the engine's thread lets go of it for every
torch op and must wait to take it back. Rounds alternate the busy shares; medians. Prints a table and writes
bench/results/gil_probe.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time

from bench.common import RESULTS, print_table
from trainer.precision import cpu_model

PERIOD_S = 0.002  # one busy-then-idle cycle of the other thread


def busy_thread(share: float, stop: threading.Event, used: list[float]) -> None:
    """Pure Python for `share` of every PERIOD_S, then sleep; appends the thread's CPU seconds when stopped."""
    start = time.thread_time()
    while not stop.is_set():
        until = time.perf_counter() + PERIOD_S * share
        while time.perf_counter() < until:
            sum(range(100))
        time.sleep(PERIOD_S * (1 - share))
    used.append(time.thread_time() - start)


def one_run(alone, share: float, jobs: int, chars: int) -> dict:
    stop, used = threading.Event(), []
    thread = threading.Thread(target=busy_thread, args=(share, stop, used), daemon=True) if share else None
    if thread:
        thread.start()
    result = alone.run(jobs, chars)
    stop.set()
    if thread:
        thread.join()
    return {"chars_per_s": result["chars_per_s"], "wall_s": result["wall_s"],
            "busy_cpu_share": (used[0] / result["wall_s"]) if used else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.35])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=128)
    parser.add_argument("--chars", type=int, default=280)
    args = parser.parse_args()
    from bench.speed.queue_load import EngineAlone, ensure_model

    alone = EngineAlone(ensure_model(60), argparse.Namespace(torch_threads=1, int8=True, precision="fp32"))
    runs: dict[float, list[dict]] = {share: [] for share in args.busy}
    load_start = os.getloadavg()
    for _ in range(args.rounds):
        for share in args.busy:
            runs[share].append(one_run(alone, share, args.jobs, args.chars))
    quiet = statistics.median(r["chars_per_s"] for r in runs[args.busy[0]])
    rows = []
    for share, results in runs.items():
        speed = statistics.median(r["chars_per_s"] for r in results)
        rows.append({"busy_share": share, "busy_thread_cpu": round(statistics.median(r["busy_cpu_share"] for r in results), 3),
                     "engine_chars_per_s": round(speed), "vs_first": round(speed / quiet, 3),
                     "runs": [round(r["chars_per_s"]) for r in results]})
    print_table(f"engine alone ({args.jobs} jobs x {args.chars} chars, 1 torch thread) beside a busy Python thread, "
                f"switch interval {sys.getswitchinterval() * 1000:.1f} ms", rows)
    host = {"cpu": cpu_model(), "cores": os.cpu_count(), "load_average_at_start": load_start,
            "load_average_at_end": os.getloadavg()}
    print(f"\nCPU {host['cpu']}, {host['cores']} cores; load {load_start} -> {host['load_average_at_end']}")
    out = RESULTS / "gil_probe.json"
    out.write_text(json.dumps({"command": " ".join(["python -m bench.speed.gil_probe", *sys.argv[1:]]),
                               "machine": host, "params": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
