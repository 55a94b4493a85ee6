"""Training loop shared by every model family.

AdamW (fused: one kernel, not a loop over tensors), gradient-norm clipping, warm-up then a linear warm-down over the
last part of the budget (or reduce-on-plateau), evaluation on the validation split (a sample within a time budget),
early stopping, best + last checkpoints, a NaN/Inf guard, a wall-clock budget, periodic samples, a loss history,
progress callbacks, and exact resume: `last.safetensors` holds the run state (model, optimizer, schedule, step, RNG,
carried RNN state, best loss so far), so an interrupted run that resumes reproduces the uninterrupted run's losses.

Sections: settings and results · model and optimizer · budget and learning-rate schedule · the run (one call
of `train`) · the training loop. The run's data is built in trainer/data.py (RunData) and its resumable state
is trainer/checkpoint.py's RunState, saved and restored by save_run_state and load_run_state.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from core.text import DecodedCorpus

from . import checkpoint as ckpt
from . import early_stop, mixture
from .checkpoint import RunState, load_run_state, save_run_state
from .data import RunData, TokenStreams, corpus_sha256, load_data
from .evaluate import eval_streams, eval_tokens_for, evaluate, unigram_loss
from .finetune import load_base_weights
from .model import LanguageModel, ModelConfig, build_model
from .precision import resolve_precision
from .pretrained import resolve_init

LAST, BEST = "last.safetensors", "best.safetensors"

# -- settings and results ------------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    # data and tokens
    corpus: str = "shakespeare"  # a corpus name on the search path, or a file path
    corpus_path: str = ""  # the resolved absolute path, so `improbable evaluate` finds the text from anywhere
    name: str = ""  # the persona or run shown as the loss plot's title (default: the out_dir's name)
    out_dir: str = "runs/shakespeare"
    val_fraction: float = 0.1
    split: str = "spread"  # spread: held-out blocks or documents spread through the corpus | tail: nanoGPT's last 10 %
    init: str = ""  # fine-tune from: "base" (shipped in trainer/pretrained/) or a char checkpoint path; "" = scratch
    max_vocab: int = 15_000  # word models: the rest become <unk>
    lowercase: bool = False  # word models: applied identically at train and prompt time
    # model (see ModelConfig)
    family: str = "char-rnn"
    cell: str = ""  # lstm | gru | rnn; empty = gru for word-gru, lstm otherwise
    n_layers: int = 2
    n_embd: int = 64
    n_hidden: int = 256
    dropout: float = 0.0
    context: int = 4
    head: str = "auto"  # full | adaptive | auto (adaptive above 5,000 tokens)
    word_vectors: str = ""  # word-gru: a word2vec-format file; empty = train word2vec on the corpus
    freeze_embedding: bool = False
    recurrent_l2: float = 0.0
    ngram_order: int = 0  # word-mlp: mix with a Kneser–Ney n-gram of this order (trainer/mixture.py); 0 = none
    ngram_tune_fraction: float = 0.05  # of the training text, kept from the MLP to fit the mixture weights on
    # optimisation
    batch_size: int = 32
    seq_len: int = 100
    lr: float = 2e-3
    min_lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 50
    grad_clip: float = 5.0
    schedule: str = "anneal"  # anneal: constant then linear warm-down; plateau: halve on a plateau
    anneal_fraction: float = 0.3
    precision: str = "auto"  # auto (bf16 only where measured faster, trainer/precision.py) | fp32 | bf16 (autocast)
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda | cuda:N
    # budget (whichever ends first; at least one must be set)
    max_steps: int = 0
    max_epochs: float = 0.0
    minutes: float = 0.0
    # evaluation, checkpoints, samples
    eval_interval: int = 500
    # cap each evaluation at this many held-out tokens, in blocks spread evenly; 0 = all, or with a time budget
    # as many as keep evaluation within EVAL_SHARE of it (sized at the first evaluation, kept on resume)
    eval_tokens: int = 0
    patience: int = 0  # early stopping after this many evaluations without improvement (0 = off)
    patience_epochs: float = 0.0  # or after this many epochs without improvement (0 = off); trainer/early_stop.py
    sample_interval: int = 0
    sample_length: int = 200
    log_interval: int = 10
    max_nan_restarts: int = 3
    seed: int = 1337
    threads: int = 0  # 0 = PyTorch's default

    def model_config(self, vocab_size: int) -> ModelConfig:
        head = self.head if self.head != "auto" else ("adaptive" if vocab_size > 5_000 else "full")
        cell = self.cell or ("gru" if self.family == "word-gru" else "lstm")
        return ModelConfig(family=self.family, vocab_size=vocab_size, cell=cell, n_layers=self.n_layers,
                           n_embd=self.n_embd, n_hidden=self.n_hidden, dropout=self.dropout, context=self.context,
                           head=head, freeze_embedding=self.freeze_embedding, recurrent_l2=self.recurrent_l2)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown training settings: {', '.join(sorted(unknown))}")
        return cls(**data)


@dataclass
class Progress:
    step: int
    total_steps: int | None
    epoch: float
    loss: float  # smoothed training loss, nats/token
    val_loss: float | None
    best_val_loss: float | None
    lr: float
    tokens_per_s: float
    elapsed: float
    eta: float | None  # seconds
    fraction: float  # 0..1 of the budget


@dataclass
class TrainResult:
    out_dir: Path
    best_val_loss: float
    last_val_loss: float
    steps: int
    elapsed: float
    stop_reason: str
    history: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class TrainingDiverged(RuntimeError):
    pass


Callback = Callable[[str, Progress, dict], None]  # (event, progress, details); events below


def sample_text(model: LanguageModel, tokenizer, config: TrainConfig) -> str:
    """The text a `sample` event shows: what the model writes from nothing at temperature 0.8."""
    from .sample import SamplingParams, generate

    params = SamplingParams(max_tokens=config.sample_length, temperature=0.8, seed=config.seed)
    return generate(model, tokenizer, [""], params)[0].text


# -- model and optimizer -------------------------------------------------------------------------------------

def _model_config(config: TrainConfig, data: RunData, saved: ckpt.Checkpoint | None,
                  base: ckpt.Checkpoint | None) -> ModelConfig:
    if saved is not None:
        return ModelConfig.from_dict(saved.meta["model"])
    if base is not None:  # the base decides the architecture; the run decides dropout
        return ModelConfig.from_dict({**base.meta["model"], "vocab_size": len(data.tokenizer),
                                      "dropout": config.dropout})
    return config.model_config(len(data.tokenizer))


def start_state(config: TrainConfig, data: RunData, device: torch.device, saved: ckpt.Checkpoint | None,
                base: ckpt.Checkpoint | None) -> RunState:
    """The model and optimizer, and the rest of the run state: fresh, or as `saved` left them."""
    torch.manual_seed(config.seed)
    model_config = _model_config(config, data, saved, base)
    embedding = None
    if config.family == "word-gru" and saved is None:
        from .vectors import word_vectors_for

        embedding = word_vectors_for(data.tokenizer, data.fit_ids.cpu(), config.word_vectors,  # held-out unseen
                                     dim=config.n_embd, seed=config.seed)
        model_config.n_embd = embedding.size(1)  # a vectors file decides the width
    model = build_model(model_config, embedding)
    if base is not None:
        load_base_weights(model, base.model)
    model = model.to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr, betas=(0.9, 0.99),
                                  weight_decay=config.weight_decay, fused=device.type in ("cpu", "cuda") or None)
    if saved is not None:
        state = load_run_state(saved, model, optimizer)
        state.eval_tokens = config.eval_tokens or state.eval_tokens  # a size given now wins over the saved one
        return state
    return RunState(model, optimizer, model.init_state(data.batch_size, device), eval_tokens=config.eval_tokens)


# -- budget and learning-rate schedule -----------------------------------------------------------------------
# The budget is the TOTAL wanted for the run folder (minutes of training, steps or epochs), so re-running
# with a bigger budget continues, and the same budget again says the run is done and how to go on.

def total_steps_of(config: TrainConfig, steps_per_epoch: int) -> int | None:
    limits = [config.max_steps] if config.max_steps else []
    if config.max_epochs:
        limits.append(max(1, round(config.max_epochs * steps_per_epoch)))
    return min(limits) if limits else None


def budget_fraction(config: TrainConfig, step: int, elapsed: float, total_steps: int | None) -> float:
    parts = [step / total_steps] if total_steps else []
    if config.minutes:
        parts.append(elapsed / (config.minutes * 60))
    return min(1.0, max(parts))


def learning_rate(config: TrainConfig, state: RunState, total_steps: int | None) -> float:
    """Warm-up, then constant until the warm-down over the last anneal_fraction of the budget (anneal), or
    constant with plateau halvings in lr_scale (plateau)."""
    peak = config.lr * state.lr_scale
    if state.step < config.warmup_steps:
        return peak * (state.step + 1) / config.warmup_steps
    if config.schedule == "anneal":
        start = 1.0 - config.anneal_fraction
        if state.anneal:  # a continued run goes on down from where it was, never back up to the peak
            start, peak = max(start, state.anneal[0]), min(peak, state.anneal[1])
        f = budget_fraction(config, state.step, state.elapsed, total_steps)
        if f > start:
            floor = min(config.min_lr, peak)
            peak = peak - (peak - floor) * (f - start) / max(1.0 - start, 1e-9)
    return early_stop.warmdown_lr(config, state, peak)  # lower still while warming down after a plateau


def continued_anneal(config: TrainConfig, meta: dict, step: int, elapsed: float,
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
    return [budget_fraction(config, step, elapsed, total_steps), lr]


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


# -- the run: one call of `train` ----------------------------------------------------------------------------

@dataclass
class Run:
    """What one call of `train` works with beside the run state: settings, data, events, the metadata every
    checkpoint carries, and the loop's bookkeeping, which starts afresh on resume (none of it moves a loss)."""
    config: TrainConfig
    data: RunData
    state: RunState
    total_steps: int | None
    emit: Callback
    warnings: list[str]
    val_data: TokenStreams | None  # what one evaluation scores
    size_evaluation: bool  # a time budget's first evaluation sizes state.eval_tokens
    unigram: float  # the unigram baseline's held-out loss
    meta: dict = field(default_factory=dict)
    autocast: torch.autocast | None = None
    good: tuple[dict, dict] = ({}, {})  # the best weights and optimizer state so far, for the NaN guard
    nan_restarts: int = 0
    tokens_per_s: float = 0.0
    last_val: float = math.nan
    window_tokens: int = 0  # tokens trained since the last progress event
    window_start: float = field(default_factory=time.perf_counter)
    next_eval_s: float = math.inf  # a time budget's next evaluation, in seconds of it
    clock: float = 0.0  # perf_counter at the budget's start: elapsed is wall clock from the first step

    @property
    def out_dir(self) -> Path:
        return Path(self.config.out_dir)

    def lr(self) -> float:
        return learning_rate(self.config, self.state, self.total_steps)

    def progress(self, loss: float, val_loss: float | None = None) -> Progress:
        s = self.state
        f = budget_fraction(self.config, s.step, s.elapsed, self.total_steps)
        eta = s.elapsed * (1 - f) / f if f > 0 else None
        return Progress(s.step, self.total_steps, s.step / self.data.steps_per_epoch, loss, val_loss,
                        s.best_val if math.isfinite(s.best_val) else None, self.lr(), self.tokens_per_s, s.elapsed,
                        eta, f)

    def metrics(self, val_loss: float) -> dict:
        metrics = {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50)), "unigram_loss": self.unigram}
        if self.data.tokenizer.kind == "char":
            metrics["val_bpc"] = val_loss / math.log(2)
        else:  # bits per character of the validation text, comparable across tokenizers
            val_chars = len(self.data.val_text)  # the held-out text val_ids encode
            metrics["val_bpc"] = val_loss * len(self.data.val_ids) / max(val_chars, 1) / math.log(2)
        return metrics

    def save_last(self) -> None:
        save_run_state(self.out_dir / LAST, self.state, self.data.tokenizer, self.meta, self.lr())

    def save_best(self, metrics: dict, step: int) -> None:
        ckpt.save(self.out_dir / BEST, self.state.model, self.data.tokenizer,
                  {**self.meta, "metrics": metrics, "step": step, "history": self.state.history})

    def schedule_next_eval(self) -> None:
        """A time budget is evaluated at least 10 times whatever its length (a 1-minute run is not one dot)."""
        if self.config.minutes:
            every = self.config.minutes * 60 / 10
            self.next_eval_s = (math.floor(self.state.elapsed / every) + 1) * every

    def result(self, stop_reason: str) -> TrainResult:
        s = self.state
        return TrainResult(self.out_dir, s.best_val, self.last_val, s.step, s.elapsed, stop_reason, s.history,
                           self.warnings)


