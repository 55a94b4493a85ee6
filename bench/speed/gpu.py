"""The GPU path, measured: training throughput, tiny-shakespeare quality in 10 minutes, generation.

    python -m bench.speed.gpu                   # on a CUDA machine: about 15 minutes
    python -m bench.speed.gpu --dry-run         # on CPU: a tiny model, 2 steps of everything (a smoke test)

On CUDA, in one process:
1. training throughput (chars/s) of the product model (trainer/model.py: per-layer fused nn.LSTM, i.e. cuDNN)
   against a bare loop (embedding → one multi-layer nn.LSTM → linear, Adam, clipping, state carried), in
   float32 and under bf16 / fp16 autocast (fp16 with a GradScaler), interleaved rounds, medians;
2. quality: the product model trained for `--minutes` (default 10) on tiny-shakespeare (nanoGPT's 90/10
   split), in the precision `pick_precision` picks for the GPU; validation loss *streamed* (the state carried
   through the whole validation text, as generation reads it). Goal ≤ 1.35 nats/char;
3. generation: aggregate chars/s through trainer/sample.py's BatchSampler at 1, 128 and 1024 streams, with
   the trained model.

NOT RUN YET: no GPU was lent to the session that wrote this (the device tool's `status` said
can_start_another false), so no CUDA figure exists; the first run on a GPU should record the card's name
(it is in the JSON). Without CUDA it exits with status 2 and says so, unless `--dry-run`, which runs every
CPU-side path (data, models, loops, autocast, the sampler) for 2 steps on a tiny model so none of it is dead code.
JSON to bench/results/gpu.json (dry runs: to --json, default a temp file, never the results folder).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bench.common import RESULTS, corpus_file
from core.contracts import SamplingParams
from trainer.model import ModelConfig, build_model
from trainer.precision import bf16_runs, pick_precision
from trainer.sample import BatchSampler
from trainer.tokenizer import CharTokenizer

TARGETS = {"shakespeare_val_streamed_10min": 1.35}
AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def shakespeare(device: torch.device) -> tuple[CharTokenizer, torch.Tensor, torch.Tensor]:
    text = corpus_file("shakespeare").read_text(encoding="utf-8")
    tokenizer = CharTokenizer(sorted(set(text)))
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    split = int(0.9 * len(ids))
    return tokenizer, ids[:split].to(device), ids[split:].to(device)


def batches(ids: torch.Tensor, batch: int, seq: int):
    """Contiguous streams, one column per stream, so the state carried between chunks is the right one."""
    streams = ids[: batch * (len(ids) // batch)].view(batch, -1)
    while True:
        for start in range(0, streams.size(1) - seq - 1, seq):
            yield streams[:, start: start + seq], streams[:, start + 1: start + seq + 1]


class BareLM(nn.Module):
    """The reference: embedding → one multi-layer nn.LSTM (a single cuDNN call) → linear."""

    def __init__(self, vocab: int, embed: int, hidden: int, layers: int):
        super().__init__()
        self.embed, self.rnn, self.out = nn.Embedding(vocab, embed), nn.LSTM(embed, hidden, layers, batch_first=True), \
            nn.Linear(hidden, vocab)

    def loss(self, idx, targets, state=None):
        hidden, state = self.rnn(self.embed(idx), state)
        return F.cross_entropy(self.out(hidden).float().flatten(0, 1), targets.flatten()), state


def train_steps(model, data, steps: int, precision: str, device: torch.device, lr: float = 2e-3,
                deadline: float | None = None) -> tuple[int, float]:
    """`steps` TBPTT steps (or until `deadline`, perf_counter seconds); returns (steps made, wall seconds)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    state, made = None, 0
    sync(device)
    start = time.perf_counter()
    while made < steps and (deadline is None or time.perf_counter() < deadline):
        idx, targets = next(data)
        with torch.autocast(device.type, dtype=AUTOCAST[precision] or torch.float32, enabled=precision != "fp32"):
            loss, state = model.loss(idx, targets, state)
        state = tuple(s.detach() for s in state)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        made += 1
    sync(device)
    return made, time.perf_counter() - start


def bench_throughput(args, vocab: int, train_ids: torch.Tensor, device: torch.device) -> list[dict]:
    precisions = ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    if not bf16_runs(device.type):  # an older GPU, or a CPU without bf16 LSTM kernels (the dry run)
        precisions.remove("bf16")
    config = ModelConfig(family="char-rnn", vocab_size=vocab, n_layers=args.layers, n_embd=args.embed,
                         n_hidden=args.hidden)
    makers = {"product (per-layer fused)": lambda: build_model(config),
              "bare nn.LSTM": lambda: BareLM(vocab, args.embed, args.hidden, args.layers)}
    samples: dict = {(name, p): [] for name in makers for p in precisions}
    for _ in range(args.rounds):
        for (name, precision), bucket in samples.items():
            torch.manual_seed(0)
            model = makers[name]().to(device).train()
            data = batches(train_ids, args.batch, args.seq)
            train_steps(model, data, 1, precision, device)  # warm-up: cuDNN plans, allocator
            made, seconds = train_steps(model, data, args.steps, precision, device)
            bucket.append(made * args.batch * args.seq / seconds)
    return [{"model": name, "precision": p, "chars_s": round(statistics.median(s))} for (name, p), s in samples.items()]


