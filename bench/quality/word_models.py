"""Word models against the best interpolated Kneser–Ney n-gram of order 3 to 5, on the trainer's own held-out split.

    .venv/bin/python -m bench.quality.word_models          # bundled movie-reviews; trains the word-MLP stand-in
    .venv/bin/python -m bench.quality.word_models --movie-reviews runs/mr/best.safetensors --word-mlp runs/hp/best.safetensors
    .venv/bin/python -m bench.quality.word_models --train movie-reviews --train harry-potter-standin  # retrain both
    .venv/bin/python -m bench.quality.word_models --only word-mlp --minutes 0   # the stand-in's 10 epochs, however long
    .venv/bin/python -m bench.quality.word_models --only movie-reviews --out /tmp/mr.json            # just one of them

Targets: the movie-reviews word GRU and the word MLP (the harry-potter recipe: the MLP mixed with a Kneser–Ney
5-gram, trainer.model.NGramMixture, measured on a public-domain stand-in because the books are never shipped) each
reach a held-out perplexity at least 15 % below the best modified Kneser–Ney of order 3, 4 or 5
(bench/quality/kneser_ney.py) on the same tokens.

Same tokens means: the checkpoint's tokenizer encodes the corpus its training config names, the trainer's split
function (trainer.data.rebuild_split: the paragraph split of trainer.heldout that trainer.train.train makes, or the
older token-block split for a checkpoint that records none) gives the training and held-out ids, every n-gram is
counted on exactly the training ids (the mixture's tune slice included: the MLP never trained on it), and every
model is scored on exactly the same held-out target positions (every position the model predicts that has four
tokens of context before it). Nothing is fitted on the held-out text: the mixture's weights were fitted on the
tune slice of the training text when the run ended (trainer/mixture.py).

Each model also writes a few texts from a prompt (temperature 0.8), kept in the JSON: a perplexity bought with
nonsense would show there.

Writes bench/results/word_models.json: {"rows": [{persona, metric, target, measured, ok, detail}], "models": [...]}.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import RESULTS, ROOT, load_corpus
from bench.quality.kneser_ney import ORDERS, KneserNeyTrigram, best_kneser_ney
from core.contracts import SamplingParams
from core.text import DecodedCorpus
from trainer import checkpoint as ckpt
from trainer.data import rebuild_split
from trainer.mixture import stream_log_probs
from trainer.model import NGramMixture
from trainer.recipes import load_recipe
from trainer.sample import generate
from trainer.train import TrainConfig, train

TARGET_BELOW_KN = 0.15
EVAL_BATCH, EVAL_SEQ = 32, 100
STANDIN_RECIPE = "harry-potter-standin"
BUNDLED = ROOT / "db" / "bundled"
PROMPTS = {"movie-reviews": "this movie was", STANDIN_RECIPE: "she was"}
SAMPLE_SEEDS, SAMPLE_TOKENS = (0, 1, 2), 60


def load_training_corpus(name: str) -> DecodedCorpus:
    """A recipe's corpus: a name on the corpus path (the stand-in's austen is a selection of the base corpus,
    trainer.corpus.SELECTIONS), or a path."""
    return load_corpus(name)


def held_out_split(tokenizer, corpus: DecodedCorpus | str, meta: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(training ids, held-out ids) exactly as the run whose checkpoint metadata is `meta` made them
    (trainer.data.rebuild_split: the split function training used)."""
    train_ids, val_ids, _ = rebuild_split(meta, tokenizer, corpus)
    return train_ids, val_ids


def model_log_probs(model, ids: torch.Tensor, batch_size: int = EVAL_BATCH,
                    seq_len: int = EVAL_SEQ) -> tuple[np.ndarray, np.ndarray]:
    """(target positions in `ids`, log P(ids[position])): trainer.mixture.stream_log_probs, as numpy."""
    positions, log_probs = stream_log_probs(model, ids, batch_size, seq_len)
    return positions.numpy(), log_probs.numpy()


def samples(loaded: ckpt.Checkpoint, prompt: str) -> list[str]:
    """What the model writes after `prompt` at temperature 0.8, one text per seed."""
    params = [SamplingParams(max_tokens=SAMPLE_TOKENS, temperature=0.8, seed=seed) for seed in SAMPLE_SEEDS]
    return [prompt + " " + r.text.strip() for r in generate(loaded.model, loaded.tokenizer, [prompt] * len(params),
                                                            params)]