def _starting_points(config: TrainConfig, corpus: DecodedCorpus | str,
                     resume: bool) -> tuple[ckpt.Checkpoint | None, ckpt.Checkpoint | None]:
    """(the run folder's last checkpoint when resuming, the base model a fine-tune starts from)."""
    last_path = Path(config.out_dir) / LAST
    if resume and last_path.exists():
        saved = ckpt.load(last_path)
        if saved.meta.get("corpus_sha256") != corpus_sha256(corpus):
            raise ValueError(f"{last_path} was trained on a different corpus; use another out_dir or resume=False")
        return saved, None
    if not config.init:
        return None, None
    base = ckpt.load(resolve_init(config.init))
    if base.tokenizer.kind != "char" or config.family != "char-rnn":
        raise ValueError(f"--init fine-tunes character models only; {config.init} is a "
                         f"{base.family} model and this run trains {config.family}")
    return None, base


def open_run(config: TrainConfig, data: RunData, state: RunState, emit: Callback, warnings: list[str]) -> Run:
    val_data = eval_streams(data.val_ids, state.eval_tokens, data.batch_size, data.seq_len, data.block)
    if val_data is None:
        warnings.append("validation split is empty: best checkpoint chosen by training loss")
    return Run(config, data, state, total_steps_of(config, data.steps_per_epoch), emit, warnings, val_data,
               size_evaluation=bool(val_data and config.minutes and not state.eval_tokens),
               unigram=unigram_loss(data.train_ids, data.val_ids if len(data.val_ids) else data.train_ids,
                                    len(data.tokenizer)))


