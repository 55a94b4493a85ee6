"""`precision: auto`: train in bfloat16 only where this device runs it faster than float32.

bf16 autocast is no free win on a CPU: with AMX a 2x512 LSTM trains about 2x faster in bf16, but on an Intel
host without AMX/avx512_bf16 the same recipe trained 2.15x *slower* (issue 13). So on CUDA the answer follows
from the hardware (native bf16 from compute capability 8.0 on), and on a CPU it is measured once: a few
fused-LSTM training steps in float32 and under bf16 autocast, about two seconds, timed interleaved so that a
noisy neighbour slows both alike. The answer is cached in a JSON file under the user's cache folder, keyed by
CPU model, torch version and thread count, so later runs pay nothing. The CPU's bf16 flags are recorded as a
hint; the measurement decides.

Only torch and the standard library: the trainer, the workers and the CLI can all call it.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from functools import cache
from pathlib import Path
from typing import Literal

import torch
from torch import nn

Precision = Literal["bf16", "fp32"]
PRECISIONS = ("auto", "bf16", "fp32")

# bf16 must beat fp32 by this factor to be picked: a tie within the measurement's noise keeps fp32, whose
# numerics are the safer default ("never slower than fp32")
MIN_SPEEDUP = 1.10
# fewer rounds than this in the time given (an overloaded machine, where a step can take seconds) decide
# nothing: fp32 for now, and the answer is not cached, so the next run measures again
MIN_ROUNDS = 3
CACHE_VERSION = 1  # bump when the measurement changes, so old answers are measured again

# the measured step: a char-level model like the trainer's (per-layer fused nn.LSTM, clipping, an update)
_VOCAB, _EMBED, _HIDDEN, _LAYERS, _BATCH, _SEQ = 96, 64, 256, 2, 32, 64


def resolve_precision(precision: str, device: torch.device | str, model: nn.Module | None = None) -> Precision:
    """A recipe's `precision` value as the trainer uses it: `auto` becomes what `pick_precision` picks. An
    explicit bf16 for a model with an LSTM where torch cannot run one under bf16 autocast is refused, saying so."""
    if precision == "auto":
        return pick_precision(device)
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)} (got {precision!r})")
    lstm = model is not None and any(isinstance(m, nn.LSTM) for m in model.modules())
    if precision == "bf16" and lstm and not bf16_runs(torch.device(device).type):
        raise ValueError("precision bf16: torch on this machine cannot train an LSTM under bf16 autocast (a CPU "
                         "without AVX-512 has no bf16 LSTM kernels); use precision auto or fp32")
    return precision  # type: ignore[return-value]


def pick_precision(device: torch.device | str = "cpu", *, cache_file: Path | None = None,
                   remeasure: bool = False, seconds: float = 2.0) -> Precision:
    """"bf16" where training runs faster in bf16 autocast on `device`, else "fp32".

    CUDA: bf16 when the GPU computes it natively (compute capability 8.0 or newer). CPU: the cached answer
    for this CPU model and torch version, or a measurement of about `seconds` (then cached in `cache_file`,
    default `cache_path()`). Any other device: fp32.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if _cuda_runs_bf16_natively(device) else "fp32"
    if device.type != "cpu":
        return "fp32"
    cache_file = cache_file or cache_path()
    key = cache_key()
    if not remeasure:
        cached = _read_cache(cache_file).get(key)
        if isinstance(cached, dict) and cached.get("precision") in ("bf16", "fp32"):
            return cached["precision"]
    result = measure_cpu(seconds=seconds)
    if result.get("conclusive", True):
        _write_cache(cache_file, key, result)
    return result["precision"]


