"""Held-out loss: mean cross-entropy in nats per token over every token of a split, state carried
through each stream exactly as in training. Bits per character and perplexity derive from it."""

from __future__ import annotations

import math

import torch

from .corpus import fit_batch_shape
from .data import TokenStreams, spread_sample
from .model import LanguageModel


@torch.inference_mode()
def evaluate(model: LanguageModel, data: TokenStreams) -> float:
    was_training = model.training
    model.eval()
    state = model.init_state(data.x.size(0), data.x.device)
    total, count = 0.0, 0
    for x, y in data.all_chunks():
        hidden, state = model(x, state)
        total += model.head.loss(hidden, y).item() * y.numel()
        count += y.numel()
    model.train(was_training)
    return total / max(count, 1)


# A time-budgeted run's evaluations together take about this share of its budget (unless `eval_tokens` says
# how many held-out tokens to score): scoring the whole split ten times took 3 % of a 3-minute budget on a
# 2-core CPU, and the trainer is to lose at most 5 % of its budget to everything beside training steps.
# A sample of a few whole blocks can sit 0.1 nats off the whole split's loss (tiny-shakespeare's held-out
# tail grows harder towards its end: blocks from 1.33 to 1.95), so such a run ends by scoring its best
# weights on the whole split once, after the budget.
EVAL_SHARE = 0.015
MIN_EVAL_BLOCKS = 4  # a smaller sample's loss is too noisy to pick the best checkpoint by
EVAL_SPEEDUP = 2.5  # scoring tokens/s over training tokens/s, the lowest measured: see eval_tokens_for


def eval_streams(val_ids: torch.Tensor, max_tokens: int, batch_size: int, seq_len: int,
                 block_tokens: int) -> TokenStreams | None:
    """The held-out streams one evaluation scores: all of `val_ids`, or about `max_tokens` of it spread evenly
    through it (0 = all). None when there is nothing to score."""
    ids = spread_sample(val_ids, max_tokens, block_tokens)
    if len(ids) < 2:
        return None
    val_batch, val_seq, _ = fit_batch_shape(len(ids), min(32, batch_size), seq_len, min_seq_len=1)
    return TokenStreams(ids, val_batch, val_seq)


def eval_tokens_for(budget_s: float, evaluations: float, train_tokens_per_s: float, block_tokens: int) -> int:
    """How many held-out tokens each of `evaluations` can score for all of them to take about EVAL_SHARE of
    `budget_s`, at least MIN_EVAL_BLOCKS blocks.
    Estimated from the training speed so far instead of timed (a timing pass on a busy machine cost more
    than the evaluations it sized): scoring, a float32 forward pass without the gradient, ran at 4.3x the
    tokens/s of fp32 training and 2.5x that of bf16 training (2x256 char LSTM, B32 T100, AMD EPYC, 1 thread)."""
    seconds = EVAL_SHARE * budget_s / evaluations
    return max(MIN_EVAL_BLOCKS * block_tokens, int(seconds * train_tokens_per_s * EVAL_SPEEDUP))


def unigram_loss(train_ids: torch.Tensor, val_ids: torch.Tensor, vocab_size: int) -> float:
    """Held-out loss (nats/token) of the unigram model of the training tokens, add-one smoothed: the
    baseline a language model must clearly beat before anyone should read its text."""
    counts = torch.bincount(train_ids.cpu(), minlength=vocab_size).double() + 1.0
    log_p = counts.log() - counts.sum().log()
    return float(-log_p[val_ids.cpu()].mean()) if len(val_ids) else math.nan


def describe(nats_per_token: float, tokens: int, chars: int) -> dict:
    """The same loss in the units people compare: nats/token, perplexity, bits per character."""
    return {
        "nats_per_token": nats_per_token,
        "perplexity": math.exp(min(nats_per_token, 50)),
        "bits_per_char": nats_per_token * tokens / max(chars, 1) / math.log(2),
    }


def improbability_calibration(model: LanguageModel, tokenizer, target: float, steps: int = 1000,
                              prompt: str = "", seed: int = 0) -> dict:
    """Drive the model at a target probability for `steps` tokens and measure how close the chosen
    tokens' probabilities were: mean |realised − target|, absolute and relative to the target."""
    from .sample import SamplingParams, generate

    stream = generate(model, tokenizer, [prompt], SamplingParams(max_tokens=steps, improbability=target, seed=seed))[0]
    errors = [abs(p - target) for p in stream.probabilities]
    mean_error = sum(errors) / len(errors)
    return {"target": target, "steps": len(errors), "mean_abs_error": mean_error,
            "relative_error": mean_error / target,
            "mean_realised": sum(stream.probabilities) / len(errors)}