def _resume(run: Run, saved: ckpt.Checkpoint) -> bool:
    """Tell where a resumed run stands against the budget now asked for; False when it is already spent."""
    config, s = run.config, run.state
    message, done = resume_message(run.out_dir, s.step, s.elapsed, config.minutes, run.total_steps)
    if s.settle and s.settle.get("done"):  # stopped early: a bigger budget would only overfit
        message, done = f"{run.out_dir} stopped early at step {s.step}: {s.settle['why']}", True
    run.emit("resume", Progress(s.step, run.total_steps, s.step / run.data.steps_per_epoch, s.smooth or math.nan,
                                None, None, config.lr, 0.0, s.elapsed, None, 1.0 if done else 0.0),
             {"message": message})
    if done:
        run.last_val = s.history[-1]["val_loss"] if s.history else math.nan
        return False
    s.anneal = s.anneal or continued_anneal(config, saved.meta, s.step, s.elapsed, run.total_steps)
    return True


def _prepare(run: Run, base: ckpt.Checkpoint | None) -> None:
    """Checkpoint metadata, precision, the NaN guard's first snapshot and the first timed evaluation."""
    config, data, state = run.config, run.data, run.state
    run.meta = {"corpus_sha256": data.corpus_sha256, "corpus": config.corpus, "train_config": asdict(config),
                "n_params": state.model.n_params, "batch_shape": [data.batch_size, data.seq_len],
                "split": {"mode": config.split, "val_fraction": config.val_fraction, "val_tokens": len(data.val_ids),
                          "train_tokens": len(data.train_ids), "documents": data.documents, **(data.split_stats or {})}}
    if config.init:
        run.meta["init"] = {"checkpoint": Path(config.init).name, "corpus": base.meta.get("corpus") if base else None,
                            "corpus_sha256": base.meta.get("corpus_sha256") if base else None}
    run.good = _snapshot(state)
    run.meta["precision"] = precision = resolve_precision(config.precision, state.device, state.model)
    run.autocast = torch.autocast(state.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    run.schedule_next_eval()


# -- the training loop ---------------------------------------------------------------------------------------

def train(config: TrainConfig, corpus: DecodedCorpus | str, *, callback: Callback | None = None,
          should_stop: Callable[[], bool] | None = None, resume: bool = True) -> TrainResult:
    """Train `config` on `corpus` (decoded text). Events passed to `callback`: "resume", "progress" every
    `log_interval` steps, "eval", "sample", "checkpoint", "warning". `should_stop()` is polled every
    step: returning True saves the last checkpoint and stops (cancellation, preemption)."""
    if not (config.max_steps or config.max_epochs or config.minutes):
        raise ValueError("set a budget: max_steps, max_epochs or minutes")
    if config.threads:
        torch.set_num_threads(config.threads)
    auto_device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto_device if config.device == "auto" else config.device)
    warnings: list[str] = []
    # Start: the run folder's last checkpoint when resuming, else the base model of a fine-tune, else nothing.
    saved, base = _starting_points(config, corpus, resume)
    # Data and state: the split and the batches, then the model, optimizer and the rest, fresh or as saved.
    data = load_data(config, corpus, device, saved, base, warnings)
    state = start_state(config, data, device, saved, base)
    run = open_run(config, data, state, callback or (lambda *_: None), warnings)
    # Resume: say where the run stands; a run whose budget is already spent ends here.
    if saved is not None and not _resume(run, saved):
        return run.result("already done")
    _prepare(run, base)
    state.model.train()
    run.clock = time.perf_counter() - state.elapsed  # the budget is wall clock from the first step: all counts
    while not (stop_reason := _stop_reason(run, should_stop)):
        # Step: the chunk's loss and clipped gradient at this step's learning rate.
        lr = run.lr()
        for group in state.optimizer.param_groups:
            group["lr"] = lr
        loss, finite, tokens = _forward_backward(run)
        # NaN guard: a non-finite loss or gradient goes back to the best weights at half the learning rate.
        if not finite:
            _recover(run, loss, lr)
            continue
        # Update: the optimizer's step; the clock and the smoothed loss move on.
        state.optimizer.step()
        state.step += 1
        state.elapsed = time.perf_counter() - run.clock
        state.smooth = loss if state.smooth is None else 0.95 * state.smooth + 0.05 * loss
        run.window_tokens += tokens
        # Log: the smoothed loss and the speed, every log_interval steps.
        if state.step % config.log_interval == 0 or state.step == 1:
            _log(run)
        # Evaluate: held-out loss, the best and last checkpoints, early stopping.
        if _evaluation_due(run):
            _evaluate(run, lr, tokens)
            if stop_reason := _early_stop(run):
                break
            run.window_start = time.perf_counter()
        # Sample: what the model writes now.
        if config.sample_interval and state.step % config.sample_interval == 0:
            run.emit("sample", run.progress(state.smooth), {"text": sample_text(state.model, data.tokenizer, config)})
            state.model.train()
    # Finish: the last checkpoint, the best one (scored on the whole split), the history and its plot.
    return _finish(run, stop_reason)