def measure_cpu(seconds: float = 2.0) -> dict:
    """Times training steps in fp32 and in bf16 autocast on the CPU; returns both speeds (chars/s), their
    ratio, the CPU's bf16 flags and the pick. bf16 is picked when it is at least MIN_SPEEDUP times faster."""
    flags = cpu_bf16_flags()
    record = {"cpu": cpu_model(), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "bf16_flags": sorted(flags), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    # the caller's random streams are left as they were: measuring must not change a seeded training run
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:
            fp32, bf16, rounds = _interleaved_step_times(seconds)
        except RuntimeError as e:  # a CPU build without bf16 kernels for some op
            record.update(fp32_chars_per_s=None, bf16_chars_per_s=None, speedup=None, precision="fp32",
                          note=f"bf16 autocast failed: {e}"[:300])
            return record
    chars = _BATCH * _SEQ
    speedup = fp32 / bf16
    conclusive = rounds >= MIN_ROUNDS
    record.update(fp32_chars_per_s=round(chars / fp32), bf16_chars_per_s=round(chars / bf16),
                  speedup=round(speedup, 3), rounds=rounds, conclusive=conclusive,
                  precision="bf16" if conclusive and speedup >= MIN_SPEEDUP else "fp32")
    if not conclusive:
        record["note"] = f"only {rounds} round(s) in {seconds} s: the machine is too busy to tell; fp32, not cached"
    return record


@cache
def bf16_runs(device_type: str = "cpu") -> bool:
    """Whether torch here can train the char LSTM under bf16 autocast at all, however fast: a CUDA GPU that
    supports bf16, or a CPU whose oneDNN has bf16 LSTM kernels (a CPU without AVX-512 has none: "could not
    create a primitive descriptor for the LSTM forward propagation primitive")."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type != "cpu":
        return False
    with torch.random.fork_rng(devices=[]):
        try:
            _training_step(bf16=True)()
        except RuntimeError:
            return False
    return True


def _interleaved_step_times(seconds: float) -> tuple[float, float, int]:
    """Median seconds per training step in fp32 and in bf16 autocast, measured in alternating rounds, and the
    number of rounds."""
    fp32_step, bf16_step = _training_step(bf16=False), _training_step(bf16=True)
    for step in (fp32_step, bf16_step):  # warm-up: oneDNN creates and caches its kernels on the first call
        step()
    times: dict[bool, list[float]] = {False: [], True: []}
    deadline = time.perf_counter() + seconds
    # at least one round however slow the machine is (on an oversubscribed one a step of 2 threads can take
    # seconds while its threads wait for each other), then rounds until the time is up, at most 50
    while not times[True] or time.perf_counter() < deadline:
        for bf16, step in ((False, fp32_step), (True, bf16_step)):
            t0 = time.perf_counter()
            step()
            times[bf16].append(time.perf_counter() - t0)
        if len(times[True]) >= 50:
            break
    return statistics.median(times[False]), statistics.median(times[True]), len(times[True])


class _CharLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(_VOCAB, _EMBED)
        # one nn.LSTM per layer, as the trainer builds it (nn.LSTM's own dropout leaves oneDNN's fused path)
        self.layers = nn.ModuleList(nn.LSTM(_EMBED if i == 0 else _HIDDEN, _HIDDEN, batch_first=True)
                                    for i in range(_LAYERS))
        self.head = nn.Linear(_HIDDEN, _VOCAB)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(idx)
        for layer in self.layers:
            hidden, _ = layer(hidden)
        return self.head(hidden)


def _training_step(bf16: bool):
    model = _CharLSTM()
    params = list(model.parameters())
    x = torch.randint(0, _VOCAB, (_BATCH, _SEQ))
    y = torch.randint(0, _VOCAB, (_BATCH, _SEQ))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
            loss = nn.functional.cross_entropy(logits.float().view(-1, _VOCAB), y.view(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(params, 5.0)
        # a plain SGD update: the weights stay fp32 under autocast, so the optimizer costs the same either way,
        # and a torch.optim optimizer would import torch._dynamo first (seconds, many more on a busy machine)
        with torch.no_grad():
            for param in params:
                param.add_(param.grad, alpha=-1e-3)
                param.grad = None

    return step


def _cuda_runs_bf16_natively(device: torch.device) -> bool:
    if not torch.cuda.is_available():
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    major, _minor = torch.cuda.get_device_capability(index)
    return major >= 8  # Ampere and newer have bf16 tensor cores; older GPUs emulate it slowly


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), or what the platform module knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_bf16_flags() -> set[str]:
    """The CPU's bf16-related feature flags (Linux): a hint of what the measurement will find."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return {flag for flag in line.split(":", 1)[1].split() if "bf16" in flag}
    except OSError:
        pass
    return set()


def cache_key() -> str:
    # the thread count is part of it: bf16's gain depends on how the work is split across cores
    return f"v{CACHE_VERSION}|{cpu_model()}|torch {torch.__version__}|threads {torch.get_num_threads()}"


def cache_path() -> Path:
    """$XDG_CACHE_HOME/improbable/precision.json (~/.cache/... when XDG_CACHE_HOME is unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "improbable" / "precision.json"


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing or damaged: measure again and rewrite it
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, key: str, record: dict) -> None:
    data = _read_cache(path)
    data[key] = record
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the new one, never half
    except OSError:
        pass  # a read-only home only costs a new measurement next time