@torch.inference_mode()
def streamed_loss(model, ids: torch.Tensor, streams: int = 1, chunk: int = 1024) -> float:
    """Mean loss over `ids` with the state carried from the first character to the last (`streams`
    contiguous slices side by side, each from a zero state: 1 is exactly streamed)."""
    length = (len(ids) - 1) // streams
    inputs, targets = ids[: length * streams].view(streams, length), ids[1: length * streams + 1].view(streams, length)
    state, total = None, 0.0
    for start in range(0, length, chunk):
        hidden, state = model(inputs[:, start: start + chunk], state)
        total += model.head.loss(hidden, targets[:, start: start + chunk]).item() * hidden.size(0) * hidden.size(1)
    return total / (length * streams)


def bench_quality(args, vocab: int, train_ids, val_ids, device: torch.device) -> dict:
    precision = pick_precision(device)
    torch.manual_seed(0)
    config = ModelConfig(family="char-rnn", vocab_size=vocab, n_layers=args.layers, n_embd=args.embed,
                         n_hidden=args.hidden, dropout=args.dropout)
    model = build_model(config).to(device).train()
    deadline = time.perf_counter() + args.minutes * 60
    made, seconds = train_steps(model, batches(train_ids, args.batch, args.seq), args.max_steps, precision, device,
                                deadline=deadline)
    model.eval()
    loss = streamed_loss(model, val_ids, args.val_streams)
    return {"precision": precision, "minutes": args.minutes, "steps": made, "train_seconds": round(seconds, 1),
            "val_streamed_nats": round(loss, 4), "goal": TARGETS["shakespeare_val_streamed_10min"],
            "met": math.isfinite(loss) and loss <= TARGETS["shakespeare_val_streamed_10min"], "model": config.to_dict(),
            "_model": model}


def bench_generation(args, model, tokenizer, device: torch.device) -> list[dict]:
    rows = []
    for streams in args.streams:
        best = 0.0
        for _ in range(args.rounds):
            sampler = BatchSampler(model, tokenizer, device)
            for i in range(streams):
                sampler.add("ROMEO:\n", SamplingParams(max_tokens=args.chars, temperature=0.8, seed=i))
            sync(device)
            start = time.perf_counter()
            sampler.run()
            sync(device)
            best = max(best, streams * args.chars / (time.perf_counter() - start))
        rows.append({"streams": streams, "chars_per_stream": args.chars, "aggregate_chars_s": round(best)})
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="on CPU, tiny model, 2 steps: checks the code paths")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--embed", type=int, default=128)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50, help="timed steps per throughput round")
    parser.add_argument("--max-steps", type=int, default=10**9, help="cap on quality-run steps (the clock rules)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, nargs="*", default=[1, 128, 1024])
    parser.add_argument("--chars", type=int, default=500)
    parser.add_argument("--val-streams", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.dry_run:  # every path, seconds on a CPU
        args.minutes, args.layers, args.hidden, args.embed, args.batch, args.seq = 0.05, 2, 32, 16, 4, 16
        args.steps = args.max_steps = 2
        args.rounds, args.streams, args.chars, args.val_streams = 1, [1, 4], 3, 8
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("bench.speed.gpu: CUDA is not available on this machine (torch "
              f"{torch.__version__}, cuda build: {torch.version.cuda or 'none'}); run it on a GPU host, or pass "
              "--dry-run to smoke-test its CPU-side paths", file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "none (dry run on CPU)"
    tokenizer, train_ids, val_ids = shakespeare(device)
    if args.dry_run:
        val_ids = val_ids[:2000]
    report: dict = {"device": card, "dry_run": args.dry_run, "torch": torch.__version__, "targets": TARGETS}
    report["throughput"] = bench_throughput(args, len(tokenizer.vocab), train_ids, device)
    quality = bench_quality(args, len(tokenizer.vocab), train_ids, val_ids, device)
    model = quality.pop("_model")
    report["quality"] = quality
    report["generation"] = bench_generation(args, model, tokenizer, device)
    for section in ("throughput", "generation"):
        for row in report[section]:
            print(section, row)
    print("quality", quality)
    out = Path(args.json) if args.json else (
        Path(tempfile.gettempdir()) / "gpu_dry_run.json" if args.dry_run else RESULTS / "gpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out} (device: {card})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