def _early_stop(run: Run) -> str:
    """Why the run stops early after this evaluation ("" to go on); on its first plateau an annealed run goes
    back to its best weights and warms down from there instead (trainer/early_stop.py)."""
    state, lr = run.state, run.lr()
    why = early_stop.plateau(run.config, state, run.data.steps_per_epoch)
    if state.settle and (why or state.step >= early_stop.warmdown_end(state)):
        state.settle["done"] = True  # saved with the last checkpoint: a resumed run stays stopped
        return early_stop.warmdown_reason(state)
    if not why:
        return ""
    if run.config.schedule != "anneal" or lr <= run.config.min_lr:
        return (f"early stopping: no improvement in {run.config.patience} evaluations"
                if run.config.patience and state.bad_evals >= run.config.patience else f"early stopping: {why}")
    _restore(state, run.good)
    state.carry = state.model.init_state(run.data.batch_size, state.device)
    early_stop.start_warmdown(run.config, state, why, lr)
    return ""


def _stop_reason(run: Run, should_stop: Callable[[], bool] | None) -> str:
    if run.total_steps and run.state.step >= run.total_steps:
        return "finished"
    if run.config.minutes and run.state.elapsed >= run.config.minutes * 60:
        return "time budget reached"
    if should_stop and should_stop():
        return "stopped"
    return ""


