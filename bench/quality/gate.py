"""The quality gate on real corpora: the base model's held-out loss against a short fine-tune's, both on the
held-out text of the new split (trainer/heldout.py: repeats dropped, whole paragraphs, no 50-character
window shared with training), as the trainer service scores them (trainer/gate.py), and whether it would be
promoted over the base. Also how much each split dropped.

    python -m bench.quality.gate [--minutes 0.5] [--corpora shakespeare alice upload]

`upload` is a fresh upload: 300 KB of one base-corpus book, fine-tuned like an uploaded text (the alice
recipe). Writes bench/results/gate.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

from bench.common import RESULTS, load_corpus, print_table
from trainer.checkpoint import load
from trainer.gate import open_gate, score, verdict
from trainer.recipes import load_recipe
from trainer.train import TrainConfig, train


def _corpus(name: str):
    if name != "upload":
        return load_corpus(name), name
    base = load_corpus("base")
    documents = base.document_texts()
    book = max(documents[:5], key=len)
    start = len(book) // 3
    return book[start:start + 300_000], "alice"


def measure(name: str, minutes: float, threads: int) -> dict:
    corpus, recipe = _corpus(name)
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig.from_dict({**load_recipe(recipe), "corpus": name, "out_dir": out, "minutes": minutes,
                                        "threads": threads, "eval_interval": 50})
        started = time.perf_counter()
        gate = open_gate(config, corpus, 5000)
        gate_s = time.perf_counter() - started
        result = train(config, corpus)
        best = load(f"{out}/best.safetensors")
        candidate = score(best, gate.text)
    decided = verdict("char-rnn", candidate, gate.base_loss, None, len(gate.text))
    return {"corpus": name, "recipe": recipe, "minutes": minutes, "steps": result.steps,
            "held_out_chars": len(gate.text), "base": round(gate.base_loss, 4), "candidate": round(candidate, 4),
            "promoted": decided.passed, "duplicate_chars": gate.split["duplicate_chars"],
            "overlap_chars": gate.split["overlap_chars"], "gate_open_s": round(gate_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--corpora", nargs="+", default=["shakespeare", "alice", "upload"])
    args = parser.parse_args()
    rows = [measure(name, args.minutes, args.threads) for name in args.corpora]
    print_table(f"quality gate: base vs a {args.minutes}-minute fine-tune, nats/char on held-out text", rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gate.json").write_text(json.dumps({"cpu": platform.processor() or platform.machine(),
                                                   "threads": args.threads, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
