"""Tensor helpers the sampler (trainer/sample.py) and the character models' word drive (trainer/word_drive.py)
share: counter-based random draws, the improbability band, and vocabulary masks.

Randomness comes from a counter-based hash of (seed, position), not from a shared generator, so a stream's
draws do not depend on which other streams share its batch: same checkpoint, prompt, parameters and seed give
the same text.
"""

from __future__ import annotations

import torch

DEFAULT_TOLERANCE = 1.0  # improbability band when none is given: [p/2, 2p]

_M32 = 0xFFFFFFFF


def mix32(x: torch.Tensor) -> torch.Tensor:
    # A well-mixing 32-bit integer hash; all products stay below 2**63 in int64.
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    return (x >> 16) ^ x


def seed_key(seed: int) -> int:
    """A stream's seed (up to 64 bits) folded to the 32-bit key its draws are hashed with."""
    return (seed ^ (seed >> 32) * 0x9E3779B1) & _M32


def uniform(seeds: torch.Tensor, counters: torch.Tensor) -> torch.Tensor:
    """U[0, 1) for each (seed, counter), independent of batch composition. The counter is offset by an odd
    constant before it is mixed: mix32(0) is 0, so seed 0's first draw would otherwise be exactly 0 (every
    seed-0 text would start with the first token the model allows)."""
    x = mix32(mix32(seeds) ^ ((counters * 0x27D4EB2F + 0x165667B1) & _M32))
    return x.double() / 2.0**32


def inverse_cdf(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Per row, the index that u ∈ [0, 1) picks from unnormalised non-negative weights."""
    cdf = weights.cumsum(1)
    index = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True).squeeze(1)
    return index.clamp_max(weights.size(1) - 1)


def effective_tolerance(tolerance: torch.Tensor) -> torch.Tensor:
    """Per row, the band's tolerance t (band [p/(1+t), p·(1+t)]): 0 means DEFAULT_TOLERANCE."""
    return torch.where(tolerance > 0, tolerance, torch.full_like(tolerance, DEFAULT_TOLERANCE))


def vocab_mask(vocab: list[str], predicate, device: torch.device) -> torch.Tensor:
    """A bool tensor over the vocabulary: which tokens satisfy `predicate`."""
    return torch.tensor([bool(predicate(t)) for t in vocab], dtype=torch.bool, device=device)