def _forward_backward(run: Run) -> tuple[float, bool, int]:
    """(the loss, whether it and the gradient's norm are finite, tokens trained) of this step's chunk."""
    state, data = run.state, run.data
    if state.step and state.step % data.steps_per_epoch == 0:
        state.carry = state.model.init_state(data.batch_size, state.device)  # a new epoch starts every stream afresh
    x, y = data.streams.chunk(state.step)
    with run.autocast:
        loss, carry = state.model.loss(x, y, state.carry)
    state.carry = tuple(s.detach() for s in carry)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), run.config.grad_clip)
    value = loss.item()
    return value, math.isfinite(value) and math.isfinite(grad_norm.item()), x.numel()


def _snapshot(state: RunState) -> tuple[dict, dict]:
    return copy.deepcopy(state.model.state_dict()), copy.deepcopy(state.optimizer.state_dict())


def _restore(state: RunState, snapshot: tuple[dict, dict]) -> None:
    state.model.load_state_dict(snapshot[0])
    state.optimizer.load_state_dict(snapshot[1])


def _recover(run: Run, loss: float, lr: float) -> None:
    """The best weights back, the carried state reset, the learning rate halved; after max_nan_restarts the
    run gives up, its last checkpoint saved."""
    state = run.state
    run.nan_restarts += 1
    if run.nan_restarts > run.config.max_nan_restarts:
        run.save_last()
        raise TrainingDiverged(
            f"loss became {loss} {run.nan_restarts} times at step {state.step}, even after restoring the "
            f"best weights and lowering the learning rate to {lr:.2e}; try a lower --lr or --grad-clip")
    _restore(state, run.good)
    state.carry = state.model.init_state(run.data.batch_size, state.device)
    state.lr_scale *= 0.5
    message = (f"non-finite loss at step {state.step}: restored the best weights and halved the learning rate "
               f"to {run.config.lr * state.lr_scale:.2e}")
    run.warnings.append(message)
    run.emit("warning", run.progress(state.smooth or math.nan), {"message": message})


