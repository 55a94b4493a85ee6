"""Does an upload read as its book? Fine-tuning from the shipped base vs training from scratch.

    .venv/bin/python -m bench.quality.finetune                 # alice, the stand-in upload the base never saw
    .venv/bin/python -m bench.quality.finetune --minutes 0.5   # quick look, lower numbers

Three runs on `alice`, same spread validation split, same wall-clock budget, one after the other:
- scratch: the pre-base alice recipe (2x256 char LSTM, dropout 0.2, lr 2e-3), 3 minutes;
- fine-tune: the `alice` recipe (init: base), 3 minutes;
- small upload: the `alice` recipe on the first 60 KB of the book only, 1 minute.
Then the real-word rate of each fine-tuned model (6 seeds × 400 chars at temperature 0.8; the quality
report's definition). Targets: fine-tune ≥ 10 % below scratch in held-out loss, real-word rate ≥ 0.97;
small upload real-word rate ≥ 0.93. Prints a table and writes bench/results/finetune.json ({"rows": [...]}).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.common import RESULTS, load_corpus
from bench.quality.quality_report import WORD_RE, real_word_rate
from core.contracts import SamplingParams
from trainer import checkpoint as ckpt
from trainer.precision import cpu_model
from trainer.recipes import load_recipe
from trainer.sample import generate
from trainer.train import TrainConfig, train

SCRATCH = {"n_layers": 2, "n_embd": 64, "n_hidden": 256, "dropout": 0.2, "lr": 0.002, "min_lr": 0.0002,
           "batch_size": 32, "seq_len": 100, "eval_interval": 50, "init": "", "warmup_steps": 50}
PROMPTS = ["Alice was", "The Queen", "“I", "She", "The"]


def run(name: str, settings: dict, text, out: Path) -> dict:
    config = TrainConfig.from_dict({**load_recipe("alice"), **settings, "out_dir": str(out / name)})
    t0 = time.perf_counter()
    result = train(config, text, resume=False)
    row = {"run": name, "init": config.init or "scratch", "minutes": config.minutes, "steps": result.steps,
           "best_val_loss": round(result.best_val_loss, 4), "seconds": round(time.perf_counter() - t0, 1)}
    print(f"{name}: {row}", flush=True)
    return row


def word_rate(path: Path, corpus_counts: Counter) -> tuple[float | None, str]:
    loaded = ckpt.load(path)
    texts = [s.text for s in generate(loaded.model, loaded.tokenizer, PROMPTS + ["Alice"],
                                      [SamplingParams(max_tokens=400, temperature=0.8, seed=i) for i in range(6)])]
    return real_word_rate(texts, corpus_counts), PROMPTS[0] + texts[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=3.0, help="budget of the scratch and fine-tune runs")
    parser.add_argument("--small-minutes", type=float, default=1.0, help="budget of the 60 KB run")
    parser.add_argument("--out", type=Path, default=RESULTS / "finetune.json")
    args = parser.parse_args()
    corpus = load_corpus("alice")
    small = corpus.text[:60_000]
    counts = Counter(w.lower() for w in WORD_RE.findall(corpus.text))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        scratch = run("scratch", {**SCRATCH, "minutes": args.minutes}, corpus, out)
        tuned = run("fine-tune", {"minutes": args.minutes}, corpus, out)
        upload = run("small-upload", {"minutes": args.small_minutes}, small, out)
        tuned["real_word_rate"], tuned_sample = word_rate(out / "fine-tune" / "best.safetensors", counts)
        upload["real_word_rate"], upload_sample = word_rate(out / "small-upload" / "best.safetensors",
                                                            Counter(w.lower() for w in WORD_RE.findall(small)))
        scratch["real_word_rate"], scratch_sample = word_rate(out / "scratch" / "best.safetensors", counts)
    gain = 1 - tuned["best_val_loss"] / scratch["best_val_loss"]
    rows = [
        {"metric": f"alice {args.minutes:g}-min fine-tune vs scratch (held-out nats/char)", "target": "≥ 10 % lower",
         "measured": f"{tuned['best_val_loss']:.3f} vs {scratch['best_val_loss']:.3f} ({gain:.1%} lower)",
         "ok": gain >= 0.10},
        {"metric": "alice fine-tune real-word rate (T 0.8)", "target": "≥ 0.97",
         "measured": f"{tuned['real_word_rate']:.3f}", "ok": tuned["real_word_rate"] >= 0.97},
        {"metric": f"alice first 60 KB, {args.small_minutes:g}-min fine-tune real-word rate", "target": "≥ 0.93",
         "measured": f"{upload['real_word_rate']:.3f}", "ok": upload["real_word_rate"] >= 0.93},
        {"metric": "alice scratch real-word rate (T 0.8, reference)", "target": "—",
         "measured": f"{scratch['real_word_rate']:.3f}", "ok": True},
    ]
    print(f"\nCPU: {cpu_model()}, torch threads {__import__('torch').get_num_threads()}\n")
    print(f"| {'metric':<62} | {'target':<14} | {'measured':<36} | ok |")
    print(f"|{'-' * 64}|{'-' * 16}|{'-' * 38}|----|")
    for r in rows:
        print(f"| {r['metric']:<62} | {r['target']:<14} | {r['measured']:<36} | {'yes' if r['ok'] else 'MISSED'} |")
    print(f"\nfine-tune sample: {tuned_sample[:300]!r}\nsmall-upload sample: {upload_sample[:300]!r}"
          f"\nscratch sample: {scratch_sample[:300]!r}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpu": cpu_model(), "rows": rows, "runs": [scratch, tuned, upload],
                                    "samples": {"fine-tune": tuned_sample, "small-upload": upload_sample,
                                                "scratch": scratch_sample}}, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
