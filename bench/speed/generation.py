"""Generation speed against this machine's physical limits, and int8 batch-1 serving.

    python -m bench.speed.generation                    # about 3-5 minutes on a loaded 2-core VM
    python -m bench.speed.generation --rounds 5 --loss-bytes 100000 --loss-streams 1

In one process, in this order:
1. the limits: a bare `torch.mm` with the shapes of one batched LSTM step (embedding→4H, h→4H, [x|h]→4H, h→V)
   at 1, 128 and 256 rows, in the precision `pick_precision` picks and in float32: attainable FLOP/s; and a
   `torch.clone` of a 256 MB tensor: memory bandwidth (bytes read + written per second);
2. generation of the shipped base model (trainer/pretrained/base.safetensors, a 2x512 char LSTM) through
   trainer/sample.py's BatchSampler at 1, 128 and 256 streams: aggregate chars/s, and each as a share of the
   matmul limit at that batch (FLOPs of one step × steps/s); at 1 stream also the weight bytes/s it implies
   (every step reads every weight once) against the measured bandwidth;
3. int8 (trainer/quantize.py) against float32 at 1 stream: chars/s through the same sampler, and held-out
   loss on Alice by stepping (kept only where faster and within 0.01 nats);
4. the same single stream through the serving engine (worker/serve/engine.py, submit → future, as a generate
   worker serves it, with the worker's default one engine thread on 2 cores): generate_int8 "off" against "on".

The machine is a shared, loaded VM: every figure is the median of `--rounds` rounds with the variants
interleaved within each round (a noisy neighbour slows all alike), and CPU time (time.process_time, this
process's user+system on all threads) is reported next to wall time. chars/s per CPU second is the figure
least disturbed by the neighbours. Prints tables with the targets side by side; JSON to
bench/results/generation.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from pathlib import Path

import torch

from bench.common import RESULTS, ROOT, corpus_file
from core.contracts import SamplingParams
from trainer.checkpoint import load
from trainer.precision import cpu_model, pick_precision
from trainer.quantize import held_out_loss, quantize_for_serving
from trainer.sample import BatchSampler

BASE = ROOT / "trainer" / "pretrained" / "base.safetensors"
TARGETS = {"share_of_matmul_limit_128": 0.50, "single_stream_chars_s": 2_000, "int8_loss_tolerance_nats": 0.01}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def timed(fn, repeats: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) per call of fn, over `repeats` calls after one warm-up call."""
    fn()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - wall) / repeats, (time.process_time() - cpu) / repeats


def median_pair(samples: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples)


# --- 1. limits ------------------------------------------------------------------------------------------

def step_shapes(embed: int, hidden: int, layers: int, vocab: int) -> list[tuple[int, int]]:
    """(in, out) of every matmul in one LSTM step (trainer/model.py: lstm_cell's ih and hh, then the head)."""
    shapes = []
    for i in range(layers):
        shapes += [(embed if i == 0 else hidden, 4 * hidden), (hidden, 4 * hidden)]
    return shapes + [(hidden, vocab)]


def step_flops(shapes: list[tuple[int, int]], batch: int) -> int:
    return sum(2 * batch * k * n for k, n in shapes)