def _log(run: Run) -> None:
    state, now = run.state, time.perf_counter()
    run.tokens_per_s = run.window_tokens / max(now - run.window_start, 1e-9)
    run.window_tokens, run.window_start = 0, now
    run.emit("progress", run.progress(state.smooth), {})
    state.train_log.append({"step": state.step, "elapsed": round(state.elapsed, 2),
                            "train_loss": round(state.smooth, 5)})


def _evaluation_due(run: Run) -> bool:
    config, state = run.config, run.state
    end_of_budget = ((run.total_steps and state.step >= run.total_steps)
                     or (config.minutes and state.elapsed >= config.minutes * 60))
    end_of_budget = end_of_budget or state.step == early_stop.warmdown_end(state)
    return bool(state.step % config.eval_interval == 0 or end_of_budget or state.elapsed >= run.next_eval_s)


def _evaluate(run: Run, lr: float, tokens_per_step: int) -> None:
    """Score the held-out streams; keep the best weights and checkpoint; the plateau schedule's halving."""
    config, data, state = run.config, run.data, run.state
    if run.size_evaluation:  # ~10 evaluations plus one per eval_interval steps share EVAL_SHARE of the budget
        evals = 10 + state.step / state.elapsed * config.minutes * 60 / config.eval_interval
        state.eval_tokens = eval_tokens_for(config.minutes * 60, evals, state.step * tokens_per_step / state.elapsed,
                                            data.block)
        run.val_data = eval_streams(data.val_ids, state.eval_tokens, data.batch_size, data.seq_len, data.block)
        run.size_evaluation = False
    run.last_val = evaluate(state.model, run.val_data) if run.val_data else state.smooth
    state.model.train()
    improved = run.last_val < state.best_val
    if improved:
        state.best_val, state.bad_evals = run.last_val, 0
        run.good = _snapshot(state)
    else:
        state.bad_evals += 1
        if config.schedule == "plateau" and state.bad_evals % 2 == 0:
            state.lr_scale *= 0.5
    state.history.append({"step": state.step, "elapsed": round(state.elapsed, 2), "train_loss": state.smooth,
                          "val_loss": run.last_val, "lr": lr,
                          "val_tokens": run.val_data.n_tokens if run.val_data else 0})
    metrics = run.metrics(state.best_val if improved else run.last_val)
    if improved:
        run.save_best(metrics, state.step)
    run.save_last()
    state.elapsed = time.perf_counter() - run.clock
    run.schedule_next_eval()
    run.emit("eval", run.progress(state.smooth, run.last_val), {"improved": improved, "metrics": metrics})
    run.emit("checkpoint", run.progress(state.smooth, run.last_val),
             {"best": str(run.out_dir / BEST), "last": str(run.out_dir / LAST)})


