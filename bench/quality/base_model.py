"""The shipped base model's held-out loss: on its own split (whole books held out) and on every persona
corpus it never saw.

    .venv/bin/python -m bench.quality.base_model                 # trainer/pretrained/base.safetensors
    .venv/bin/python -m bench.quality.base_model runs/base/best.safetensors

Each corpus is scored whole (at most its first --max-chars characters), state carried through 32 streams,
as the trainer evaluates. Characters the base has no row for are dropped (the share is reported). Prints a
table and writes bench/results/base_model.json.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from bench.common import RESULTS, load_corpus
from trainer import checkpoint as ckpt
from trainer.data import TokenStreams, rebuild_split
from trainer.evaluate import evaluate
from trainer.precision import cpu_model
from trainer.pretrained import resolve_init

UNSEEN = ("alice", "trump", "shakespeare", "imdb")


def score(model, ids: torch.Tensor) -> float:
    return evaluate(model, TokenStreams(ids, 32, 100))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", default="base")
    parser.add_argument("--max-chars", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=RESULTS / "base_model.json")
    args = parser.parse_args()
    loaded = ckpt.load(resolve_init(args.checkpoint))
    model, tok = loaded.model.eval(), loaded.tokenizer
    rows = []

    t0 = time.perf_counter()
    _, val, _ = rebuild_split(loaded.meta, tok, load_corpus("base"))  # the held-out text of its training run
    nats = score(model, val)
    rows.append({"corpus": "base (own held-out books)", "chars": len(val), "dropped_chars": 0,
                 "nats_per_char": round(nats, 4), "bits_per_char": round(nats / math.log(2), 3)})
    print(rows[-1], f"{time.perf_counter() - t0:.0f} s", flush=True)
    for name in UNSEEN:
        text = load_corpus(name).text[:args.max_chars]
        ids = tok.encode(text)
        nats = score(model, torch.tensor(ids))
        rows.append({"corpus": f"{name} (never seen)", "chars": len(ids), "dropped_chars": len(text) - len(ids),
                     "nats_per_char": round(nats, 4), "bits_per_char": round(nats / math.log(2), 3)})
        print(rows[-1], flush=True)

    meta = {"checkpoint": str(args.checkpoint), "steps": loaded.meta.get("step"), "n_params": loaded.meta["n_params"],
            "architecture": {k: loaded.meta["model"][k] for k in ("cell", "n_layers", "n_embd", "n_hidden")},
            "cpu": cpu_model(), "rows": rows}
    print(f"\nbase: {meta['architecture']}, {meta['n_params']:,} parameters, {meta['steps']} steps; CPU {meta['cpu']}\n")
    print(f"| {'corpus':<28} | {'chars':>9} | {'dropped':>7} | nats/char | bits/char |")
    print(f"|{'-' * 30}|{'-' * 11}|{'-' * 9}|-----------|-----------|")
    for r in rows:
        print(f"| {r['corpus']:<28} | {r['chars']:>9,} | {r['dropped_chars']:>7,} | {r['nats_per_char']:>9.4f} "
              f"| {r['bits_per_char']:>9.3f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
