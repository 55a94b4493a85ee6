"""Does a longer budget overfit a small upload? An upload-sized book fine-tuned with the upload recipe.

    .venv/bin/python -m bench.quality.early_stop                       # 1 and 3 minutes, early stopping on
    .venv/bin/python -m bench.quality.early_stop --minutes 3 10        # the budgets uploads are given
    .venv/bin/python -m bench.quality.early_stop --without 3           # also: the recipe without early stopping
    .venv/bin/python -m bench.quality.early_stop --minutes 10 --without 10 --parallel --append
                                         # both at once (same share of a busy CPU), rows added to the results file

Each run fine-tunes the shipped base on one ~200 KB book of the base corpus (default Heart of Darkness, 214 KB)
with the default upload recipe (`alice`: trainer/recipes/alice.json), same spread validation split, one after the
other on one thread. Reports the best held-out loss (nats/char, scored on the whole held-out split), the last
evaluation's, the training loss, steps, epochs and why the run stopped. Target: a longer budget ends no worse than a
shorter one (best held-out loss within 0.005 nats/char). Prints a table and writes bench/results/early_stop.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from bench.common import RESULTS, corpus_dirs, print_table
from trainer.precision import cpu_model
from trainer.recipes import load_recipe
from trainer.train import TrainConfig, train

BOOK = "base/219-heart-of-darkness.txt"


def run(text: str, minutes: float, early: bool, out: Path) -> dict:
    settings = {**load_recipe("alice"), "minutes": minutes, "threads": 1}
    if not early:
        settings["patience_epochs"] = 0
    name = f"{minutes:g}min-{'early' if early else 'no-early'}"
    config = TrainConfig.from_dict({**settings, "out_dir": str(out / name)})
    epochs = [0.0]

    def on_event(event, progress, details) -> None:
        epochs[0] = progress.epoch

    t0 = time.perf_counter()
    result = train(config, text, callback=on_event, resume=False)
    history = result.history
    best_at = min(history, key=lambda h: h["val_loss"])["step"] if history else 0
    row = {"minutes": minutes, "early_stopping": early, "patience_epochs": config.patience_epochs,
           "steps": result.steps, "epochs": round(epochs[0], 1), "best_step": best_at, "best_val_loss": round(result.best_val_loss, 4),
           "last_val_loss": round(result.last_val_loss, 4),
           "train_loss": round(history[-1]["train_loss"], 4) if history else None,
           "seconds": round(time.perf_counter() - t0, 1), "stop_reason": result.stop_reason}
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 3.0], help="budgets, early stopping on")
    parser.add_argument("--without", type=float, nargs="*", default=[], help="budgets run without early stopping")
    parser.add_argument("--book", default=BOOK, help="a text file under the corpus path")
    parser.add_argument("--parallel", action="store_true", help="run every budget at once, one process each")
    parser.add_argument("--append", action="store_true", help="add the rows to those already in --out")
    parser.add_argument("--out", type=Path, default=RESULTS / "early_stop.json")
    args = parser.parse_args()
    path = next(d / args.book for d in corpus_dirs() if (d / args.book).is_file())
    text = path.read_text(encoding="utf-8")
    load = os.getloadavg()
    jobs = [(text, m, True) for m in args.minutes] + [(text, m, False) for m in args.without]
    with tempfile.TemporaryDirectory() as tmp:
        if args.parallel:
            with ProcessPoolExecutor(len(jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
                rows = list(pool.map(run, *zip(*jobs), [Path(tmp)] * len(jobs)))
        else:
            rows = [run(*job, Path(tmp)) for job in jobs]
    for row in rows:
        row.update(parallel=args.parallel, load_before=[round(x, 2) for x in load])
    if args.append and args.out.exists():
        rows = json.loads(args.out.read_text())["rows"] + rows
    early = sorted((r for r in rows if r["early_stopping"]), key=lambda r: r["minutes"])  # over every row kept
    no_worse = all(b["best_val_loss"] <= a["best_val_loss"] + 0.005 for a, b in zip(early, early[1:]))
    print_table(f"{path.name} ({len(text) / 1000:.0f} KB), recipe alice, one thread", rows)
    print(f"\nlonger budget no worse (best held-out within 0.005 nats/char): {no_worse}")
    record = {"book": path.name, "chars": len(text), "recipe": "alice", "rows": rows, "longer_no_worse": no_worse,
              "host": {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
                       "load_before": [round(x, 2) for x in load],
                       "load_after": [round(x, 2) for x in os.getloadavg()]}}
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
