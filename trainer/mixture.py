"""The word MLP's mixture with a Kneser–Ney n-gram (trainer.model.NGramMixture), fitted when a run ends.

A run with `ngram_order` keeps a slice of its training text away from the MLP (`ngram_tune_fraction`, split off
the training text the way the held-out text is: trainer.data.load_data). When training ends, the best MLP and an
n-gram counted on the rest of the training text score that tune slice, and the MLP's share λ(d) for each depth of
context d is fitted on it by EM (each λ(d) is the mean posterior that the MLP produced the word). The n-gram is
then counted again on all the training text, the tune slice included, and the mixture replaces the best
checkpoint. The held-out text is scored, never fitted on.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from . import checkpoint as ckpt
from .data import TokenStreams
from .evaluate import eval_streams, evaluate
from .model import MLPLM, LanguageModel, ModelConfig, NGramMixture
from .ngram import KneserNey

if TYPE_CHECKING:
    from .train import Run

EM_ITERATIONS = 200


@torch.inference_mode()
def stream_log_probs(model: LanguageModel, ids: torch.Tensor, batch_size: int = 32,
                     seq_len: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """(target positions in `ids`, log P(ids[position])) for every token the model predicts when `ids` is read
    as `batch_size` contiguous streams with the state carried through each (as trainer.evaluate does)."""
    model.eval()
    data = TokenStreams(ids, batch_size, seq_len)
    stream_len = data.x.size(1)
    state = model.init_state(batch_size, ids.device)
    columns = []
    for x, y in data.all_chunks():
        hidden, state = model(x, state)
        columns.append(model.head.token_log_probs(hidden, y).float())
    log_probs = torch.cat(columns, 1)  # (batch, stream_len): targets ids[b * stream_len + t + 1]
    positions = torch.arange(batch_size)[:, None] * stream_len + torch.arange(stream_len)[None, :] + 1
    return positions.reshape(-1), log_probs.reshape(-1).double()


def contexts_at(ids: torch.Tensor, positions: torch.Tensor, length: int) -> torch.Tensor:
    """The `length` ids before each position (positions >= length), oldest first: (N, length)."""
    return torch.stack([ids[positions - length + j] for j in range(length)], 1)


def fit_weights(neural_log_probs: torch.Tensor, ngram_log_probs: torch.Tensor, depth: torch.Tensor,
                buckets: int) -> list[float]:
    """The MLP's share λ(d) for each depth d (0..buckets − 1) that maximises the mixture's likelihood of the
    tokens given (EM); a depth with no token gets the mean of the others."""
    a, b = neural_log_probs.double().exp(), ngram_log_probs.double().exp()
    d = depth.long()
    seen = torch.bincount(d, minlength=buckets).double()
    lam = torch.full((buckets,), 0.5, dtype=torch.float64)
    for _ in range(EM_ITERATIONS):
        share = lam[d] * a / (lam[d] * a + (1 - lam[d]) * b)
        lam = torch.bincount(d, weights=share, minlength=buckets) / seen.clamp(min=1)
    fallback = float(lam[seen > 0].mean()) if bool((seen > 0).any()) else 0.5
    lam = torch.where(seen > 0, lam, fallback).clamp(1e-3, 1 - 1e-3)
    return [round(float(x), 6) for x in lam]


def mix(mlp: MLPLM, ngram: KneserNey, weights: list[float]) -> NGramMixture:
    """`mlp` and `ngram` as one model, the MLP's share for each context depth `weights`."""
    config = ModelConfig.from_dict({**mlp.config.to_dict(), "ngram_order": ngram.order, "ngram_sizes": ngram.sizes,
                                    "ngram_weights": weights})
    model = NGramMixture(config)
    model.mlp.load_state_dict(mlp.state_dict())
    model.ngram.load_state_dict(ngram.state_dict())
    return model.to(next(mlp.parameters()).device).eval()


def fit_mixture(mlp: MLPLM, fit_ids: torch.Tensor, tune_ids: torch.Tensor, train_ids: torch.Tensor,
                order: int) -> tuple[NGramMixture, dict]:
    """(the mixture, a report): λ fitted on `tune_ids` against an n-gram of `fit_ids` (the MLP's own training
    ids), the mixture's n-gram counted on `train_ids` (all the training ids)."""
    V = mlp.config.vocab_size
    ngram = KneserNey.count(fit_ids.cpu(), V, order)
    positions, neural = stream_log_probs(mlp, tune_ids, batch_size=min(32, max(1, (len(tune_ids) - 1) // 8)))
    keep = positions >= order - 1
    positions, neural = positions[keep], neural[keep].cpu()
    tune = tune_ids.cpu()
    contexts = contexts_at(tune, positions, order - 1)
    kn = ngram.prob(contexts, tune[positions]).log()
    depth = ngram.depth(contexts)
    weights = fit_weights(neural, kn, depth, order)
    lam = torch.tensor(weights, dtype=torch.float64)[depth]
    mixed = torch.logaddexp(neural + lam.log(), kn + (1 - lam).log())
    report = {"order": order, "weights": weights, "tune_tokens": len(positions),
              "tune_nats": {"mlp": round(-float(neural.mean()), 4), "ngram": round(-float(kn.mean()), 4),
                            "mixture": round(-float(mixed.mean()), 4)}}
    return mix(mlp, KneserNey.count(train_ids.cpu(), V, order), weights), report


def finish_run(run: Run, stop_reason: str) -> None:
    """A run with `ngram_order` that was not stopped: its best checkpoint becomes the mixture of the best MLP with
    the n-gram, and the run's best held-out loss the mixture's (the last checkpoint keeps the MLP's, which
    a resumed run goes on comparing its MLP with)."""
    config, data = run.config, run.data
    if not config.ngram_order or stop_reason == "stopped" or data.tune_ids is None or len(data.tune_ids) < 64:
        return
    best = ckpt.load(run.out_dir / "best.safetensors", device=data.train_ids.device)
    mlp = best.model.mlp if isinstance(best.model, NGramMixture) else best.model
    model, report = fit_mixture(mlp, data.fit_ids, data.tune_ids, data.train_ids, config.ngram_order)
    val_loss = evaluate(model, eval_streams(data.val_ids, 0, data.batch_size, data.seq_len, data.block))
    neural = best.meta["metrics"].get("val_loss_neural", best.meta["metrics"]["val_loss"])
    report["val_nats"] = {"mlp": round(neural, 4), "mixture": round(val_loss, 4)}
    metrics = {**run.metrics(val_loss), "val_loss_neural": neural, "val_ppl_neural": math.exp(min(neural, 50))}
    ckpt.save(run.out_dir / "best.safetensors", model, best.tokenizer,
              {**run.meta, "metrics": metrics, "step": best.meta["step"], "history": best.meta.get("history", []),
               "mixture": report})
    run.state.best_val = val_loss

