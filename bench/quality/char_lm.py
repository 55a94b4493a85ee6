"""Character-model quality on tiny-shakespeare (nanoGPT's 90/10 split) per wall-clock minute.

    python -m bench.quality.char_lm                        # 3 and 10 minutes (about 15 minutes on 2 cores)
    python -m bench.quality.char_lm --minutes 3

Prints a table and writes JSON (bench/results/char_lm_quality.json). Targets (this 2-core CPU): val ≤ 1.48
nats/char after 3 min and ≤ 1.40 after 10 min with the default recipe. The speed half is bench/speed/char_lm.py.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from bench.common import RESULTS, load_corpus, print_table
from trainer import checkpoint as ckpt
from trainer.data import BLOCK_TOKENS, TokenStreams, split_documents
from trainer.evaluate import evaluate
from trainer.recipes import load_recipe
from trainer.train import TrainConfig, train

TARGETS = {"quality_3": 1.48, "quality_10": 1.40}


def recipe_config(minutes: float, out_dir: str, **overrides) -> TrainConfig:
    recipe = {**load_recipe("shakespeare-3min"), "minutes": minutes, "out_dir": out_dir, **overrides}
    return TrainConfig.from_dict(recipe)


def bench_quality(minutes_list: list[float]) -> list[dict]:
    corpus = load_corpus("shakespeare")
    rows = []
    for minutes in minutes_list:
        with tempfile.TemporaryDirectory() as tmp:
            # The default recipe for the 3-minute budget; its 10-minute sibling (bigger, with dropout) above.
            recipe = {} if minutes <= 3 else load_recipe("shakespeare-10min")
            for key in ("corpus", "minutes", "out_dir"):
                recipe.pop(key, None)
            config = recipe_config(minutes, tmp, **recipe)
            t0 = time.perf_counter()
            result = train(config, corpus, resume=False)
            wall = time.perf_counter() - t0
            # the trainer scores a time-budgeted run's evaluations on a sample of the held-out text: the
            # checkpoint it ships is scored here on the whole split
            best = ckpt.load(Path(tmp) / "best.safetensors")
            ids = [torch.tensor(best.tokenizer.encode(d), dtype=torch.long) for d in corpus.document_texts()]
            _, val_ids = split_documents(ids, config.val_fraction, config.split, BLOCK_TOKENS["char"])
            val = evaluate(best.model, TokenStreams(val_ids, min(32, config.batch_size), config.seq_len))
        rows.append({"minutes": minutes, "model": f"{config.n_layers}x{config.n_hidden} {config.cell} {config.precision}",
                     "val_nats_per_char": round(val, 4), "val_bits_per_char": round(val / 0.6931471805599453, 4),
                     "trainer_best_val_sampled": round(result.best_val_loss, 4),
                     "steps": result.steps, "wall_s": round(wall, 1),
                     "epochs": round(result.steps * config.batch_size * config.seq_len / 1_003_854, 2)})
        print_table(f"quality after {minutes:g} minutes", rows[-1:])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", nargs="*", type=float, default=[3, 10])
    parser.add_argument("--json", default=str(RESULTS / "char_lm_quality.json"))
    args = parser.parse_args()

    report = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__, "cuda": torch.cuda.is_available()},
              "targets": TARGETS}
    report["quality"] = bench_quality(args.minutes)
    print_table("quality (tiny-shakespeare val, nats/char, wall clock incl. evaluation)", report["quality"])
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
