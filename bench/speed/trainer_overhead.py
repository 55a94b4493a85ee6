"""The trainer against a lean loop, measured in one run on this host.

    python -m bench.speed.trainer_overhead            # variants, throughput and the 3-minute budget, ~9 minutes
    python -m bench.speed.trainer_overhead --only variants throughput --rounds 5
    python -m bench.speed.trainer_overhead --threads 1    # the same with one torch thread

The lean loop is written as plainly as nanoGPT's train.py would write it for this model: embedding → dropout →
LSTM → dropout → linear, AdamW (fused), clipping, the state carried from chunk to chunk, the learning rate computed
in-line, evaluation every so often, nothing else (no checkpoints, callbacks, NaN guard or early stopping).
Two ways to write its LSTM are timed, and the faster is "lean":
  fused      one nn.LSTM(E, H, L, dropout=p, batch_first=True), as a tutorial would write it;
  per-layer  one nn.LSTM per layer with dropout between them (what trainer/model.py does).

(a) variants: steps/s of the two lean models, interleaved rounds (short: a slow variant is slow).
(b) throughput: steps/s of `trainer.train` against the lean loop, same shapes and precision (what `auto`
    picks), neither evaluating, interleaved rounds.
(c) budget: the shipped shakespeare-3min recipe through `trainer.train` (evaluations, checkpoints, logging and
    all) against the lean loop for the same wall-clock budget from each one's first step, same seed, data,
    split, order, warm-up and time-based warm-down, precision. The lean loop evaluates as often as the
    trainer (every tenth of the budget, every eval_interval steps and at the end) over as many held-out tokens
    (sized by the same rule, trainer.evaluate.eval_tokens_for); both count evaluation in their budget, and
    the table states each side's evaluation seconds and its steps with that time counted and without it
    (steps × budget / (budget − evaluation seconds)). Afterwards both are scored the same way: trainer.evaluate
    over the run's whole held-out split, float32; the trainer by the best.safetensors it ships, the lean loop
    by its last weights.

Targets (issue 23): trainer ≥ 0.95× the lean loop's steps in the budget and in steps/s; held-out loss within
0.01 nats/char of the lean loop's. Prints a table and writes bench/results/trainer_overhead.json (`--json` to
change; a run with `--threads N` keeps the other thread counts' results in the file). In the JSON, "bare" is
the lean loop (the key kept from the file's earlier layout).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from bench.common import RESULTS, load_corpus
from trainer import checkpoint as ckpt
from trainer.data import TokenStreams, load_data
from trainer.evaluate import eval_streams, eval_tokens_for, evaluate
from trainer.model import build_model
from trainer.precision import cpu_model, resolve_precision
from trainer.recipes import load_recipe
from trainer.train import TrainConfig, train

RECIPE = "shakespeare-3min"
TARGETS = {"throughput_ratio": 0.95, "budget_steps_ratio": 0.95, "val_loss_gap": 0.01}
WARM_STEPS = 10  # oneDNN builds its kernels on the first steps: steady-state rates start after these
VARIANTS = ("fused", "per-layer")


class LeanLM(nn.Module):
    """Embedding → dropout → LSTM → dropout → linear; `fused`: one nn.LSTM for all layers (its own dropout
    between them), else one nn.LSTM per layer with dropout between."""

    def __init__(self, vocab: int, config: TrainConfig, fused: bool):
        super().__init__()
        E, H, L, p = config.n_embd, config.n_hidden, config.n_layers, config.dropout
        self.fused = fused
        self.embed = nn.Embedding(vocab, E)
        self.drop = nn.Dropout(p)
        self.rnns = nn.ModuleList([nn.LSTM(E, H, L, dropout=p if L > 1 else 0.0, batch_first=True)] if fused else
                                  [nn.LSTM(E if i == 0 else H, H, batch_first=True) for i in range(L)])
        self.head = nn.Linear(H, vocab)

    def forward(self, x, state):
        h, new = self.drop(self.embed(x)), []
        for rnn, s in zip(self.rnns, state or [None] * len(self.rnns)):
            h, s = rnn(h, s)
            h = self.drop(h)
            new.append(tuple(t.detach() for t in s))
        return self.head(h), new


@torch.inference_mode()
def lean_evaluate(model: LeanLM, val: TokenStreams) -> float:
    """Mean held-out loss, float32, the state carried through each stream."""
    model.eval()
    state, total, count = None, 0.0, 0
    for x, y in val.all_chunks():
        logits, state = model(x, state)
        total += nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1)).item() * y.numel()
        count += y.numel()
    model.train()
    return total / max(count, 1)


def lean_lr(config: TrainConfig, step: int, fraction: float) -> float:
    """The trainer's schedule: linear warm-up, constant, linear warm-down over the last part of the budget."""
    start = 1.0 - config.anneal_fraction
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if fraction > start:
        return config.lr - (config.lr - config.min_lr) * (fraction - start) / config.anneal_fraction
    return config.lr


