"""The classical baselines of the quality reports: interpolated Kneser–Ney word n-grams, trainer/ngram.py's model
(the one the word MLP mixes with: trainer.model.NGramMixture), here with numpy in and out. No library: nltk's
KneserNeyInterpolated is far too slow for a 5M-token corpus and kenlm needs a native build.

- `best_kneser_ney`: modified Kneser–Ney (three discounts per order, estimated from the counts of counts) of
  each order 3..5 on the same held-out positions, and the best of them: what bench/quality/word_models.py
  holds the word models to.
- `KneserNeyTrigram`: Kneser & Ney's original single discount D = 0.75 at order 3, the baseline
  bench/quality/quality_report.py has always used.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from trainer.ngram import KneserNey

ORDERS = (3, 4, 5)


def contexts(ids: np.ndarray, positions: np.ndarray, length: int) -> torch.Tensor:
    """The `length` ids before each position, oldest first: (N, length)."""
    t, p = torch.as_tensor(np.asarray(ids), dtype=torch.long), torch.as_tensor(np.asarray(positions))
    return torch.stack([t[p - length + j] for j in range(length)], 1)


def kneser_ney_log_probs(model: KneserNey, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """ln P(ids[p] | the order − 1 ids before it) for each position p (>= order − 1)."""
    w = torch.as_tensor(np.asarray(ids)[positions], dtype=torch.long)
    return model.prob(contexts(ids, positions, model.order - 1), w).log().numpy()


def best_kneser_ney(train_ids: np.ndarray, val_ids: np.ndarray, positions: np.ndarray, vocab_size: int,
                    orders: tuple[int, ...] = ORDERS) -> dict:
    """{"ppl": {order: perplexity}, "best_order", "best_ppl", "log_probs": the best order's ln P per position}
    of modified Kneser–Ney counted on `train_ids`, scored on val_ids[positions] (positions >= max(orders) − 1)."""
    ppl, log_probs = {}, {}
    for order in orders:
        model = KneserNey.count(torch.as_tensor(np.asarray(train_ids)), vocab_size, order)
        log_probs[order] = kneser_ney_log_probs(model, val_ids, positions)
        ppl[order] = math.exp(-log_probs[order].mean())
    best = min(ppl, key=ppl.get)
    return {"ppl": ppl, "best_order": best, "best_ppl": ppl[best], "log_probs": log_probs[best]}


class KneserNeyTrigram:
    """Order 3, one discount D for every count (Kneser & Ney 1995's interpolated form)."""

    def __init__(self, tokens: np.ndarray, vocab_size: int, discount: float = 0.75):
        self.model = KneserNey.count(torch.as_tensor(np.asarray(tokens)), vocab_size, 3, discount=discount)

    def prob(self, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
        context = torch.stack([torch.as_tensor(np.asarray(u)), torch.as_tensor(np.asarray(v))], 1).long()
        return self.model.prob(context, torch.as_tensor(np.asarray(w)).long()).numpy()

    def nats_per_token(self, tokens: np.ndarray) -> float:
        """Mean negative log-likelihood of tokens[2:] given the two before each."""
        return self.model.nats_per_token(torch.as_tensor(np.asarray(tokens)))

    def perplexity(self, tokens: np.ndarray) -> float:
        return math.exp(self.nats_per_token(tokens))
