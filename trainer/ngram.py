"""Interpolated Kneser–Ney n-gram model of any order over word ids (Chen & Goodman 1998), in torch so that it can
be a part of a word model (trainer/mixture.py: the word MLP mixed with it) and be saved in its checkpoint, and so
that counting a few million tokens takes seconds. bench/quality/kneser_ney.py measures the word models against it.

    P_k(w | h) = max(c_k(hw) − D_k(c_k(hw)), 0) / c_k(h·)  +  γ_k(h) · P_{k−1}(w | h')     if c_k(h·) > 0
               = P_{k−1}(w | h')                                                              otherwise
    γ_k(h)     = (D_k1 · N1(h·) + D_k2 · N2(h·) + D_k3+ · N3+(h·)) / c_k(h·),      P_0(w) = 1 / V

c_k is the raw count at the top order and the continuation count (the number of distinct words seen before the
k-gram) below it; h' is h without its oldest word. The discounts are "modified" Kneser–Ney's three per order,
estimated from the counts of counts, or one fixed D for every count (Kneser & Ney's original, `discount=`).

Tables. A k-gram g has an id: the word itself for k = 1, else the index of its code in `keys{k}` (sorted), where
code(g) = id(g without its last word) · V + its last word, so that every code fits in int64 whatever the order.
Stored (the checkpoint's tensors, all integers, so casting a model to bf16 leaves them exact): keys{k} for
k = 2..order and counts{k} for k = 1..order. Derived when built or loaded: the per-context totals and N1/N2/N3+.
"""

from __future__ import annotations

import torch
from torch import nn

MAX_COUNT = 2**31 - 1  # counts are stored as int32