def _scores(loaded: ckpt.Checkpoint, train_ids: torch.Tensor, val_ids: torch.Tensor) -> dict:
    """Held-out perplexities of the model (and of its MLP alone, for a mixture) and of Kneser–Ney of each order,
    all on the positions with max(ORDERS) − 1 tokens before them."""
    positions, model_lp = model_log_probs(loaded.model, val_ids)
    keep = positions >= max(ORDERS) - 1
    positions, model_lp = positions[keep], model_lp[keep]
    V = len(loaded.tokenizer)
    train, val = train_ids.numpy(), val_ids.numpy()
    kn = best_kneser_ney(train, val, positions, V)
    fixed = KneserNeyTrigram(train, V)
    fixed_lp = np.log(fixed.prob(val[positions - 2], val[positions - 1], val[positions]))
    scores = {"positions": positions, "model_ppl": math.exp(-model_lp.mean()), "kn": kn,
              "kn_trigram_d075_ppl": math.exp(-fixed_lp.mean())}
    if isinstance(loaded.model, NGramMixture):
        mlp_positions, mlp_lp = model_log_probs(loaded.model.mlp, val_ids)
        scores["mlp_ppl"] = math.exp(-mlp_lp[mlp_positions >= max(ORDERS) - 1].mean())
    return scores


def compare(path: Path, persona: str, prompt: str = "the") -> dict:
    """Score one checkpoint and the Kneser–Ney models on the same held-out positions; sample it."""
    loaded = ckpt.load(path, dtype=torch.float32)
    config = loaded.meta["train_config"]
    started = time.perf_counter()
    corpus = load_training_corpus(config["corpus"])
    train_ids, val_ids = held_out_split(loaded.tokenizer, corpus, loaded.meta)
    scores = _scores(loaded, train_ids, val_ids)
    positions, kn = scores["positions"], scores["kn"]
    model_ppl = scores["model_ppl"]
    history = loaded.meta.get("history") or []
    split = loaded.meta.get("split", {})
    val = val_ids.numpy()
    return {
        "persona": persona,
        "checkpoint": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
        "file_mb": round(path.stat().st_size / 1e6, 2),
        "family": loaded.family,
        "model": {k: v for k, v in loaded.meta["model"].items() if k != "ngram_sizes"},
        "n_params": loaded.meta.get("n_params"),
        "corpus": config["corpus"],
        "corpus_sha256": loaded.meta.get("corpus_sha256"),
        "split": config.get("split", "tail (a checkpoint from before the spread split)"),
        # the run recorded its split's training size (its val_tokens may be the capped evaluation set)
        "split_meta_matches": (not split) or split.get("train_tokens") in (None, len(train_ids)),
        "vocab_size": len(loaded.tokenizer),
        "train_tokens": len(train_ids),
        "val_tokens": len(val_ids),
        "scored_tokens": int(len(positions)),
        "unk_share_scored": round(float((val[positions] == 0).mean()), 4),
        "model_ppl": round(model_ppl, 2),
        "mlp_alone_ppl": round(scores["mlp_ppl"], 2) if "mlp_ppl" in scores else None,
        "mixture": loaded.meta.get("mixture"),
        "kn_ppl": {str(order): round(ppl, 2) for order, ppl in kn["ppl"].items()},
        "kn_best_order": kn["best_order"],
        "kn_best_ppl": round(kn["best_ppl"], 2),
        "kn_trigram_d075_ppl": round(scores["kn_trigram_d075_ppl"], 2),
        "below_kn": round(1 - model_ppl / kn["best_ppl"], 4),
        "steps": loaded.meta.get("step"),
        "train_minutes": round(history[-1]["elapsed"] / 60, 2) if history else None,
        "scoring_seconds": round(time.perf_counter() - started, 1),
        "samples": samples(loaded, prompt),
    }