def matmul_limits(shapes, batches, precisions, rounds: int) -> dict:
    """Attainable FLOP/s of bare torch.mm with exactly one step's shapes, per (precision, batch)."""
    operands = {(p, b): [(torch.randn(b, k, dtype=DTYPES[p]), torch.randn(k, n, dtype=DTYPES[p])) for k, n in shapes]
                for p in precisions for b in batches}
    samples: dict = {key: [] for key in operands}
    for _ in range(rounds):
        for key, pairs in operands.items():
            repeats = max(3, 2000 // key[1])
            samples[key].append(timed(lambda pairs=pairs: [torch.mm(a, w) for a, w in pairs], repeats))
    limits = {}
    for (precision, batch), s in samples.items():
        wall, cpu = median_pair(s)
        flops = step_flops(shapes, batch)
        limits[f"{precision}@{batch}"] = {"precision": precision, "batch": batch, "step_flops": flops,
                                          "mm_seconds": wall, "mm_cpu_seconds": cpu,
                                          "gflop_s": flops / wall / 1e9, "gflop_per_cpu_s": flops / cpu / 1e9}
    return limits


def memory_bandwidth(rounds: int, megabytes: int = 256) -> dict:
    """Bytes read + written per second by a 256 MB copy: into a preallocated tensor (`copy_`, a memcpy: the
    bandwidth) and by `clone` (which also allocates, so pays the kernel's page faults and zeroing of fresh
    memory: what a careless allocation per step would cost)."""
    source = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32)
    target = torch.empty_like(source)
    target.copy_(source)  # touch every page once
    samples: dict[str, list] = {"copy": [], "clone": []}
    for _ in range(rounds):
        samples["copy"].append(timed(lambda: target.copy_(source), 3))
        samples["clone"].append(timed(lambda: source.clone(), 3))
    moved = 2 * source.numel() * 4
    result: dict = {"tensor_mb": megabytes}
    for name, s in samples.items():
        wall, cpu = median_pair(s)
        result[f"{name}_gb_s"], result[f"{name}_gb_per_cpu_s"] = moved / wall / 1e9, moved / cpu / 1e9
    result["gb_s"] = result["copy_gb_s"]
    return result


# --- 2. generation --------------------------------------------------------------------------------------

def sampler_run(model, tokenizer, streams: int, chars: int) -> tuple[float, float]:
    """(wall, CPU) seconds for `streams` streams of `chars` characters each; prompts are fed outside the clock."""
    sampler = BatchSampler(model, tokenizer)
    for i in range(streams):
        sampler.add("It was", SamplingParams(max_tokens=chars, temperature=0.8, seed=i))
    cpu, wall = time.process_time(), time.perf_counter()
    sampler.run()
    return time.perf_counter() - wall, time.process_time() - cpu


def bench_generation(variants: dict, tokenizer, plan: dict[int, int], rounds: int) -> list[dict]:
    """Every (variant, streams) once per round, interleaved; medians."""
    samples: dict = {(name, s): [] for name in variants for s in plan}
    for model in variants.values():  # warm-up: first-call allocations and kernel selection stay off the clock
        sampler_run(model, tokenizer, 1, 8)
    for _ in range(rounds):
        for (name, streams), bucket in samples.items():
            bucket.append(sampler_run(variants[name], tokenizer, streams, plan[streams]))
    rows = []
    for (name, streams), s in samples.items():
        wall, cpu = median_pair(s)
        chars = streams * plan[streams]
        rows.append({"weights": name, "streams": streams, "chars_per_stream": plan[streams],
                     "chars_s": round(chars / wall), "chars_per_cpu_s": round(chars / cpu),
                     "steps_s": round(plan[streams] / wall, 1)})
    return rows


def weight_bytes(model) -> int:
    """Bytes a step reads: every LSTM and head weight/bias (the embedding contributes one row)."""
    return sum(p.numel() * p.element_size() for name, p in model.named_parameters() if not name.startswith("embed"))


# --- 3. int8 --------------------------------------------------------------------------------------------

def alice_ids(tokenizer, size: int) -> torch.Tensor:
    text = corpus_file("alice").read_text(encoding="utf-8", errors="replace")
    middle = len(text) // 2 - size // 2  # away from the Gutenberg front matter
    return torch.tensor(tokenizer.encode(text[middle: middle + size]), dtype=torch.long)