class LeanEvaluations:
    """The lean loop's evaluations, at the trainer's cadence: every tenth of a time budget, every eval_interval
    steps, and once at the end; each over the held-out tokens the trainer's rule sizes at the first one."""

    def __init__(self, config: TrainConfig, val_ids: torch.Tensor, block: int, seconds: float):
        self.config, self.val_ids, self.block, self.seconds = config, val_ids, block, seconds
        self.every = seconds / 10 if seconds else math.inf
        self.next_s, self.val, self.losses = self.every, None, []
        self.seconds_in_budget = 0.0

    def due(self, step: int, elapsed: float) -> bool:
        return step % self.config.eval_interval == 0 or elapsed >= self.next_s

    def run(self, model: LeanLM, step: int, elapsed: float, in_budget: bool = True) -> float:
        t = time.perf_counter()
        if self.val is None:
            c = self.config
            evals = 10 + step / elapsed * self.seconds / c.eval_interval
            tokens = eval_tokens_for(self.seconds, evals, step * c.batch_size * c.seq_len / elapsed, self.block)
            self.val = eval_streams(self.val_ids, tokens, c.batch_size, c.seq_len, self.block)
        self.losses.append(lean_evaluate(model, self.val))
        spent = time.perf_counter() - t
        self.seconds_in_budget += spent if in_budget else 0.0
        self.next_s = (math.floor((elapsed + spent) / self.every) + 1) * self.every
        return spent


def lean_loop(config: TrainConfig, data, precision: str, *, fused: bool, steps: int = 0, seconds: float = 0.0,
              evaluations: LeanEvaluations | None = None) -> dict:
    """Train (dropout on) for `steps` steps or `seconds` of wall clock from the first step, evaluating when
    `evaluations` is given. Returns the model, the steps made, the seconds taken, the steady-state steps/s
    (after WARM_STEPS, evaluations included) and what the evaluations cost."""
    torch.manual_seed(config.seed)
    vocab = len(data.tokenizer)
    model = LeanLM(vocab, config, fused)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.99), weight_decay=config.weight_decay,
                            fused=True)  # as nanoGPT where the device has it (CPU too, since torch 2.4)
    B, T = config.batch_size, config.seq_len
    n = (len(data.train_ids) - 1) // B
    xs, ys = data.train_ids[:B * n].view(B, n), data.train_ids[1:B * n + 1].view(B, n)
    n_chunks = n // T
    state, step, t_warm = None, 0, 0.0
    t0 = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - t0
        if (steps and step >= steps) or (seconds and elapsed >= seconds):
            break
        lr = lean_lr(config, step, max(step / steps if steps else 0.0, elapsed / seconds if seconds else 0.0))
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
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        loss.item()
        step += 1
        if step == WARM_STEPS:
            t_warm = time.perf_counter()
        if evaluations and evaluations.due(step, time.perf_counter() - t0):
            evaluations.run(model, step, time.perf_counter() - t0)
    wall = time.perf_counter() - t0
    rate = (step - WARM_STEPS) / (time.perf_counter() - t_warm) if step > WARM_STEPS else float("nan")
    if evaluations:  # the end of the budget's evaluation, as the trainer's: after the budget, costing no step
        evaluations.run(model, step, wall, in_budget=False)
    return {"model": model, "steps": step, "seconds": wall, "steps_per_s": rate}


