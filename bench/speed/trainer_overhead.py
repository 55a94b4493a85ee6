"""What the trainer costs over a bare fused loop, measured in one run on this host.

    python -m bench.speed.trainer_overhead            # both parts, about 8 minutes
    python -m bench.speed.trainer_overhead --threads 1    # the same with one torch thread
    python -m bench.speed.trainer_overhead --only throughput --rounds 5

(a) throughput: steps/s of `trainer.train` against a bare loop (embedding → one multi-layer nn.LSTM →
    linear, AdamW, clipping, state carried), same shapes, in the precision `auto` picks, interleaved rounds.
(b) budget: the shipped shakespeare-3min recipe through `trainer.train` (evaluations, checkpoints, logging
    and all) against the bare loop doing the same training (same model shape, seed, batch, seq, data order,
    warm-up and time-based warm-down, precision) for the same wall-clock budget, counted from each one's
    first step. Afterwards both models are scored the same way: trainer.evaluate over the whole validation
    split (nanoGPT's last 10 %), float32. The trainer is scored by the best.safetensors it ships.

Targets: trainer ≥ 0.95× the bare loop in steps/s and in steps made within the budget; val loss within
0.02 nats/char of the bare loop and ≤ 1.48. Prints a table and writes bench/results/trainer_overhead.json
(`--json` to change; a run with `--threads N` keeps the other thread counts' results in the file).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from bench.common import RESULTS, load_corpus
from trainer import checkpoint as ckpt
from trainer.data import BLOCK_TOKENS, TokenStreams, split_documents
from trainer.evaluate import evaluate
from trainer.model import build_model
from trainer.precision import cpu_model, resolve_precision
from trainer.recipes import load_recipe
from trainer.tokenizer import CharTokenizer
from trainer.train import TrainConfig, train

RECIPE = "shakespeare-3min"
TARGETS = {"throughput_ratio": 0.95, "budget_steps_ratio": 0.95, "val_loss_gap": 0.02, "val_loss": 1.48}
WARM_STEPS = 10  # oneDNN builds its kernels on the first steps: steady-state rates start after these


class BareLM(nn.Module):
    """The reference model, as a tutorial would write it: one fused nn.LSTM for all layers; with dropout, one
    nn.LSTM per layer and dropout around them (nn.LSTM's own dropout leaves oneDNN's fused path on CPU)."""

    def __init__(self, vocab: int, config: TrainConfig):
        super().__init__()
        E, H, L, self.p = config.n_embd, config.n_hidden, config.n_layers, config.dropout
        self.embed = nn.Embedding(vocab, E)
        self.rnns = nn.ModuleList(nn.LSTM(E if i == 0 else H, H, batch_first=True) for i in range(L)) if self.p \
            else nn.ModuleList([nn.LSTM(E, H, L, batch_first=True)])
        self.head = nn.Linear(H, vocab)

    def forward(self, x, state):
        h, new = self.embed(x), []
        for rnn, s in zip(self.rnns, state or [None] * len(self.rnns)):
            h = nn.functional.dropout(h, self.p, self.training) if self.p else h
            h, s = rnn(h, s)
            new.append(tuple(t.detach() for t in s))
        h = nn.functional.dropout(h, self.p, self.training) if self.p else h
        return self.head(h), new


def bare_loop(config: TrainConfig, train_ids: torch.Tensor, vocab: int, precision: str, *,
              steps: int = 0, seconds: float = 0.0) -> dict:
    """Train (dropout on) for `steps` steps or `seconds` of wall clock from the first step. Returns the model, the steps
    made, the seconds taken and the steady-state steps/s (after WARM_STEPS)."""
    torch.manual_seed(config.seed)
    model = BareLM(vocab, config)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=config.lr, betas=(0.9, 0.99), weight_decay=config.weight_decay)
    B, T = config.batch_size, config.seq_len
    stream_len = (len(train_ids) - 1) // B
    xs = train_ids[:B * stream_len].view(B, stream_len)
    ys = train_ids[1:B * stream_len + 1].view(B, stream_len)
    n_chunks = stream_len // T
    state, step, t_warm = None, 0, 0.0
    t0 = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - t0
        if (steps and step >= steps) or (seconds and elapsed >= seconds):
            break
        # the trainer's schedule: linear warm-up, constant, linear warm-down over the last part of the budget
        f = max(step / steps if steps else 0.0, elapsed / seconds if seconds else 0.0)
        start = 1.0 - config.anneal_fraction
        if step < config.warmup_steps:
            lr = config.lr * (step + 1) / config.warmup_steps
        elif f > start:
            lr = config.lr - (config.lr - config.min_lr) * (f - start) / config.anneal_fraction
        else:
            lr = config.lr
        for group in opt.param_groups:
            group["lr"] = lr
        i = step % n_chunks
        if i == 0:
            state = None  # a new epoch starts every stream afresh
        x, y = xs[:, i * T:(i + 1) * T], ys[:, i * T:(i + 1) * T]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits, state = model(x, state)
            loss = nn.functional.cross_entropy(logits.float().view(-1, vocab), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, config.grad_clip)
        opt.step()
        loss.item()
        step += 1
        if step == WARM_STEPS:
            t_warm = time.perf_counter()
    wall = time.perf_counter() - t0
    rate = (step - WARM_STEPS) / (time.perf_counter() - t_warm) if step > WARM_STEPS else float("nan")
    return {"model": model, "steps": step, "seconds": wall, "steps_per_s": rate}


def as_trainer_model(bare: BareLM, config: TrainConfig, vocab: int):
    """The bare weights in the trainer's model class, so both are scored by the same evaluate()."""
    model = build_model(config.model_config(vocab))
    sd = {"embed.weight": bare.embed.weight, "head.proj.weight": bare.head.weight, "head.proj.bias": bare.head.bias}
    for i in range(config.n_layers):
        for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            sd[f"layers.{i}.{kind}_l0"] = getattr(bare.rnns[i], f"{kind}_l0") if bare.p else \
                getattr(bare.rnns[0], f"{kind}_l{i}")
    model.load_state_dict({k: v.detach() for k, v in sd.items()})
    return model


