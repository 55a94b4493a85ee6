"""Character-model speed on tiny-shakespeare: training throughput against bare PyTorch loops, and generation.

    python -m bench.speed.char_lm                          # both (a few minutes on 2 cores)
    python -m bench.speed.char_lm --only generation
    python -m bench.speed.char_lm --only throughput --rounds 5

Prints tables and writes JSON (bench/results/char_lm_speed.json). Targets (this 2-core CPU): trainer
throughput ≥ 0.95× a bare fused nn.LSTM loop of the same shapes; generation ≥ 2,000 chars/s single stream
(2×512) and ≥ 30,000 chars/s aggregate with 128 streams. The quality half is bench/quality/char_lm.py.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from bench.common import RESULTS, load_corpus, print_table
from core.contracts import SamplingParams
from trainer.model import ModelConfig, build_model
from trainer.recipes import load_recipe
from trainer.sample import BatchSampler
from trainer.tokenizer import CharTokenizer
from trainer.train import TrainConfig, train

TARGETS = {"throughput_ratio": 0.95, "gen_single_2x512": 2_000, "gen_128_2x512": 30_000}


def recipe_config(minutes: float, out_dir: str, **overrides) -> TrainConfig:
    recipe = {**load_recipe("shakespeare-3min"), "minutes": minutes, "out_dir": out_dir, **overrides}
    return TrainConfig.from_dict(recipe)


# --- throughput -----------------------------------------------------------------------------------

def bare_fused_loop(config: TrainConfig, ids: torch.Tensor, steps: int, precision: str) -> float:
    """The reference: embedding → nn.LSTM → linear, Adam, clipping, state carried. Chars/s."""
    V, B, T, H = int(ids.max()) + 1, config.batch_size, config.seq_len, config.n_hidden
    emb, rnn, out = nn.Embedding(V, config.n_embd), nn.LSTM(config.n_embd, H, config.n_layers, batch_first=True), nn.Linear(H, V)
    params = [*emb.parameters(), *rnn.parameters(), *out.parameters()]
    opt = torch.optim.Adam(params, lr=2e-3)
    data = ids[: B * (len(ids) // B)].view(B, -1)
    state = None
    t0 = None
    for step in range(steps + 3):
        if step == 3:
            t0 = time.perf_counter()
        start = (step * T) % (data.size(1) - T - 1)
        x, y = data[:, start:start + T], data[:, start + 1:start + T + 1]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            h, state = rnn(emb(x), state)
            loss = nn.functional.cross_entropy(out(h).float().view(-1, V), y.reshape(-1))
        state = tuple(s.detach() for s in state)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        loss.item()
    return steps * B * T / (time.perf_counter() - t0)


def cell_loop(config: TrainConfig, ids: torch.Tensor, steps: int) -> float:
    """The tutorial pattern: a Python loop over time steps with nn.LSTMCell. Chars/s."""
    V, B, T, H = int(ids.max()) + 1, config.batch_size, config.seq_len, config.n_hidden
    emb = nn.Embedding(V, config.n_embd)
    cells = nn.ModuleList([nn.LSTMCell(config.n_embd if i == 0 else H, H) for i in range(config.n_layers)])
    out = nn.Linear(H, V)
    params = [*emb.parameters(), *cells.parameters(), *out.parameters()]
    opt = torch.optim.Adam(params, lr=2e-3)
    data = ids[: B * (len(ids) // B)].view(B, -1)
    t0 = None
    for step in range(steps + 2):
        if step == 2:
            t0 = time.perf_counter()
        start = (step * T) % (data.size(1) - T - 1)
        x, y = data[:, start:start + T], data[:, start + 1:start + T + 1]
        e = emb(x)
        hs = [(torch.zeros(B, H), torch.zeros(B, H)) for _ in cells]
        outs = []
        for t in range(T):
            inp = e[:, t]
            for i, cell in enumerate(cells):
                hs[i] = cell(inp, hs[i])
                inp = hs[i][0]
            outs.append(inp)
        loss = nn.functional.cross_entropy(out(torch.stack(outs, 1)).view(-1, V), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
    return steps * B * T / (time.perf_counter() - t0)


def product_trainer(config: TrainConfig, corpus, steps: int) -> float:
    """Chars/s of trainer.train over `steps` steps, evaluation excluded (tokens/s it reports)."""
    rates = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig.from_dict({**config.__dict__, "minutes": 0, "max_steps": steps + 5, "out_dir": tmp,
                                     "eval_interval": 10**9, "log_interval": 5, "val_fraction": 0.1})
        train(cfg, corpus, callback=lambda e, p, d: rates.append(p.tokens_per_s) if e == "progress" else None,
              resume=False)
    return sorted(rates[2:])[len(rates[2:]) // 2]  # median over windows, skipping warm-up


def bench_throughput(rounds: int, steps: int) -> list[dict]:
    corpus = load_corpus("shakespeare")
    config = recipe_config(3, "unused")
    ids = torch.tensor([ord(c) % 128 for c in corpus.text[:300_000]])
    rows = []
    for precision in dict.fromkeys([config.precision, "fp32"]):
        cfg = TrainConfig.from_dict({**config.__dict__, "precision": precision})
        results = {"trainer": [], "bare_fused": [], "cell_loop": []}
        for _ in range(rounds):  # interleaved rounds: the machine is noisy
            results["trainer"].append(product_trainer(cfg, corpus, steps))
            results["bare_fused"].append(bare_fused_loop(cfg, ids, steps, precision))
            if precision == "fp32":
                results["cell_loop"].append(cell_loop(cfg, ids, max(5, steps // 4)))
        med = {k: sorted(v)[len(v) // 2] for k, v in results.items() if v}
        rows.append({"precision": precision, "shape": f"{cfg.n_layers}x{cfg.n_hidden} B{cfg.batch_size} T{cfg.seq_len}",
                     **{f"{k}_chars_s": round(v) for k, v in med.items()},
                     "trainer_vs_bare": round(med["trainer"] / med["bare_fused"], 3)})
    return rows


# --- generation ---------------------------------------------------------------------------------------

def bench_generation(chars: int = 1000) -> list[dict]:
    """Stateful batched sampling (BatchSampler), float32 weights and bfloat16 weights (half the bytes
    to read per step: batch-1 stepping of a 2x512 LSTM is bound by reading its 12.5 MB of weights)."""
    rows = []
    vocab = CharTokenizer([chr(32 + i) for i in range(64)] + ["\n"])  # 65 symbols, as tiny-shakespeare
    for hidden in (512, 256):
        for dtype in (torch.float32, torch.bfloat16):
            config = ModelConfig(family="char-rnn", vocab_size=65, n_layers=2, n_hidden=hidden)
            model = build_model(config).eval().to(dtype)
            for batch in (1, 8, 32, 128):
                best = 0.0
                for _ in range(3):
                    sampler = BatchSampler(model, vocab)
                    for i in range(batch):
                        sampler.add("ROMEO:\n", SamplingParams(max_tokens=chars, temperature=0.8, seed=i))
                    t0 = time.perf_counter()
                    sampler.run()
                    best = max(best, batch * chars / (time.perf_counter() - t0))
                rows.append({"model": f"2x{hidden}", "weights": str(dtype).removeprefix("torch."), "streams": batch,
                             "aggregate_chars_s": round(best), "per_stream_chars_s": round(best / batch)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=["throughput", "generation"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--json", default=str(RESULTS / "char_lm_speed.json"))
    args = parser.parse_args()

    report = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__, "cuda": torch.cuda.is_available()},
              "targets": TARGETS}
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    sections = [("throughput", "training throughput (chars/s, median of interleaved rounds)",
                 lambda: bench_throughput(args.rounds, args.steps)),
                ("generation", "generation (chars/s, best of 3, 1000 chars per stream)", bench_generation)]
    for name, title, run in sections:
        if name in args.only:
            report[name] = run()
            print_table(title, report[name])
            out.write_text(json.dumps(report, indent=2))  # after every section: a long run keeps what it measured
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