def as_trainer_model(lean: LeanLM, config: TrainConfig, vocab: int):
    """The lean weights in the trainer's model class, so both are scored by the same evaluate()."""
    model = build_model(config.model_config(vocab))
    sd = {"embed.weight": lean.embed.weight, "head.proj.weight": lean.head.weight, "head.proj.bias": lean.head.bias}
    for i in range(config.n_layers):
        for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            sd[f"layers.{i}.{kind}_l0"] = getattr(lean.rnns[0], f"{kind}_l{i}") if lean.fused else \
                getattr(lean.rnns[i], f"{kind}_l0")
    model.load_state_dict({k: v.detach() for k, v in sd.items()})
    return model


def trainer_run(config: TrainConfig, corpus) -> dict:
    """trainer.train with a clock on its events: steady-state steps/s between the first progress event after
    WARM_STEPS and the last one; evaluation seconds (scoring, snapshot, checkpoints) from each evaluation's
    history entry (its budget clock before) to its eval event (after), those that began within the budget."""
    marks: list[tuple[int, float]] = []
    after: dict[int, float] = {}

    def on_event(event, p, details):
        if event == "progress":
            marks.append((p.step, time.perf_counter()))
        elif event == "eval":
            after[p.step] = p.elapsed

    t0 = time.perf_counter()
    result = train(config, corpus, resume=False, callback=on_event)
    wall = time.perf_counter() - t0
    steady = [(s, t) for s, t in marks if s >= WARM_STEPS]
    rate = (steady[-1][0] - steady[0][0]) / (steady[-1][1] - steady[0][1]) if len(steady) > 1 else float("nan")
    budget = config.minutes * 60 or math.inf
    eval_s = sum(after[h["step"]] - h["elapsed"] for h in result.history
                 if h["step"] in after and h["elapsed"] < budget)
    start_up = next((t for s, t in marks), t0) - t0  # to the end of the first step
    return {"result": result, "wall": wall, "steps_per_s": rate, "start_up_s": start_up, "eval_s": eval_s}


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def bench_variants(base: TrainConfig, data, precision: str, rounds: int, steps: int) -> dict:
    """Steps/s of the fused and the per-layer lean model, interleaved; the faster is the lean loop."""
    rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(rounds):
        for v in VARIANTS:
            rates[v].append(lean_loop(base, data, precision, fused=v == "fused", steps=steps)["steps_per_s"])
    medians = {v: median(r) for v, r in rates.items()}
    return {"precision": precision, "rounds": rounds, "steps": steps,
            "steps_s": {v: round(m, 2) for v, m in medians.items()},
            "all": {v: [round(r, 2) for r in rs] for v, rs in rates.items()},
            "lean": max(medians, key=medians.get)}


def bench_throughput(base: TrainConfig, corpus, data, precision: str, rounds: int, steps: int, fused: bool) -> dict:
    rates: dict[str, list[float]] = {"trainer": [], "bare": []}
    for _ in range(rounds):  # interleaved: a noisy neighbour slows both alike
        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrainConfig.from_dict({**base.__dict__, "minutes": 0, "max_steps": steps, "out_dir": tmp,
                                         "eval_interval": 10**9})
            rates["trainer"].append(trainer_run(cfg, corpus)["steps_per_s"])
        rates["bare"].append(lean_loop(base, data, precision, fused=fused, steps=steps)["steps_per_s"])
    trainer_rate, bare_rate = median(rates["trainer"]), median(rates["bare"])
    return {"precision": precision, "rounds": rounds, "steps": steps, "lean": "fused" if fused else "per-layer",
            "evaluation": "none on either side",
            "trainer_steps_s": round(trainer_rate, 2), "bare_steps_s": round(bare_rate, 2),
            "trainer_chars_s": round(trainer_rate * base.batch_size * base.seq_len),
            "bare_chars_s": round(bare_rate * base.batch_size * base.seq_len),
            "ratio": round(trainer_rate / bare_rate, 3), "target": TARGETS["throughput_ratio"],
            "all_trainer": [round(r, 2) for r in rates["trainer"]], "all_bare": [round(r, 2) for r in rates["bare"]]}