def trainer_run(config: TrainConfig, corpus, out_dir: str) -> dict:
    """trainer.train with a clock on its progress events: steady-state steps/s between the first event
    after WARM_STEPS and the last one."""
    marks: list[tuple[int, float]] = []
    t0 = time.perf_counter()
    result = train(config, corpus, resume=False,
                   callback=lambda e, p, d: marks.append((p.step, time.perf_counter())) if e == "progress" else None)
    wall = time.perf_counter() - t0
    steady = [(s, t) for s, t in marks if s >= WARM_STEPS]
    rate = (steady[-1][0] - steady[0][0]) / (steady[-1][1] - steady[0][1]) if len(steady) > 1 else float("nan")
    start_up = next((t for s, t in marks), t0) - t0  # to the end of the first step
    return {"result": result, "wall": wall, "steps_per_s": rate, "start_up_s": start_up}


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def bench_throughput(base: TrainConfig, corpus, train_ids, vocab: int, precision: str, rounds: int,
                     steps: int) -> dict:
    rates: dict[str, list[float]] = {"trainer": [], "bare": []}
    for _ in range(rounds):  # interleaved: a noisy neighbour slows both alike
        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrainConfig.from_dict({**base.__dict__, "minutes": 0, "max_steps": steps, "out_dir": tmp,
                                         "eval_interval": 10**9})
            rates["trainer"].append(trainer_run(cfg, corpus, tmp)["steps_per_s"])
        rates["bare"].append(bare_loop(base, train_ids, vocab, precision, steps=steps)["steps_per_s"])
    trainer_rate, bare_rate = median(rates["trainer"]), median(rates["bare"])
    return {"precision": precision, "rounds": rounds, "steps": steps,
            "trainer_steps_s": round(trainer_rate, 2), "bare_steps_s": round(bare_rate, 2),
            "trainer_chars_s": round(trainer_rate * base.batch_size * base.seq_len),
            "bare_chars_s": round(bare_rate * base.batch_size * base.seq_len),
            "ratio": round(trainer_rate / bare_rate, 3), "target": TARGETS["throughput_ratio"],
            "all_trainer": [round(r, 2) for r in rates["trainer"]], "all_bare": [round(r, 2) for r in rates["bare"]]}