def _lookup(keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Index of each query in the sorted `keys`, −1 where absent (a negative query is always absent)."""
    if len(keys) == 0:
        return torch.full_like(queries, -1)
    pos = torch.searchsorted(keys, queries).clamp(max=len(keys) - 1)
    return torch.where(keys[pos] == queries, pos, -1)


def _discounts(counts: torch.Tensor, fixed: float | None) -> list[float]:
    """(D1, D2, D3+) of one order: Chen & Goodman's estimate from the counts of counts, or `fixed` for all."""
    if fixed is not None:
        return [fixed] * 3
    n = [int((counts == k).sum()) for k in (1, 2, 3, 4)]
    if min(n) == 0:  # too little text to estimate: the usual single discount
        return [0.75] * 3
    y = n[0] / (n[0] + 2 * n[1])
    estimate = [1 - 2 * y * n[1] / n[0], 2 - 3 * y * n[2] / n[1], 3 - 4 * y * n[3] / n[2]]
    return [min(max(d, 0.05), k + 0.95) for k, d in enumerate(estimate)]  # D_c < c + 1: never a negative share


class KneserNey(nn.Module):
    def __init__(self, vocab_size: int, order: int, sizes: list[int] | None = None, discount: float | None = None):
        """Empty tables of `sizes` (entries of keys2..keys{order}): what a checkpoint's tensors are loaded into.
        `KneserNey.count` builds a filled one from token ids."""
        super().__init__()
        if order < 1:
            raise ValueError(f"an n-gram model needs order >= 1, got {order}")
        sizes = list(sizes or [0] * (order - 1))
        if len(sizes) != order - 1:
            raise ValueError(f"an order-{order} model has {order - 1} key tables, got sizes {sizes}")
        self.V, self.order, self.fixed_discount = int(vocab_size), int(order), discount
        self.register_buffer("counts1", torch.zeros(vocab_size, dtype=torch.int32))
        for k, size in enumerate(sizes, start=2):
            self.register_buffer(f"keys{k}", torch.zeros(size, dtype=torch.long))
            self.register_buffer(f"counts{k}", torch.zeros(size, dtype=torch.int32))
        self.discounts: list[list[float]] = []  # per order, set with the stats by derive()
        self.register_load_state_dict_post_hook(lambda module, _: module.derive())

    @property
    def sizes(self) -> list[int]:
        return [len(self.keys(k)) for k in range(2, self.order + 1)]

    def keys(self, k: int) -> torch.Tensor:
        return getattr(self, f"keys{k}")

    def counts(self, k: int) -> torch.Tensor:
        return getattr(self, f"counts{k}")

    # -- building -------------------------------------------------------------------------------------------

    @classmethod
    def count(cls, tokens: torch.Tensor, vocab_size: int, order: int, discount: float | None = None) -> KneserNey:
        """The model of the token stream `tokens` (1-D ids < vocab_size)."""
        t = torch.as_tensor(tokens, dtype=torch.long).cpu()
        V = vocab_size
        starts = [t]  # starts[k - 1][i]: the id of the k-gram starting at position i
        keys, raw = {}, None
        for k in range(2, order + 1):
            code = starts[-1][:-1] * V + t[k - 1:]
            keys[k], inverse, raw = torch.unique(code, sorted=True, return_inverse=True, return_counts=True)
            starts.append(inverse)
        model = cls(V, order, [len(keys[k]) for k in range(2, order + 1)], discount)
        for k in range(2, order + 1):
            model.keys(k).copy_(keys[k])
        counts = {order: raw if order > 1 else torch.bincount(t, minlength=V)}
        for k in range(1, order):  # continuation counts: the distinct (k+1)-grams each k-gram ends
            size = V if k == 1 else len(keys[k])
            suffix = torch.zeros(len(keys[k + 1]), dtype=torch.long).scatter_(0, starts[k], starts[k - 1][1:])
            counts[k] = torch.bincount(suffix, minlength=size)
        for k, c in counts.items():
            model.counts(k).copy_(c.clamp(max=MAX_COUNT))
        model.derive()
        return model

    def derive(self) -> None:
        """Check the tables (they may come from an untrusted file) and derive the per-context totals and
        N1/N2/N3+ (`stats{k}`: one row per (k−1)-gram id) and the discounts."""
        self.discounts = []
        if self.counts1.is_meta:  # built on the meta device to read its shapes: nothing to derive
            return
        self._check()
        for k in range(1, self.order + 1):
            c = self.counts(k).long()
            prefix = torch.zeros_like(c) if k == 1 else self.keys(k) // self.V
            contexts = 1 if k == 1 else (self.V if k == 2 else len(self.keys(k - 1)))
            stats = torch.stack([torch.bincount(prefix, weights=w, minlength=contexts).long()
                                 for w in (c.double(), (c == 1).double(), (c == 2).double(), (c >= 3).double())], 1)
            self.register_buffer(f"stats{k}", stats, persistent=False)
            self.discounts.append(_discounts(c, self.fixed_discount))

    def _check(self) -> None:
        if len(self.counts1) != self.V:
            raise ValueError(f"n-gram counts1 has {len(self.counts1)} entries for a {self.V}-word vocabulary")
        for k in range(1, self.order + 1):
            if len(self.counts(k)) and int(self.counts(k).min()) < 0:
                raise ValueError(f"n-gram counts{k} has negative counts")
        for k in range(2, self.order + 1):
            keys, contexts = self.keys(k), self.V if k == 2 else len(self.keys(k - 1))
            if len(keys) and (int(keys[0]) < 0 or int(keys[-1]) >= contexts * self.V
                              or (len(keys) > 1 and not bool((keys[1:] > keys[:-1]).all()))):
                raise ValueError(f"n-gram keys{k} are not strictly increasing codes of known contexts")

    # -- probabilities --------------------------------------------------------------------------------------

    def context_ids(self, context: torch.Tensor) -> list[torch.Tensor]:
        """For contexts (N, order − 1) of word ids, oldest first: [ids of the last k − 1 words for k = 1..order],
        −1 where that (k − 1)-gram never occurred (k = 1: the empty context, id 0)."""
        N, m = context.size(0), self.order - 1
        ids = [torch.zeros(N, dtype=torch.long, device=context.device)]
        for length in range(1, m + 1):
            h = context[:, m - length]
            for j in range(m - length + 1, m):
                h = _lookup(self.keys(j - (m - length) + 1), h * self.V + context[:, j])
            ids.append(h)
        return ids

    def depth(self, context: torch.Tensor) -> torch.Tensor:
        """The longest suffix of each context that occurred as a context in training (0..order − 1): how far
        up the orders its prediction reaches, the mixture's bucket (trainer/mixture.py)."""
        out = torch.zeros(context.size(0), dtype=torch.long, device=context.device)
        for k, h in enumerate(self.context_ids(context), start=1):
            seen = (h >= 0) & (getattr(self, f"stats{k}")[h.clamp(min=0), 0] > 0)
            out = torch.where(seen, torch.full_like(out, k - 1), out)
        return out

    def _context_weights(self, k: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(c_k(h·), γ_k(h)) in float64 for the order-k context ids `h` (0 where the context is unseen)."""
        stats = getattr(self, f"stats{k}")[h.clamp(min=0)].double()
        total = torch.where(h >= 0, stats[:, 0], 0.0)
        d1, d2, d3 = self.discounts[k - 1]
        return total, (d1 * stats[:, 1] + d2 * stats[:, 2] + d3 * stats[:, 3]) / total.clamp(min=1)

    def _discounted(self, k: int, c: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """max(c − D_k(c), 0) for order-k counts c."""
        d = torch.tensor([0.0, *self.discounts[k - 1]], dtype=dtype, device=c.device)
        return (c.to(dtype) - d[c.long().clamp(0, 3)]).clamp(min=0)

    def prob(self, context: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """P(w | context) in float64 for contexts (N, order − 1), oldest first, and next words w (N,)."""
        w = w.long()
        p = torch.full(w.shape, 1.0 / self.V, dtype=torch.float64, device=w.device)
        for k, h in enumerate(self.context_ids(context.long()), start=1):
            if k == 1:
                c = self.counts1[w].long()
            else:
                index = _lookup(self.keys(k), torch.where(h >= 0, h * self.V + w, -1))
                c = torch.where(index >= 0, self.counts(k)[index.clamp(min=0)].long(), 0)
            total, gamma = self._context_weights(k, h)
            p = torch.where(total > 0, self._discounted(k, c, p.dtype) / total.clamp(min=1) + gamma * p, p)
        return p

    def distribution(self, context: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """P(· | context) over the whole vocabulary, (N, V), for contexts (N, order − 1): what sampling needs.
        P_1 is the same for every context; each order above scales the row by γ_k(h) and adds the discounted
        counts of the words its context was followed by (a contiguous range of its sorted keys)."""
        N, V = context.size(0), self.V
        ids = self.context_ids(context.long())
        total, gamma = self._context_weights(1, ids[0][:1])
        p1 = self._discounted(1, self.counts1, torch.float64) / total.clamp(min=1) + gamma / V
        p = (p1 if bool(total > 0) else torch.full_like(p1, 1.0 / V)).to(dtype).expand(N, V).clone()
        for k, h in enumerate(ids[1:], start=2):
            keys = self.keys(k)
            total, gamma = self._context_weights(k, h)
            p *= torch.where(total > 0, gamma, 1.0).to(dtype)[:, None]
            lo = torch.searchsorted(keys, torch.where(h >= 0, h * V, -1))
            lengths = torch.where(h >= 0, torch.searchsorted(keys, h * V + V), lo) - lo
            rows = torch.repeat_interleave(torch.arange(N, device=p.device), lengths)
            entries = torch.repeat_interleave(lo - (lengths.cumsum(0) - lengths), lengths) + torch.arange(
                len(rows), device=p.device)
            share = self._discounted(k, self.counts(k)[entries], torch.float64) / total[rows].clamp(min=1)
            p.index_put_((rows, keys[entries] % V), share.to(dtype), accumulate=True)
        return p

    def nats_per_token(self, tokens: torch.Tensor) -> float:
        """Mean −ln P of each token of a stream that has order − 1 tokens before it."""
        t = torch.as_tensor(tokens, dtype=torch.long)
        n = len(t) - self.order + 1
        context = torch.stack([t[j:j + n] for j in range(self.order - 1)], 1) if self.order > 1 else t[:0, None]
        return float(-self.prob(context.reshape(n, self.order - 1), t[self.order - 1:]).log().mean())
