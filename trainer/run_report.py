"""What a training run reports and decides beside its loop: metrics of an evaluation, a sample, the loss
plot's title, and how a run continued with a bigger budget warms down. `config` is a trainer.train.TrainConfig."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .model import LanguageModel


def run_metrics(tokenizer, val_loss: float, val_ids: torch.Tensor, text: str, config,
             unigram: float) -> dict:
    metrics = {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50)), "unigram_loss": unigram}
    if tokenizer.kind == "char":
        metrics["val_bpc"] = val_loss / math.log(2)
    else:  # bits per character of the validation text, comparable across tokenizers
        val_chars = len(text) * config.val_fraction  # the spread split holds out about this share
        metrics["val_bpc"] = val_loss * len(val_ids) / max(val_chars, 1) / math.log(2)
    return metrics


def sample_text(model: LanguageModel, tokenizer, config) -> str:
    from .sample import SamplingParams, generate

    params = SamplingParams(max_tokens=config.sample_length, temperature=0.8, seed=config.seed)
    return generate(model, tokenizer, [""], params)[0].text


def plot_title(config) -> str:
    name = config.name or Path(config.out_dir).name
    return f"{name} ({config.family}, {Path(config.corpus).stem})" if name != Path(config.corpus).stem else name


def continued_anneal(config, meta: dict, step: int, elapsed: float,
                      total_steps: int | None) -> list[float] | None:
    """A run resumed with a bigger budget after its warm-down began: go on down from the learning rate it
    had reached, over what is left of the new budget, instead of jumping back to the peak (which would
    undo the warm-down's gains). None when the budget is unchanged (an exact resume) or the lr is at peak."""
    saved = meta.get("train_config", {})
    if (saved.get("minutes"), saved.get("max_steps"), saved.get("max_epochs")) == (
            config.minutes, config.max_steps, config.max_epochs):
        return None
    lr = meta["run"].get("lr", meta["run"]["optimizer_groups"][0]["lr"])  # where the schedule had got to
    if step < config.warmup_steps or lr >= config.lr * meta["run"]["lr_scale"] * 0.999:
        return None
    parts = [step / total_steps] if total_steps else []
    if config.minutes:
        parts.append(elapsed / (config.minutes * 60))
    return [min(1.0, max(parts)), lr]
