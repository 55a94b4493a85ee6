"""Checkpoint format: one safetensors file whose header carries the JSON metadata.

    model.*   model weights (float32, or float16 for bundled checkpoints)
    optim.*   optimizer moments, only in `last` checkpoints (for resuming)
    state.*   the carried RNN state and the RNG state, only in `last` checkpoints
    header    {"improbable": JSON}: family, model config, tokenizer vocabulary, corpus sha256,
              training config, metrics, step, time, package and torch versions, a digest of the tensors

Nothing is ever unpickled. A checkpoint is untrusted input, so loading refuses a bad file before it costs
anything. Steps 1-4 (file size, safetensors header, metadata within the safe maxima, every tensor's shape
against the described model) read the header alone, without torch: core/checkpoints.py, whose names this
module re-exports (`read_meta`, `meta_from_bytes`, `validate_header`, the caps, CheckpointError). This module
adds step 5, the tensor data: the digest (a flipped byte anywhere is caught), finite values only (NaN or Inf
weights would serve garbage), and finally the real model, whose size the steps above have bounded.
Writes go to a temporary file that is renamed into place, so a reader never sees half a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

# The torch-free header reader (steps 1-4).
from core.checkpoints import (
    FORMAT,
    FORMAT_VERSION,
    MAX_CHECKPOINT_BYTES,
    CheckpointError,
    check_file_size,
    validate_header,
)
from core.checkpoints import meta_digest as _meta_digest

if TYPE_CHECKING:  # torch is imported where tensors are touched, so the header path works without it
    import torch

    from .model import LanguageModel
    from .tokenizer import CharTokenizer, WordTokenizer


@dataclass
class Checkpoint:
    model: LanguageModel
    tokenizer: CharTokenizer | WordTokenizer
    meta: dict
    tensors: dict[str, torch.Tensor]  # everything in the file (optimizer and state included)

    @property
    def family(self) -> str:
        return self.meta["model"]["family"]


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().reshape(-1).view(torch.uint8).numpy())  # a view: no copy
    return h.hexdigest()


def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("improbable")
    except Exception:  # running from a source tree without installing
        return "0+unknown"


def to_bytes(model: LanguageModel, tokenizer, meta: dict, extra: dict[str, torch.Tensor] | None = None,
             half: bool = False) -> bytes:
    import torch
    from safetensors.torch import save as save_tensors_to_bytes

    tensors = {f"model.{k}": (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
               for k, v in model.state_dict().items()}
    tensors.update({k: v.detach().cpu().contiguous() for k, v in (extra or {}).items()})
    header: dict = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model.config.to_dict(),
        "tokenizer": tokenizer.to_dict(),
        "saved_at": time.time(),
        "package_version": package_version(),
        "torch_version": torch.__version__,
        **meta,
        "tensors_sha256": _digest(tensors),
    }
    header["meta_sha256"] = _meta_digest(header)
    data = save_tensors_to_bytes(tensors, metadata={"improbable": json.dumps(header)})
    # Never write what `load` would refuse (a model beyond the safe maxima, a header over its cap): the error
    # belongs to the run that made the file, not to every worker that later tries to serve it.
    validate_header(data, len(data), "checkpoint being saved")
    return data


def save(path: str | Path, model: LanguageModel, tokenizer, meta: dict,
         extra: dict[str, torch.Tensor] | None = None, half: bool = False) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = to_bytes(model, tokenizer, meta, extra, half)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


# --- Run state: what a `last` checkpoint holds ---------------------------------------------------------------
# One dataclass, written by `save_run_state` and read back by `load_run_state`. Tensors (weights, optimizer
# moments as `optim.<param index>.<slot>`, the carried RNN state, the RNG states) go in the safetensors body;
# the rest in the JSON header under "run", beside "history" and "train_log".

@dataclass
class RunState:
    model: LanguageModel
    optimizer: torch.optim.Optimizer
    carry: tuple[torch.Tensor, ...]  # the RNN state carried from one chunk to the next
    step: int = 0  # also the data position: step i trains on chunk i
    elapsed: float = 0.0  # seconds of the budget spent
    lr_scale: float = 1.0  # halved by the NaN guard and by plateaus
    best_val: float = math.inf
    bad_evals: int = 0  # evaluations since the last improvement
    smooth: float | None = None  # moving average of the training loss
    anneal: list[float] | None = None  # [budget fraction, lr] where a continued run's warm-down starts
    settle: dict | None = None  # early stopping's warm-down from the best weights (trainer/early_stop.py)
    eval_tokens: int = 0  # held-out tokens per evaluation (0 = all), sized once for a time budget
    history: list[dict] = field(default_factory=list)  # one entry per evaluation
    train_log: list[dict] = field(default_factory=list)  # the smoothed loss every log_interval steps (the plot)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def save_run_state(path: Path, state: RunState, tokenizer, meta: dict, lr: float) -> None:
    """Write `state` as a `last` checkpoint; `lr` is where the schedule stands (a continued run's warm-down)."""
    import torch

    optim = state.optimizer.state_dict()
    tensors = {f"optim.{index}.{key}": value for index, slots in optim["state"].items()
               for key, value in slots.items() if torch.is_tensor(value)}
    tensors.update({f"state.carry.{i}": s.float() if s.is_floating_point() else s for i, s in enumerate(state.carry)})
    tensors["state.rng"] = torch.get_rng_state()
    if state.device.type == "cuda":
        tensors["state.cuda_rng"] = torch.cuda.get_rng_state(state.device)
    run = {"step": state.step, "elapsed": state.elapsed, "lr_scale": state.lr_scale, "eval_tokens": state.eval_tokens,
           "best_val_loss": state.best_val if math.isfinite(state.best_val) else None,
           "bad_evals": state.bad_evals, "smooth": state.smooth, "anneal": state.anneal, "lr": lr,
           "settle": state.settle,
           "optimizer_groups": optim["param_groups"]}
    save(path, state.model, tokenizer, {**meta, "run": run, "history": state.history, "train_log": state.train_log},
         tensors)


def load_run_state(saved: Checkpoint, model: LanguageModel, optimizer: torch.optim.Optimizer) -> RunState:
    """The state `save_run_state` wrote, into a freshly built `model` and `optimizer` (on their device), with
    the random streams put back as they were."""
    import torch

    device = next(model.parameters()).device
    model.load_state_dict({k[len("model."):]: v for k, v in saved.tensors.items() if k.startswith("model.")})
    torch.set_rng_state(saved.tensors["state.rng"])
    if device.type == "cuda" and "state.cuda_rng" in saved.tensors:
        torch.cuda.set_rng_state(saved.tensors["state.cuda_rng"], device)
    slots: dict[int, dict] = {}
    for name, value in saved.tensors.items():
        if name.startswith("optim."):
            index, key = name[len("optim."):].split(".", 1)
            slots.setdefault(int(index), {})[key] = value
    run = saved.meta["run"]
    optimizer.load_state_dict({"state": slots, "param_groups": run["optimizer_groups"]})
    n_carry = sum(name.startswith("state.carry.") for name in saved.tensors)
    carry = tuple(saved.tensors[f"state.carry.{i}"].to(device) for i in range(n_carry))
    best_val = run["best_val_loss"] if run["best_val_loss"] is not None else math.inf
    return RunState(model, optimizer, carry, step=run["step"], elapsed=run["elapsed"], lr_scale=run["lr_scale"],
                    best_val=best_val, bad_evals=run["bad_evals"], smooth=run.get("smooth"),
                    anneal=run.get("anneal"), settle=run.get("settle"), eval_tokens=run.get("eval_tokens", 0),
                    history=saved.meta.get("history", []), train_log=saved.meta.get("train_log", []))


# --- Tensors -------------------------------------------------------------------------------------------------


def _check_finite(tensors: dict[str, torch.Tensor], name: str) -> None:
    import torch

    for tensor_name in sorted(tensors):
        t = tensors[tensor_name]
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            nans, infs = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            raise CheckpointError(f"{name}: tensor {tensor_name} has non-finite values ({nans} NaN, {infs} Inf); "
                                  "such weights would generate garbage")


def from_bytes(data: bytes, name: str = "checkpoint", device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None) -> Checkpoint:
    """Build the model a checkpoint describes (dtype: float32 unless given). `dtype=torch.bfloat16` serves at
    half the memory traffic: batch-1 stepping is bound by reading the weights (measured 3x faster for a 2x512
    LSTM on CPU)."""
    meta, tokenizer = _read_header(data, name)  # everything the header can tell, before any tensor exists
    import torch
    from safetensors.torch import load as load_tensors_from_bytes

    from .model import ModelConfig, build_model

    try:
        tensors = load_tensors_from_bytes(data)
    except Exception as e:  # safetensors' own checks; the header checks above make this rare
        raise CheckpointError(f"{name}: corrupt tensor data ({e})") from None
    if _digest(tensors) != meta["tensors_sha256"]:
        raise CheckpointError(f"{name}: corrupt (tensor checksum mismatch); re-download or retrain")
    _check_finite(tensors, name)
    try:
        config = ModelConfig.from_dict(meta["model"])
        model = build_model(config)  # its size is bounded: the shapes above matched the file, under the caps
        weights = {k[len("model."):]: v.float() if v.is_floating_point() else v
                   for k, v in tensors.items() if k.startswith("model.")}
        model.load_state_dict(weights, strict=True)
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{name}: weights do not match the model its metadata describes ({e})") from None
    model.to(device=device, dtype=dtype or torch.float32).eval()
    return Checkpoint(model, tokenizer, meta, tensors)


def _read_header(data: bytes, name: str) -> tuple[dict, object]:
    """(The header's metadata, its tokenizer), checked against this module's size cap (which a deployment or a
    test may lower) before the header reader applies its own; no tensor touched."""
    from .tokenizer import tokenizer_from_dict

    check_file_size(len(data), name, MAX_CHECKPOINT_BYTES)
    meta, _ = validate_header(data, len(data), name)
    try:
        return meta, tokenizer_from_dict(meta["tokenizer"])
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{name}: its tokenizer cannot be read ({e})") from None


def without_model(data: bytes, name: str = "checkpoint") -> Checkpoint:
    """The checkpoint's header and tokenizer, no tensor touched and no model (`model` is None): what a generate
    worker keeps when the model lives in its engine's process (worker/serve/engine_process.py)."""
    meta, tokenizer = _read_header(data, name)
    return Checkpoint(None, tokenizer, meta, {})


def load(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            check_file_size(size, str(path), MAX_CHECKPOINT_BYTES)  # before reading a byte of it
            data = f.read(size)  # no more than was checked, even if the file grows meanwhile
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read checkpoint ({e.strerror or e})") from None
    return from_bytes(data, str(path), device, dtype)