def print_table(title: str, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    cells = [[f"{v:,.3g}" if isinstance(v, float) else str(v) for v in (r.get(k, "") for k in keys)] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    print(f"\n## {title}\n")
    print("| " + " | ".join(k.ljust(w) for k, w in zip(keys, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for c in cells:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(c, widths)) + " |")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(BASE))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, nargs="*", default=[1, 128, 256])
    parser.add_argument("--chars", type=int, default=120, help="characters per stream (x4 at one stream)")
    parser.add_argument("--loss-bytes", type=int, default=100_000)
    parser.add_argument("--loss-streams", type=int, default=16,
                        help="contiguous slices stepped side by side for the loss (1 = exactly batch-1 serving)")
    parser.add_argument("--json", default=str(RESULTS / "generation.json"))
    return parser.parse_args()


def measure_limits(shapes, streams: list[int], precisions: list[str], rounds: int) -> tuple[dict, dict]:
    """(matmul limits, memory bandwidth), printed as one table."""
    limits = matmul_limits(shapes, streams, precisions, rounds)
    bandwidth = memory_bandwidth(rounds)
    print_table(f"limits on {cpu_model()} ({torch.get_num_threads()} threads)",
                [{"what": k, "GFLOP/s": v["gflop_s"], "GFLOP/cpu-s": v["gflop_per_cpu_s"]} for k, v in limits.items()]
                + [{"what": f"{name} {bandwidth['tensor_mb']} MB (GB/s, not GFLOP)",
                    "GFLOP/s": bandwidth[f"{name}_gb_s"], "GFLOP/cpu-s": bandwidth[f"{name}_gb_per_cpu_s"]}
                   for name in ("copy", "clone")])
    return limits, bandwidth


def generation_rows(variants: dict, picked: str, tokenizer, plan: dict[int, int], shapes, limits: dict,
                    bandwidth: dict, rounds: int) -> list[dict]:
    """Generation in fp32 and the picked precision, each row as a share of its matmul limit (and, at one
    stream, of the memory bandwidth)."""
    rows = bench_generation({k: v for k, v in variants.items() if k == "fp32" or k == picked}, tokenizer,
                            plan, rounds)
    for row in rows:
        limit = limits[f"{row['weights']}@{row['streams']}"]
        achieved = step_flops(shapes, row["streams"]) * row["steps_s"]
        row["share_of_mm_limit"] = round(achieved / 1e9 / limit["gflop_s"], 3)
        if row["streams"] == 1:
            row["weight_gb_s"] = round(weight_bytes(variants[row["weights"]]) * row["steps_s"] / 1e9, 2)
            row["share_of_bandwidth"] = round(row["weight_gb_s"] / bandwidth["gb_s"], 3)
    return rows


def int8_batch1(variants: dict, tokenizer, chars: int, args: argparse.Namespace) -> dict:
    """int8 against fp32 at one stream: speed through the same sampler, held-out loss by stepping."""
    speed = bench_generation({"fp32": variants["fp32"], "int8": variants["int8"]}, tokenizer, {1: chars},
                             args.rounds)
    ids = alice_ids(tokenizer, args.loss_bytes)
    losses = {}
    for name in ("fp32", "int8"):
        start = time.perf_counter()
        losses[name] = held_out_loss(variants[name], ids, args.loss_streams)
        print(f"loss {name}: {losses[name]:.4f} nats/char ({len(ids):,} chars, {time.perf_counter() - start:.0f} s)")
    fp32_row, int8_row = speed
    faster = int8_row["chars_per_cpu_s"] > fp32_row["chars_per_cpu_s"] and int8_row["chars_s"] > fp32_row["chars_s"]
    delta = losses["int8"] - losses["fp32"]
    result = {"speed": speed, "loss_chars": len(ids), "loss_streams": args.loss_streams,
              "loss_fp32": round(losses["fp32"], 4), "loss_int8": round(losses["int8"], 4),
              "loss_delta": round(delta, 4), "faster": faster,
              "keep": faster and abs(delta) <= TARGETS["int8_loss_tolerance_nats"]}
    print_table("int8 vs fp32, 1 stream", speed)
    print(f"loss delta int8 - fp32: {delta:+.4f} nats (tolerance 0.01); keep int8 for batch 1: {result['keep']}")
    return result


def verdict(rows: list[dict], picked: str, int8: dict, engine_rows: list[dict]) -> list[dict]:
    by = {(r["weights"], r["streams"]): r for r in rows}
    out = []
    if (picked, 128) in by:
        out.append({"target": "2x512 at 128 streams, share of matmul limit", "goal": "≥ 0.50",
                    "measured": by[(picked, 128)]["share_of_mm_limit"]})
    int8_row = int8["speed"][1]
    best_single = max([r["chars_s"] for r in rows if r["streams"] == 1] + [int8_row["chars_s"]])
    out.append({"target": "single stream chars/s (best of fp32/int8)", "goal": "≥ 2,000", "measured": best_single})
    out.append({"target": "single stream chars/s through the engine (int8 on)", "goal": "≥ 2,000",
                "measured": next(r["chars_s"] for r in engine_rows if r["int8"] == "on")})
    return out


def main() -> None:
    args = parse_args()
    warnings.filterwarnings("ignore", message=".*quantize_per.*deprecated")
    picked = pick_precision("cpu")
    precisions = list(dict.fromkeys([picked, "fp32"]))
    checkpoint = load(args.checkpoint)
    model, tokenizer, config = checkpoint.model, checkpoint.tokenizer, checkpoint.model.config
    shapes = step_shapes(config.n_embd, config.n_hidden, config.n_layers, config.vocab_size)
    report = {"machine": {"cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                          "load_average_at_start": os.getloadavg()},
              "model": {"checkpoint": Path(args.checkpoint).name, "layers": config.n_layers,
                        "hidden": config.n_hidden, "embed": config.n_embd, "vocab": config.vocab_size},
              "picked_precision": picked, "targets": TARGETS,
              "method": f"medians of {args.rounds} interleaved rounds; wall and CPU (process_time) time"}
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)

    limits, bandwidth = measure_limits(shapes, args.streams, precisions, args.rounds)
    report["matmul_limits"], report["memory_bandwidth"] = limits, bandwidth
    variants = {"fp32": model, "int8": quantize_for_serving(model)}
    if picked != "fp32":
        variants[picked] = load(args.checkpoint, dtype=DTYPES[picked]).model
    plan = {s: args.chars * (4 if s == 1 else 1) for s in args.streams}
    report["generation"] = rows = generation_rows(variants, picked, tokenizer, plan, shapes, limits, bandwidth,
                                                  args.rounds)
    out.write_text(json.dumps(report, indent=2))
    print_table("generation (BatchSampler, base 2x512)", rows)

    report["int8_batch1"] = int8_batch1(variants, tokenizer, plan.get(1, 480), args)
    report["engine_batch1"] = engine_rows = bench_engine_single(model, tokenizer, plan.get(1, 480), args.rounds)
    print_table("serving engine, 1 stream: generate_int8 off vs on", engine_rows)
    report["verdict"] = verdict(rows, picked, report["int8_batch1"], engine_rows)
    print_table("targets side by side", report["verdict"])
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")


# --- 4. the serving engine ------------------------------------------------------------------------------

def bench_engine_single(model, tokenizer, chars: int, rounds: int) -> list[dict]:
    """One stream of `chars` characters at a time through worker.serve.engine.Engine (prefill included), int8 off and
    on interleaved; medians of `rounds` after a warm-up round. Sets torch to one thread (the worker's default
    engine threads on 2 cores), so it runs last."""
    from trainer.checkpoint import Checkpoint
    from worker.serve.cache import Entry
    from worker.serve.engine import Engine

    modes = ("off", "on")
    engines = {m: Engine("cpu", threads=1, int8=m) for m in modes}
    entries = {m: Entry(1, Checkpoint(model, tokenizer, {}, {}), None, 0) for m in modes}
    samples: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    for r in range(rounds + 1):
        for m in modes:
            cpu, wall = time.process_time(), time.perf_counter()
            job = engines[m].submit(entries[m], "Alice ", SamplingParams(max_tokens=chars, temperature=0.8, seed=r))
            stream = job.future.result(timeout=600)
            if r:
                samples[m].append((time.perf_counter() - wall, time.process_time() - cpu))
            assert len(stream.tokens) == chars
    rows = []
    for m in modes:
        wall, cpu = median_pair(samples[m])
        rows.append({"int8": m, "chars": chars, "chars_s": round(chars / wall), "chars_per_cpu_s": round(chars / cpu),
                     "int8_used": entries[m].single_stream is not None})
    return rows


if __name__ == "__main__":
    main()
