"""What a run folder's last.safetensors carries besides the weights, and what resuming tells the user.

The optimizer's tensors travel as `optim.<param index>.<slot>` entries; the budget is the TOTAL wanted for
the run folder (minutes of training, steps or epochs), so re-running with a bigger budget continues and the
same budget again says the run is done and how to go on.
"""

from __future__ import annotations

import copy

import torch

from . import checkpoint as ckpt
from .model import LanguageModel


def snapshot(model: LanguageModel, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    return copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())


def restore(model: LanguageModel, optimizer: torch.optim.Optimizer, saved: tuple[dict, dict]) -> None:
    model.load_state_dict(saved[0])
    optimizer.load_state_dict(saved[1])


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    return {f"{index}.{key}": value for index, slots in optimizer.state_dict()["state"].items()
            for key, value in slots.items() if torch.is_tensor(value)}


def resume_tensors(optimizer: torch.optim.Optimizer, carry: tuple[torch.Tensor, ...],
                   device: torch.device) -> dict[str, torch.Tensor]:
    """What last.safetensors carries beside the weights: optimizer moments, carried state, RNG states."""
    extra = {f"optim.{k}": v for k, v in optimizer_tensors(optimizer).items()}
    extra.update({f"state.carry.{i}": s.float() if s.is_floating_point() else s for i, s in enumerate(carry)})
    extra["state.rng"] = torch.get_rng_state()
    if device.type == "cuda":
        extra["state.cuda_rng"] = torch.cuda.get_rng_state(device)
    return extra


def load_resumed(optimizer: torch.optim.Optimizer, saved: ckpt.Checkpoint, device: torch.device) -> None:
    """The optimizer's state and the random streams of a resumed run back in place."""
    torch.set_rng_state(saved.tensors["state.rng"])
    if device.type == "cuda" and "state.cuda_rng" in saved.tensors:
        torch.cuda.set_rng_state(saved.tensors["state.cuda_rng"], device)
    state: dict[int, dict] = {}
    for name, value in saved.tensors.items():
        if name.startswith("optim."):
            index, key = name[6:].split(".", 1)
            state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": saved.meta["run"]["optimizer_groups"]})


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f}".removesuffix(".0")


def _duration(seconds: float) -> str:
    return f"{_minutes(seconds)} min" if seconds >= 60 else f"{seconds:.0f} s"


def resume_message(out_dir, step: int, elapsed: float, minutes: float, total_steps: int | None) -> tuple[str, bool]:
    """(what to tell the user, whether the budget is already spent) for a run resumed at `step` after
    `elapsed` seconds, against the budget now asked for."""
    time_done = bool(minutes) and elapsed >= minutes * 60
    steps_done = bool(total_steps) and step >= total_steps
    if time_done or steps_done:
        if time_done:
            more = f"pass --minutes {_minutes(elapsed + 300)} (the total) to train 5 more minutes"
        else:
            more = f"pass --max-steps {step + max(100, step // 2)} (the total) to train more"
        return (f"{out_dir} finished at step {step} after {_duration(elapsed)}; {more}, "
                "or --no-resume to start afresh"), True
    left = []
    if minutes:
        left.append(f"{_duration(minutes * 60 - elapsed)} left of {_duration(minutes * 60)}")
    if total_steps:
        left.append(f"{total_steps - step} steps left of {total_steps}")
    return f"resuming {out_dir} from step {step}, {', '.join(left)}", False


def total_steps_of(config, steps_per_epoch: int) -> int | None:
    limits = [config.max_steps] if config.max_steps else []
    if config.max_epochs:
        limits.append(max(1, round(config.max_epochs * steps_per_epoch)))
    return min(limits) if limits else None