def bench_budget(base: TrainConfig, corpus, train_ids, val_data, vocab: int, precision: str,
                 bare_first: bool) -> dict:
    seconds = base.minutes * 60
    runs = {}
    order = ["bare", "trainer"] if bare_first else ["trainer", "bare"]
    for who in order:
        if who == "bare":
            bare = bare_loop(base, train_ids, vocab, precision, seconds=seconds)
            runs["bare"] = {"steps": bare["steps"], "budget_s": round(bare["seconds"], 1),
                            "val_loss": evaluate(as_trainer_model(bare["model"], base, vocab), val_data)}
            continue
        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrainConfig.from_dict({**base.__dict__, "out_dir": tmp})
            run = trainer_run(cfg, corpus, tmp)
            result = run["result"]
            best = ckpt.load(Path(tmp) / "best.safetensors").model
            last = ckpt.load(Path(tmp) / "last.safetensors").model
            runs["trainer"] = {"steps": result.steps, "budget_s": round(result.elapsed, 1),
                               "wall_s": round(run["wall"], 1), "start_up_s": round(run["start_up_s"], 2),
                               "evaluations": len(result.history),
                               "val_loss": evaluate(best, val_data), "val_loss_last": evaluate(last, val_data),
                               "own_best_val_loss": round(result.best_val_loss, 4)}
    trainer, bare = runs["trainer"], runs["bare"]
    for r in runs.values():
        for k in ("val_loss", "val_loss_last"):
            if k in r:
                r[k] = round(r[k], 4)
    return {"precision": precision, "minutes": base.minutes, "order": "/".join(order),
            "trainer": trainer, "bare": bare,
            "steps_ratio": round(trainer["steps"] / bare["steps"], 3), "steps_target": TARGETS["budget_steps_ratio"],
            "val_gap": round(trainer["val_loss"] - bare["val_loss"], 4), "val_gap_target": TARGETS["val_loss_gap"],
            "val_target": TARGETS["val_loss"]}


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def print_report(report: dict) -> None:
    rows = []
    if t := report.get("throughput"):
        rows.append(("throughput, steps/s", f"{t['trainer_steps_s']:.2f}", f"{t['bare_steps_s']:.2f}",
                     f"ratio {t['ratio']:.3f}", f"≥ {t['target']}", verdict(t["ratio"] >= t["target"])))
    if b := report.get("budget"):
        tr, ba = b["trainer"], b["bare"]
        rows.append((f"steps in {b['minutes']:g} min", str(tr["steps"]), str(ba["steps"]),
                     f"ratio {b['steps_ratio']:.3f}", f"≥ {b['steps_target']}", verdict(b["steps_ratio"] >= b["steps_target"])))
        rows.append(("val loss, nats/char", f"{tr['val_loss']:.4f}", f"{ba['val_loss']:.4f}",
                     f"gap {b['val_gap']:+.4f}", f"≤ +{b['val_gap_target']}", verdict(b["val_gap"] <= b["val_gap_target"])))
        rows.append(("trainer val loss", f"{tr['val_loss']:.4f}", "", "", f"≤ {b['val_target']}",
                     verdict(tr["val_loss"] <= b["val_target"])))
    head = ("measure", "trainer", "bare loop", "compared", "target", "")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    m = report["machine"]
    print(f"\n## trainer vs bare fused loop: {m['cpu']}, {m['threads']} thread(s), precision {m['precision']}, "
          f"uptime: {m['uptime']}\n")
    for r in [head, tuple("-" * w for w in widths), *rows]:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |")
    if b:
        tr = b["trainer"]
        print(f"\ntrainer: {tr['evaluations']} evaluations, budget clock {tr['budget_s']} s, wall {tr['wall_s']} s "
              f"(start-up to the end of the first step {tr['start_up_s']} s), its own best val "
              f"{tr['own_best_val_loss']}, last weights {tr['val_loss_last']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=["throughput", "budget"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    parser.add_argument("--minutes", type=float, default=0.0, help="budget (default: the recipe's)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--bare-first", action="store_true", help="run the bare budget run before the trainer's")
    parser.add_argument("--json", default=str(RESULTS / "trainer_overhead.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    recipe = load_recipe(RECIPE)
    base = TrainConfig.from_dict({**recipe, "threads": args.threads,
                                  "minutes": args.minutes or recipe["minutes"]})
    corpus = load_corpus(base.corpus)
    tokenizer = CharTokenizer.build(corpus.text)
    ids = [torch.tensor(tokenizer.encode(d), dtype=torch.long) for d in corpus.document_texts()]
    train_ids, val_ids = split_documents(ids, base.val_fraction, base.split, BLOCK_TOKENS["char"])
    val_data = TokenStreams(val_ids, min(32, base.batch_size), base.seq_len)
    vocab = len(tokenizer)
    precision = resolve_precision(base.precision, "cpu")
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    report = {"machine": {"cpu": cpu_model(), "platform": platform.platform(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__, "precision": precision, "uptime": uptime,
                          "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
              "recipe": RECIPE, "targets": TARGETS}
    if "throughput" in args.only:
        report["throughput"] = bench_throughput(base, corpus, train_ids, vocab, precision, args.rounds, args.steps)
    if "budget" in args.only:
        report["budget"] = bench_budget(base, corpus, train_ids, val_data, vocab, precision, args.bare_first)
    report["machine"]["uptime_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print_report(report)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    saved = json.loads(out.read_text()) if out.exists() else {}
    saved = saved if isinstance(saved, dict) and "runs" in saved else {"runs": {}}
    saved["runs"][f"threads_{torch.get_num_threads()}"] = report
    out.write_text(json.dumps(saved, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
