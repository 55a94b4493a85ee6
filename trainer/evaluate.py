"""Held-out loss: mean cross-entropy in nats per token over every token of a split, state carried
through each stream exactly as in training. Bits per character and perplexity derive from it."""

from __future__ import annotations

import math

import torch

from .data import TokenStreams
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
