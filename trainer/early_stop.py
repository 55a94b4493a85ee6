"""Early stopping on the held-out loss: a small text that a long budget would overfit ends at its best.

A run is on a plateau when its held-out loss has not improved for `patience` evaluations, or for
`patience_epochs` passes over the training text (and at least two evaluations). Patience in epochs scales with
the text: a 200 KB upload passes over its text every minute or so and stops a few minutes after it starts to
overfit, while a corpus of many megabytes, whose epochs are long, is never cut short by a few noisy evaluations.

On the first plateau an annealed run goes back to its best weights (and optimizer moments) and warms its
learning rate down from there, over the share of steps the budget's own warm-down would take (anneal_fraction
of a run ending at the best step), then stops. That is the model a budget ending near the best step would have
made, so a longer budget does not end worse than a shorter one. A plateau during that warm-down, under the
plateau schedule, or with the learning rate already at its floor stops at once. The best checkpoint is the one
kept either way.
"""

from __future__ import annotations

import math

from .checkpoint import RunState

MIN_BAD_EVALS = 2  # an epoch patience still wants two evaluations without improvement, not one noisy score


def best_step(state: RunState) -> int:
    """The step of the evaluation that scored the best held-out loss (the first, on a tie)."""
    scored = [h for h in state.history if math.isfinite(h["val_loss"])]
    return min(scored, key=lambda h: h["val_loss"])["step"] if scored else 0


def plateau(config, state: RunState, steps_per_epoch: int) -> str:
    """Why the run is on a plateau ("" when it is not): the evaluations and epochs since its best step."""
    if not state.bad_evals:
        return ""
    since = max(best_step(state), state.settle["start"] if state.settle else 0)  # a rewind restarts the count
    epochs = (state.step - since) / max(steps_per_epoch, 1)
    by_evals = bool(config.patience) and state.bad_evals >= config.patience
    by_epochs = (bool(config.patience_epochs) and epochs >= config.patience_epochs
                 and state.bad_evals >= MIN_BAD_EVALS)
    if not (by_evals or by_epochs):
        return ""
    return f"no improvement in {state.bad_evals} evaluations ({epochs:.1f} epochs) since step {since}"


def warmdown_steps(config, best: int) -> int:
    """Steps of the warm-down from the best weights: the budget's own warm-down share of a run that long."""
    share = min(max(config.anneal_fraction, 0.05), 0.9)
    return max(1, round(best * share / (1 - share)))


def start_warmdown(config, state: RunState, why: str, lr: float) -> None:
    """Warm down from step `state.step` (the best weights already restored), `lr` being where it starts."""
    state.settle = {"start": state.step, "steps": warmdown_steps(config, best_step(state)), "lr": lr, "why": why}
    state.bad_evals = 0


def warmdown_end(state: RunState) -> int | None:
    return state.settle["start"] + state.settle["steps"] if state.settle else None


def warmdown_lr(config, state: RunState, lr: float) -> float:
    """`lr`, or lower while warming down after a plateau: linear from where it was down to min_lr."""
    if not state.settle:
        return lr
    peak = state.settle["lr"]
    floor = min(config.min_lr, peak)
    done = min(1.0, max(0.0, (state.step - state.settle["start"]) / max(state.settle["steps"], 1)))
    return min(lr, peak - (peak - floor) * done)


def warmdown_reason(state: RunState) -> str:
    return (f"early stopping: {state.settle['why']}; went back to the best weights, warmed down for "
            f"{state.step - state.settle['start']} steps and stopped at step {state.step}")
