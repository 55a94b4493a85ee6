"""Quality report for the bundled personas: a markdown table (bench/results/quality_report.md) + JSON.

    .venv/bin/python bench/quality_report.py                   # every checkpoint in improbable/bundled/
    .venv/bin/python bench/quality_report.py runs/x/best.safetensors

Per persona: held-out loss (the last 10 % of its corpus, as in training); for word models, the same
held-out tokens scored by an interpolated Kneser–Ney trigram trained on the same training tokens
(bench/kneser_ney.py; target: the model's perplexity ≥ 15 % lower); improbability calibration, the
mean |realised − target| probability over 1,000 steps at targets 0.5, 0.1 and 0.01 (target: within
10 % of the target); and originality, the share of 20-character windows of generated text that are
found verbatim in the corpus (reported).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from kneser_ney import KneserNeyTrigram

from trainer import checkpoint as ckpt
from trainer.data import TokenStreams, split_train_val
from trainer.datasets import load_named_corpus
from trainer.evaluate import evaluate, improbability_calibration
from trainer.originality import originality
from trainer.sample import SamplingParams, generate

CORPORA = [Path(p) for p in os.environ.get("IMPROBABLE_CORPUS_PATH", str(ROOT.parent / "shared" / "corpora")).split(os.pathsep)]
TARGETS = (0.5, 0.1, 0.01)
PROMPTS = ["The", "I", "And then", "When", "She"]


def report_one(path: Path) -> dict:
    loaded = ckpt.load(path)
    config = loaded.meta["train_config"]
    corpus = load_named_corpus(config["corpus"], CORPORA).text
    ids = loaded.tokenizer.encode(corpus)
    split = split_train_val(len(ids), config.get("val_fraction", 0.1))
    val = torch.tensor(ids[split:])
    nats = evaluate(loaded.model, TokenStreams(val, 32, 100))
    row = {"persona": path.stem, "family": loaded.family, "val_tokens": len(val),
           "val_nats_per_token": round(nats, 4), "val_ppl": round(math.exp(nats), 2)}
    if loaded.tokenizer.kind == "word":
        trigram = KneserNeyTrigram(np.array(ids[:split]), len(loaded.tokenizer))
        kn_ppl = trigram.perplexity(np.array(ids[split:]))
        row.update({"kn_trigram_ppl": round(kn_ppl, 2), "ppl_below_trigram": round(1 - math.exp(nats) / kn_ppl, 3)})
    for target in TARGETS:
        cal = improbability_calibration(loaded.model, loaded.tokenizer, target, steps=1000, prompt="The", seed=1)
        row[f"calibration_{target}"] = round(cal["relative_error"], 3)
    length = 400 if loaded.tokenizer.kind == "char" else 100
    samples = generate(loaded.model, loaded.tokenizer, PROMPTS,
                       [SamplingParams(max_tokens=length, temperature=0.8, seed=i) for i in range(len(PROMPTS))])
    shares = [originality(s.text, corpus) for s in samples]
    shares = [s for s in shares if s is not None]
    row["copied_20char_windows"] = round(1 - sum(shares) / len(shares), 3) if shares else None
    return row


def to_markdown(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
    lines += ["| " + " | ".join(str(row.get(k, "")) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "quality_report")
    args = parser.parse_args()
    paths = args.checkpoints or sorted((ROOT / "improbable" / "bundled").glob("*.safetensors"))
    rows = []
    for path in paths:
        print(f"scoring {path} ...", file=sys.stderr, flush=True)
        rows.append(report_one(path))
    table = to_markdown(rows)
    notes = ("\ncalibration_p: mean |realised − p| / p over 1,000 improbability steps (target ≤ 0.10); "
             "ppl_below_trigram: 1 − model ppl / Kneser–Ney trigram ppl (target ≥ 0.15); "
             "copied_20char_windows: share of generated 20-char windows found verbatim in the corpus.\n")
    print(table + "\n" + notes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text("# Quality report\n\n" + table + "\n" + notes)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