def train_recipe(name: str, out_dir: Path, minutes: float | None) -> Path:
    recipe = load_recipe(name)
    if minutes is not None:  # 0: no time budget, the recipe's epochs or steps alone (the same run on a busy machine)
        recipe["minutes"] = minutes
    config = TrainConfig.from_dict({**recipe, "out_dir": str(out_dir)})
    corpus = load_training_corpus(config.corpus)
    budget = [f"{config.minutes} min"] * bool(config.minutes) + [f"{config.max_epochs} epochs"] * bool(config.max_epochs)
    budget += [f"{config.max_steps} steps"] * bool(config.max_steps)
    print(f"{name}: training {config.family} on {config.corpus} for at most {' or '.join(budget)}", file=sys.stderr,
          flush=True)
    started = time.perf_counter()
    result = train(config, corpus, resume=False)
    print(f"{name}: {result.steps} steps, best val {result.best_val_loss:.4f} nats/token, {result.stop_reason}, "
          f"{(time.perf_counter() - started) / 60:.1f} min wall clock", file=sys.stderr, flush=True)
    return out_dir / "best.safetensors"


def target_row(result: dict, what: str) -> dict:
    return {
        "persona": result["persona"],
        "metric": f"{what}: perplexity below the best Kneser–Ney of order 3–5 on the same held-out tokens",
        "target": f">= {TARGET_BELOW_KN:.2f}",
        "measured": result["below_kn"],
        "ok": result["below_kn"] >= TARGET_BELOW_KN,
        "detail": f"model ppl {result['model_ppl']} vs Kneser–Ney {result['kn_best_order']}-gram ppl "
                  f"{result['kn_best_ppl']} (orders 3/4/5: {', '.join(map(str, result['kn_ppl'].values()))}) on "
                  f"{result['scored_tokens']:,} held-out tokens of {result['corpus']} ({result['split']} split)"
                  + (f"; the MLP alone {result['mlp_alone_ppl']}" if result.get("mlp_alone_ppl") else ""),
    }


def to_markdown(results: list[dict]) -> str:
    keys = ["persona", "family", "corpus", "train_tokens", "scored_tokens", "model_ppl", "mlp_alone_ppl",
            "kn_best_ppl", "kn_best_order", "below_kn", "n_params", "file_mb", "train_minutes"]
    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in results]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--movie-reviews", type=Path, help="a word-gru checkpoint (default: the bundled one)")
    parser.add_argument("--word-mlp", type=Path,
                        help=f"a word-mlp checkpoint (default: train the {STANDIN_RECIPE} recipe first)")
    parser.add_argument("--train", action="append", default=[], metavar="RECIPE",
                        help="train this recipe first and score its best checkpoint (repeatable)")
    parser.add_argument("--minutes", type=float,
                        help="override the time budget of recipes trained here (0: none, their epochs or steps only)")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "word_models")
    parser.add_argument("--out", type=Path, default=RESULTS / "word_models.json")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a busy 2-core machine two threads are several times slower)")
    parser.add_argument("--only", choices=("movie-reviews", "word-mlp"),
                        help="score just one of the two (its rows replace that model's rows in --out)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.only != "movie-reviews" and args.word_mlp is None and STANDIN_RECIPE not in args.train:
        args.train.append(STANDIN_RECIPE)
    trained = {name: train_recipe(name, args.runs / name, args.minutes) for name in args.train}
    jobs = []
    if args.only != "word-mlp":
        path = trained.get("movie-reviews") or args.movie_reviews or BUNDLED / "movie-reviews.safetensors"
        jobs.append((path, "movie-reviews", "word GRU"))
    if args.only != "movie-reviews":
        jobs.append((args.word_mlp or trained[STANDIN_RECIPE], STANDIN_RECIPE, "word MLP (public-domain stand-in)"))

    results = []
    for path, persona, what in jobs:
        print(f"scoring {path} ...", file=sys.stderr, flush=True)
        results.append({**compare(path, persona, PROMPTS[persona]), "what": what})
    rows = [target_row(r, r["what"]) for r in results]
    print(to_markdown(results))
    for row in rows:
        print(f"{'ok    ' if row['ok'] else 'MISSED'} {row['persona']}: {row['measured']:.3f} below the best "
              f"Kneser–Ney (target {row['target']}); {row['detail']}")
    for r in results:
        print(f"\n{r['persona']} writes (temperature 0.8, seeds {SAMPLE_SEEDS}):")
        print("\n".join(f"  - {text!r}" for text in r["samples"]))
    if args.only and args.out.exists():  # scoring one model keeps the other's rows from an earlier run
        earlier = json.loads(args.out.read_text())
        rows = [r for r in earlier.get("rows", []) if r.get("persona") not in {r["persona"] for r in rows}] + rows
        results = [m for m in earlier.get("models", []) if m.get("persona") not in {m["persona"] for m in results}] + results
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "models": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
