"""Many personas: throughput, p95 latency and checkpoint-cache hit rate with 1, 10 and 100 distinct personas,
at the shapes of bench/speed/generation.py (the shipped 2x512 char LSTM, 120 characters per request, 128 and
256 concurrent requests).

    python -m bench.speed.many_personas                       # about 3 minutes on a loaded 2-core VM
    python -m bench.speed.many_personas --personas 1 100 --concurrency 128 --waves 2

The personas are copies of trainer/pretrained/base.safetensors with every weight perturbed by its own seed,
saved as separate checkpoints in a temporary folder: distinct files, distinct cache entries, distinct batches
(the engine batches by checkpoint). Each request's persona is drawn Zipf (P(k) ∝ k^-s, s = --zipf) and each
persona belongs to its own server (the request's owner), as a per-server persona would.

Requests go through the serving path of a generate worker, in this process: 16 hand-off threads (a worker's
Celery threads) acquire the checkpoint from worker/serve/cache.py's CheckpointCache (a miss reads the file in
that thread and builds the model on the engine's thread, as worker/serve/runtime.py does) and submit to
worker/serve/engine.py's Engine (the worker's default intra-op threads). A wave is --concurrency requests
handed over at once; --waves waves run back to back on one cache, the first from cold. Reported per
(personas, concurrency): chars/s (and per CPU second of this process, less disturbed by a loaded machine)
and p95 latency (hand-off to last token) over the warm waves, the cache's
hit rate over all waves and over the warm ones, loads, evictions, and the mean batch a step served. Then the
same at 100 personas with the cache capped at --small-cache-mb, to show its eviction, and with
--compare-loads that capped case again with the models built on the hand-off threads instead of the
engine's (what a worker did before the engine became its only torch user). JSON to
bench/results/many_personas.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

from bench.common import RESULTS, ROOT, print_table
from bench.speed.queue_load import percentile
from core.settings import get_settings

BASE = ROOT / "trainer" / "pretrained" / "base.safetensors"
HANDOFF_THREADS = 16  # a generate worker's Celery threads (docker-compose.yml: -c 16)


def make_personas(base: Path, count: int, folder: Path) -> list[Path]:
    """`count` checkpoints: the base's weights, each perturbed (relative noise 1e-3, its own seed); those
    already in `folder` (an earlier run's, --personas-dir) are kept."""
    import torch

    from trainer.checkpoint import load, save

    paths = [folder / f"persona-{i}.safetensors" for i in range(count)]
    if all(p.is_file() for p in paths):
        return paths
    checkpoint = load(base)
    originals = {k: v.clone() for k, v in checkpoint.model.state_dict().items()}
    for i in range(count):
        generator = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for name, tensor in checkpoint.model.state_dict().items():
                if tensor.is_floating_point():
                    noise = torch.randn(tensor.shape, generator=generator) * originals[name].std() * 1e-3
                    tensor.copy_(originals[name] + noise)
        save(paths[i], checkpoint.model, checkpoint.tokenizer, {"persona": f"persona-{i}"})
    return paths


def zipf_draws(personas: int, n: int, s: float, rng: random.Random) -> list[int]:
    weights = [1 / (k + 1) ** s for k in range(personas)]
    return rng.choices(range(personas), weights=weights, k=n)


class Worker:
    """The serving half of a generate worker: one engine, one cache, the hand-off threads."""

    def __init__(self, paths: list[Path], cache_bytes: int, threads: int, loads_on: str = "engine"):
        from worker.serve.cache import CheckpointCache
        from worker.serve.engine import Engine

        self.paths, self.loads_on = paths, loads_on
        self.engine = Engine("cpu", threads, int8="off")
        self.cache = CheckpointCache(self.load, cache_bytes)
        self.pool = ThreadPoolExecutor(HANDOFF_THREADS, thread_name_prefix="handoff")

    def load(self, index: int):
        data, name = self.paths[index].read_bytes(), self.paths[index].name  # read here
        if self.loads_on == "engine":  # built on the engine's thread, as the worker does
            return *self.engine.load(index, data, name, "fp32"), index
        from trainer.checkpoint import from_bytes  # built on the calling thread (the design it replaced)
        from worker.serve.cache import for_serving

        return *for_serving(from_bytes(data, name=name)), index

    def hand_off(self, persona: int, seed: int, chars: int, done: dict) -> object:
        from core.contracts import SamplingParams

        started = time.perf_counter()
        entry = self.cache.acquire(persona)
        job = self.engine.submit(entry, "It was", SamplingParams(max_tokens=chars, temperature=0.8, seed=seed),
                                 owner=persona)

        def finished(future):
            self.cache.release(entry)
            done[seed] = (time.perf_counter() - started, len(future.result().text))

        job.future.add_done_callback(finished)
        return job.future

    def wave(self, draws: list[int], chars: int, first_seed: int) -> dict:
        """Hand `draws` over at once; (wall seconds, latencies, chars) when every one is answered."""
        done: dict = {}
        started, cpu, steps = time.perf_counter(), time.process_time(), self.engine.steps
        handed = [self.pool.submit(self.hand_off, p, first_seed + i, chars, done) for i, p in enumerate(draws)]
        wait([h.result() for h in handed], timeout=600)
        wall = time.perf_counter() - started
        return {"wall": wall, "cpu": time.process_time() - cpu, "latencies": [d[0] for d in done.values()],
                "chars": sum(d[1] for d in done.values()), "steps": self.engine.steps - steps}


def run_case(paths: list[Path], personas: int, concurrency: int, args, cache_bytes: int, threads: int,
             loads_on: str = "engine") -> dict:
    worker = Worker(paths[:personas], cache_bytes, threads, loads_on)
    rng = random.Random(personas * 1000 + concurrency)
    waves, counts = [], []
    for w in range(args.waves):
        draws = zipf_draws(personas, concurrency, args.zipf, rng)
        before = (worker.cache.hits, worker.cache.loads)
        waves.append(worker.wave(draws, args.chars, w * concurrency))
        counts.append((worker.cache.hits - before[0], worker.cache.loads - before[1], len(set(draws))))
    worker.pool.shutdown()
    warm, warm_counts = waves[1:] or waves, counts[1:] or counts
    latencies = [x for wave in warm for x in wave["latencies"]]
    chars, wall = sum(w["chars"] for w in warm), sum(w["wall"] for w in warm)
    hits, loads = worker.cache.hits, worker.cache.loads
    warm_hits, warm_loads = sum(c[0] for c in warm_counts), sum(c[1] for c in warm_counts)
    return {"personas": personas, "concurrency": concurrency, "cache_mb": round(cache_bytes / 2**20),
            "loads_on": loads_on,
            "chars_s": round(chars / wall), "chars_per_cpu_s": round(chars / sum(w["cpu"] for w in warm)),
            "p50_s": round(percentile(latencies, 50), 3),
            "p95_s": round(percentile(latencies, 95), 3),
            "cold_wave_s": round(waves[0]["wall"], 2),
            "hit_rate": round(hits / (hits + loads), 3),
            "warm_hit_rate": round(warm_hits / (warm_hits + warm_loads), 3),
            "loads": loads, "evictions": worker.cache.evictions, "resident": len(worker.cache),
            "resident_mb": round(worker.cache.n_bytes / 2**20), "distinct_per_wave": round(
                sum(c[2] for c in warm_counts) / len(warm_counts), 1),
            "streams_per_step": round(chars / max(1, sum(w["steps"] for w in warm)), 1)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--personas", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--chars", type=int, default=120, help="characters per request (generation.py's)")
    parser.add_argument("--waves", type=int, default=3, help="waves per case; the first one is cold")
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--small-cache-mb", type=int, default=256, help="the capped-cache case (0: skip it)")
    parser.add_argument("--compare-loads", action="store_true",
                        help="also the capped case with models built on the hand-off threads, not the engine's")
    parser.add_argument("--personas-dir", type=Path, help="keep the persona checkpoints here (reused by later runs)")
    parser.add_argument("--out", type=Path, default=RESULTS / "many_personas.json")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    from trainer.precision import cpu_model
    from worker.serve.runtime import engine_threads

    settings = get_settings()
    threads = settings.torch_threads or engine_threads()
    cache_bytes = settings.model_cache_mb * 2**20
    load_at_start = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="many-personas-") as tmp:
        started = time.perf_counter()
        paths = make_personas(BASE, max(args.personas), args.personas_dir or Path(tmp))
        made, checkpoint_mb = time.perf_counter() - started, paths[0].stat().st_size / 2**20
        print(f"{len(paths)} persona checkpoints of {checkpoint_mb:.1f} MB in {made:.0f} s", flush=True)
        cases = [(p, n, cache_bytes, "engine") for p in args.personas for n in args.concurrency]
        if args.small_cache_mb:
            cases += [(max(args.personas), n, args.small_cache_mb * 2**20, "engine") for n in args.concurrency]
        if args.compare_loads:  # the capped cache again, models built on the hand-off threads (as before)
            cases += [(max(args.personas), n, args.small_cache_mb * 2**20 or cache_bytes, "handoff")
                      for n in args.concurrency]
        for personas, concurrency, cap, loads_on in cases:
            rows.append(run_case(paths, personas, concurrency, args, cap, threads, loads_on))
            print(json.dumps(rows[-1]), flush=True)
    one = {r["concurrency"]: r["chars_s"] for r in rows if r["personas"] == 1}
    for r in rows:
        base = one.get(r["concurrency"])
        r["throughput_vs_1_persona"] = round(r["chars_s"] / base, 3) if base else None
    print_table(f"many personas: 2x512 char LSTM, {args.chars} chars/request, Zipf s={args.zipf}, engine threads "
                f"{threads}, {cpu_model()}", rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "engine_threads": threads,
                    "load_average_at_start": load_at_start, "load_average_at_end": os.getloadavg()},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "checkpoint_mb": round(checkpoint_mb, 2),
        "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