def _finish(run: Run, stop_reason: str) -> TrainResult:
    config, data, state = run.config, run.data, run.state
    run.save_last()
    if (state.history and 0 < state.eval_tokens < len(data.val_ids) and not config.eval_tokens
            and stop_reason != "stopped"):
        _restore(state, run.good)  # evaluations scored a sample within the budget; the best, the whole split
        sampled = state.best_val
        state.best_val = evaluate(state.model, eval_streams(data.val_ids, 0, data.batch_size, data.seq_len, data.block))
        best_step = next((h["step"] for h in state.history if h["val_loss"] == sampled), state.step)
        run.save_best({**run.metrics(state.best_val), "val_loss_sampled": sampled}, best_step)
    if not (run.out_dir / BEST).exists():  # stopped before the first evaluation
        run.save_best(run.metrics(state.smooth or math.nan), state.step)
    mixture.finish_run(run, stop_reason)  # a word MLP with an n-gram: the best checkpoint becomes their mixture
    (run.out_dir / "history.json").write_text(json.dumps(state.history, indent=1))
    if state.history:
        from .plot import plot_history, plot_title

        plot_history(state.history, run.out_dir / "loss.png", title=plot_title(config), train_log=state.train_log,
                     bits_per_token=data.tokenizer.kind == "char")
    return run.result(stop_reason)
