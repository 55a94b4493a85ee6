"""Loss-curve PNG from a training history (matplotlib, no display needed).

Readable for any run length: the training loss between evaluations (the smoothed value logged every
log_interval steps), the validation loss at each evaluation, the best checkpoint marked, bits/char for
character models (nats/token otherwise), and the run's name as the title.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_history(history: list[dict], path: str | Path, title: str = "training", train_log: list[dict] | None = None,
                 bits_per_token: bool = False) -> Path:
    """`history`: one entry per evaluation (step, train_loss, val_loss); `train_log`: the smoothed training
    loss between evaluations (step, train_loss). `bits_per_token`: a character model, shown in bits/char."""
    scale = 1 / math.log(2) if bits_per_token else 1.0
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    train = train_log or [{"step": h["step"], "train_loss": h["train_loss"]} for h in history]
    ax.plot([t["step"] for t in train], [t["train_loss"] * scale for t in train], color="#888888", linewidth=1,
            label="train (moving average of recent batches: it lags behind)")
    evals = [h for h in history if h.get("val_loss") is not None and math.isfinite(h["val_loss"])]
    if evals:
        ax.plot([h["step"] for h in evals], [h["val_loss"] * scale for h in evals], color="#c2410c", marker="o",
                markersize=3, label="validation (whole held-out split)")
        best = min(evals, key=lambda h: h["val_loss"])
        ax.plot([best["step"]], [best["val_loss"] * scale], linestyle="none", marker="*", markersize=14,
                color="#15803d", label=f"best checkpoint: step {best['step']}, {best['val_loss'] * scale:.3f}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (bits/char)" if bits_per_token else "loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, metadata={"Title": title})  # the title as text too (a PNG tEXt chunk)
    plt.close(fig)
    return Path(path)


def plot_title(config) -> str:
    """The plot's title (`config`: a TrainConfig): its `name` (the persona's, for a run of the bot) with the
    family; without one, the run folder's name with the family and the corpus (unless that is the name)."""
    if config.name:
        return f"{config.name} ({config.family})"
    name = Path(config.out_dir).name
    return f"{name} ({config.family}, {Path(config.corpus).stem})" if name != Path(config.corpus).stem else name