def _budget_trainer(base: TrainConfig, corpus, val_data: TokenStreams) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig.from_dict({**base.__dict__, "out_dir": tmp})
        run = trainer_run(cfg, corpus)
        result = run["result"]
        best = ckpt.load(Path(tmp) / "best.safetensors").model
        last = ckpt.load(Path(tmp) / "last.safetensors").model
        return {"steps": result.steps, "budget_s": round(result.elapsed, 1), "wall_s": round(run["wall"], 1),
                "start_up_s": round(run["start_up_s"], 2), "evaluations": len(result.history),
                "eval_s": round(run["eval_s"], 2),
                "val_tokens_per_eval": result.history[0]["val_tokens"] if result.history else 0,
                "val_loss": evaluate(best, val_data), "val_loss_last": evaluate(last, val_data),
                "own_best_val_loss": round(result.best_val_loss, 4)}


def _budget_lean(base: TrainConfig, data, val_data: TokenStreams, precision: str, fused: bool) -> dict:
    seconds = base.minutes * 60
    evals = LeanEvaluations(base, data.val_ids, data.block, seconds)
    lean = lean_loop(base, data, precision, fused=fused, seconds=seconds, evaluations=evals)
    return {"variant": "fused" if fused else "per-layer", "steps": lean["steps"], "budget_s": round(lean["seconds"], 1),
            "evaluations": len(evals.losses), "eval_s": round(evals.seconds_in_budget, 2),
            "val_tokens_per_eval": evals.val.n_tokens if evals.val else 0,
            "val_loss": evaluate(as_trainer_model(lean["model"], base, len(data.tokenizer)), val_data)}


def bench_budget(base: TrainConfig, corpus, data, precision: str, fused: bool, lean_first: bool) -> dict:
    val_data = TokenStreams(data.val_ids, min(32, base.batch_size), base.seq_len)  # the whole held-out split
    seconds = base.minutes * 60
    order = ["bare", "trainer"] if lean_first else ["trainer", "bare"]
    runs = {who: (_budget_lean(base, data, val_data, precision, fused) if who == "bare"
                  else _budget_trainer(base, corpus, val_data)) for who in order}
    for r in runs.values():
        r["steps_ex_eval"] = round(r["steps"] * seconds / max(seconds - r["eval_s"], 1e-9))
        for k in ("val_loss", "val_loss_last"):
            if k in r:
                r[k] = round(r[k], 4)
    trainer, bare = runs["trainer"], runs["bare"]
    return {"precision": precision, "minutes": base.minutes, "order": "/".join(order),
            "trainer": trainer, "bare": bare,
            "steps_ratio": round(trainer["steps"] / bare["steps"], 3),
            "steps_ratio_ex_eval": round(trainer["steps_ex_eval"] / bare["steps_ex_eval"], 3),
            "steps_target": TARGETS["budget_steps_ratio"],
            "val_gap": round(trainer["val_loss"] - bare["val_loss"], 4), "val_gap_target": TARGETS["val_loss_gap"]}


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _rows(report: dict) -> list[tuple]:
    rows = []
    if v := report.get("variants"):
        rows.append(("lean model steps/s: fused / per-layer", "", f"{v['steps_s']['fused']:.2f} / "
                     f"{v['steps_s']['per-layer']:.2f}", f"lean = {v['lean']}", "", ""))
    if t := report.get("throughput"):
        rows.append(("throughput, steps/s (no evaluation)", f"{t['trainer_steps_s']:.2f}", f"{t['bare_steps_s']:.2f}",
                     f"ratio {t['ratio']:.3f}", f"≥ {t['target']}", verdict(t["ratio"] >= t["target"])))
    if b := report.get("budget"):
        tr, ba = b["trainer"], b["bare"]
        rows.append(("evaluations (seconds within the budget)", f"{tr['evaluations']} ({tr['eval_s']:.1f} s)",
                     f"{ba['evaluations']} ({ba['eval_s']:.1f} s)", "", "", ""))
        rows.append((f"steps in {b['minutes']:g} min, evaluation counted", str(tr["steps"]), str(ba["steps"]),
                     f"ratio {b['steps_ratio']:.3f}", f"≥ {b['steps_target']}",
                     verdict(b["steps_ratio"] >= b["steps_target"])))
        rows.append((f"steps in {b['minutes']:g} min, evaluation not counted", str(tr["steps_ex_eval"]),
                     str(ba["steps_ex_eval"]), f"ratio {b['steps_ratio_ex_eval']:.3f}", f"≥ {b['steps_target']}",
                     verdict(b["steps_ratio_ex_eval"] >= b["steps_target"])))
        rows.append(("held-out loss, nats/char", f"{tr['val_loss']:.4f}", f"{ba['val_loss']:.4f}",
                     f"gap {b['val_gap']:+.4f}", f"≤ +{b['val_gap_target']}",
                     verdict(abs(b["val_gap"]) <= b["val_gap_target"])))
    return rows


def print_report(report: dict) -> None:
    rows = _rows(report)
    head = ("measure", "trainer", "lean loop", "compared", "target", "")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    m = report["machine"]
    print(f"\n## trainer vs a lean loop: {m['cpu']}, {m['threads']} thread(s), precision {m['precision']}, "
          f"uptime: {m['uptime']}\n")
    for r in [head, tuple("-" * w for w in widths), *rows]:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |")
    if b := report.get("budget"):
        tr = b["trainer"]
        print(f"\ntrainer: budget clock {tr['budget_s']} s, wall {tr['wall_s']} s (start-up to the end of the first "
              f"step {tr['start_up_s']} s), {tr['val_tokens_per_eval']} held-out tokens per evaluation (lean: "
              f"{b['bare']['val_tokens_per_eval']}), its own best val {tr['own_best_val_loss']}, last weights "
              f"{tr['val_loss_last']}")


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=["variants", "throughput", "budget"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    parser.add_argument("--minutes", type=float, default=0.0, help="budget (default: the recipe's)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--variant-steps", type=int, default=40, help="steps per round of (a)")
    parser.add_argument("--lean", choices=VARIANTS, help="the lean model, without timing (a)")
    parser.add_argument("--lean-first", action="store_true", help="run the lean budget run before the trainer's")
    parser.add_argument("--json", default=str(RESULTS / "trainer_overhead.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = load_recipe(RECIPE)
    base = TrainConfig.from_dict({**recipe, "threads": args.threads, "minutes": args.minutes or recipe["minutes"]})
    corpus = load_corpus(base.corpus)
    data = load_data(base, corpus, torch.device("cpu"), None, None, [])  # the trainer's tokens, split and shape
    precision = resolve_precision(base.precision, "cpu")
    report = {"machine": {"cpu": cpu_model(), "platform": platform.platform(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__, "precision": precision, "uptime": _uptime(),
                          "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
              "recipe": RECIPE, "targets": TARGETS, "lean_loop": __doc__.split("\n\n")[2].strip()}
    lean = args.lean or "per-layer"
    if "variants" in args.only and not args.lean:
        report["variants"] = bench_variants(base, data, precision, args.rounds, args.variant_steps)
        lean = report["variants"]["lean"]
    if "throughput" in args.only:
        report["throughput"] = bench_throughput(base, corpus, data, precision, args.rounds, args.steps,
                                                lean == "fused")
    if "budget" in args.only:
        report["budget"] = bench_budget(base, corpus, data, precision, lean == "fused", args.lean_first)
    report["machine"]["uptime_after"] = _uptime()
    print_report(report)
    save(report, Path(args.json))


def save(report: dict, out: Path) -> None:
    """Into the results file under this thread count, beside the other thread counts' results."""
    out.parent.mkdir(parents=True, exist_ok=True)
    saved = json.loads(out.read_text()) if out.exists() else {}
    saved = saved if isinstance(saved, dict) and "runs" in saved else {"runs": {}}
    saved["runs"][f"threads_{report['machine']['threads']}"] = report
    out.write_text(json.dumps(saved, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
