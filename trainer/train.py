"""Training loop shared by every model family.

AdamW, gradient-norm clipping, warm-up then a linear warm-down over the last part of the budget (or
reduce-on-plateau), evaluation on the validation split (a sample within a time budget), early stopping, best + last
checkpoints, a NaN/Inf guard, a wall-clock budget, periodic samples, a loss history, progress
callbacks, and exact resume: `last.safetensors` holds the model, optimizer, schedule, step, RNG and
carried RNN state, so an interrupted run that resumes reproduces the uninterrupted run's losses.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .corpus import DOCUMENT_SEPARATOR, DecodedCorpus, fit_batch_shape
from .data import BLOCK_TOKENS, TokenStreams, split_documents
from .evaluate import eval_streams, eval_tokens_for, evaluate, unigram_loss
from .finetune import extend_vocabulary, load_base_weights
from .model import ModelConfig, build_model
from .precision import resolve_precision
from .pretrained import resolve_init
from .run_report import continued_anneal, plot_title, run_metrics, sample_text
from .run_state import load_resumed, restore, resume_message, resume_tensors, snapshot, total_steps_of
from .tokenizer import CharTokenizer, WordTokenizer


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


def _corpus_sha(corpus: DecodedCorpus | str) -> str:
    if isinstance(corpus, str):
        return hashlib.sha256(corpus.encode("utf-8")).hexdigest()
    return corpus.sha256


def train(config: TrainConfig, corpus: DecodedCorpus | str, *, callback: Callback | None = None,
          should_stop: Callable[[], bool] | None = None, resume: bool = True) -> TrainResult:
    """Train `config` on `corpus` (decoded text). Events passed to `callback`: "progress" every
    `log_interval` steps, "eval", "sample", "checkpoint", "warning". `should_stop()` is polled every
    step: returning True saves the last checkpoint and stops (cancellation, preemption)."""
    if not (config.max_steps or config.max_epochs or config.minutes):
        raise ValueError("set a budget: max_steps, max_epochs or minutes")
    if config.threads:
        torch.set_num_threads(config.threads)
    emit = callback or (lambda *_: None)
    text = corpus if isinstance(corpus, str) else corpus.text
    out_dir = Path(config.out_dir)
    last_path, best_path = out_dir / "last.safetensors", out_dir / "best.safetensors"
    resuming = resume and last_path.exists()
    warnings: list[str] = []

    # Tokens: a resumed run keeps the tokenizer it started with; a fine-tune extends its base's.
    base = None
    if resuming:
        saved = ckpt.load(last_path)
        if saved.meta.get("corpus_sha256") != _corpus_sha(corpus):
            raise ValueError(f"{last_path} was trained on a different corpus; use another out_dir or resume=False")
        tokenizer = saved.tokenizer
    elif config.init:
        base = ckpt.load(resolve_init(config.init))
        if base.tokenizer.kind != "char" or config.family != "char-rnn":
            raise ValueError(f"--init fine-tunes character models only; {config.init} is a "
                             f"{base.family} model and this run trains {config.family}")
        tokenizer = extend_vocabulary(base.tokenizer, text)
    elif config.family == "char-rnn":
        tokenizer = CharTokenizer.build(text)
    else:
        tokenizer = WordTokenizer.build(text, config.max_vocab, config.lowercase)
    auto_device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto_device if config.device == "auto" else config.device)
    documents = corpus.document_texts() if isinstance(corpus, DecodedCorpus) else [text]
    separator = torch.tensor(tokenizer.encode(DOCUMENT_SEPARATOR), dtype=torch.long)
    train_ids, val_ids = split_documents([torch.tensor(tokenizer.encode(d), dtype=torch.long) for d in documents],
                                         config.val_fraction, config.split, BLOCK_TOKENS[tokenizer.kind], separator)
    train_ids, val_ids = train_ids.to(device), val_ids.to(device)
    batch_size, seq_len, shrink = fit_batch_shape(len(train_ids), config.batch_size, config.seq_len)
    if shrink:
        warnings.append(shrink)
    if resuming and saved.meta.get("batch_shape", [batch_size, seq_len]) != [batch_size, seq_len]:
        raise ValueError(f"{last_path} was trained with batch size, seq len {saved.meta['batch_shape']}: resume it "
                         f"with those (not {batch_size}, {seq_len}), or start afresh (resume=False, --no-resume)")
    train_data = TokenStreams(train_ids, batch_size, seq_len)
    block = BLOCK_TOKENS[tokenizer.kind]
    eval_tokens = config.eval_tokens or (saved.meta["run"].get("eval_tokens", 0) if resuming else 0)
    val_data = eval_streams(val_ids, eval_tokens, batch_size, seq_len, block)
    size_evaluation = bool(val_data and config.minutes and not eval_tokens)
    if val_data is None:
        warnings.append("validation split is empty: best checkpoint chosen by training loss")

    # Model and optimizer.
    torch.manual_seed(config.seed)
    if resuming:
        model_config = ModelConfig.from_dict(saved.meta["model"])
    elif base is not None:  # the base decides the architecture; the run decides dropout
        model_config = ModelConfig.from_dict({**base.meta["model"], "vocab_size": len(tokenizer),
                                              "dropout": config.dropout})
    else:
        model_config = config.model_config(len(tokenizer))
    embedding = None
    if config.family == "word-gru" and not resuming:
        from .vectors import word_vectors_for

        embedding = word_vectors_for(tokenizer, train_ids.cpu(), config.word_vectors,  # held-out text stays unseen
                                     dim=config.n_embd, seed=config.seed)
        model_config.n_embd = embedding.size(1)  # a vectors file decides the width
    model = build_model(model_config, embedding)
    if base is not None:
        load_base_weights(model, base.model)
    model = model.to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                  betas=(0.9, 0.99), weight_decay=config.weight_decay)
    step, elapsed, lr_scale, best_val, bad_evals, history, smooth = 0, 0.0, 1.0, math.inf, 0, [], None
    train_log: list[dict] = []  # the smoothed training loss every log_interval steps, for the plot
    anneal: list[float] | None = None  # [budget fraction, lr] where a continued run's warm-down starts
    carry = model.init_state(batch_size, device)
    if resuming:
        model.load_state_dict({k[6:]: v for k, v in saved.tensors.items() if k.startswith("model.")})
        load_resumed(optimizer, saved, device)  # the optimizer's state and the random streams
        run = saved.meta["run"]
        step, elapsed, lr_scale, bad_evals = run["step"], run["elapsed"], run["lr_scale"], run["bad_evals"]
        best_val = run["best_val_loss"] if run["best_val_loss"] is not None else math.inf
        history, train_log = saved.meta.get("history", []), saved.meta.get("train_log", [])
        smooth, anneal = run.get("smooth"), run.get("anneal")
        carry = tuple(saved.tensors[f"state.carry.{i}"].to(device) for i in range(len(carry)))
    steps_per_epoch = train_data.n_chunks
    unigram = unigram_loss(train_ids, val_ids if len(val_ids) else train_ids, len(tokenizer))
    total_steps = total_steps_of(config, steps_per_epoch)
    if resuming:
        message, done = resume_message(out_dir, step, elapsed, config.minutes, total_steps)
        emit("resume", Progress(step, total_steps, step / steps_per_epoch, smooth or math.nan, None, None,
                                config.lr, 0.0, elapsed, None, 1.0 if done else 0.0), {"message": message})
        if done:
            last = history[-1]["val_loss"] if history else math.nan
            return TrainResult(out_dir, best_val, last, step, elapsed, "already done", history, warnings)
        anneal = anneal or continued_anneal(config, saved.meta, step, elapsed, total_steps)
    meta = {"corpus_sha256": _corpus_sha(corpus), "corpus": config.corpus, "train_config": asdict(config),
            "n_params": model.n_params, "batch_shape": [batch_size, seq_len],
            "split": {"mode": config.split, "val_fraction": config.val_fraction, "val_tokens": len(val_ids),
                      "train_tokens": len(train_ids), "documents": len(documents)}}
    if config.init:
        meta["init"] = {"checkpoint": Path(config.init).name, "corpus": base.meta.get("corpus") if base else None,
                        "corpus_sha256": base.meta.get("corpus_sha256") if base else None}
    good = snapshot(model, optimizer)
    nan_restarts = 0
    meta["precision"] = precision = resolve_precision(config.precision, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def fraction() -> float:
        parts = [step / total_steps] if total_steps else []
        if config.minutes:
            parts.append(elapsed / (config.minutes * 60))
        return min(1.0, max(parts))

    def lr_now() -> float:
        base = config.lr * lr_scale
        if step < config.warmup_steps:
            return base * (step + 1) / config.warmup_steps
        if config.schedule == "anneal":
            start = 1.0 - config.anneal_fraction
            if anneal:  # a continued run goes on down from where it was, never back up to the peak
                start, base = max(start, anneal[0]), min(base, anneal[1])
            f = fraction()
            if f > start:
                floor = min(config.min_lr, base)
                return base - (base - floor) * (f - start) / max(1.0 - start, 1e-9)
        return base

    def progress(loss: float, val_loss: float | None, tps: float) -> Progress:
        f = fraction()
        eta = elapsed * (1 - f) / f if f > 0 else None
        return Progress(step, total_steps, step / steps_per_epoch, loss, val_loss,
                        best_val if math.isfinite(best_val) else None, lr_now(), tps, elapsed, eta, f)

    def save_last() -> None:
        extra = resume_tensors(optimizer, carry, device)
        run = {"step": step, "elapsed": elapsed, "lr_scale": lr_scale, "eval_tokens": eval_tokens,
               "best_val_loss": best_val if math.isfinite(best_val) else None,
               "bad_evals": bad_evals, "smooth": smooth, "anneal": anneal, "lr": lr_now(),
               "optimizer_groups": optimizer.state_dict()["param_groups"]}
        ckpt.save(last_path, model, tokenizer, {**meta, "run": run, "history": history, "train_log": train_log},
                  extra)

    window_tokens, window_start, stop_reason = 0, time.perf_counter(), ""
    tps, last_val = 0.0, math.nan
    # A time budget is evaluated at least 10 times whatever its length (a 1-minute run is not one dot).
    eval_every_s = config.minutes * 60 / 10 if config.minutes else math.inf
    next_eval_s = (math.floor(elapsed / eval_every_s) + 1) * eval_every_s if config.minutes else math.inf
    model.train()
    clock = time.perf_counter() - elapsed  # the budget is wall clock from the first step: everything counts
    while True:
        if total_steps and step >= total_steps:
            stop_reason = "finished"
            break
        if config.minutes and elapsed >= config.minutes * 60:
            stop_reason = "time budget reached"
            break
        if should_stop and should_stop():
            stop_reason = "stopped"
            break
        lr = lr_now()
        for group in optimizer.param_groups:
            group["lr"] = lr
        if step and step % steps_per_epoch == 0:
            carry = model.init_state(batch_size, device)  # a new epoch starts every stream afresh
        x, y = train_data.chunk(step)
        with autocast:
            loss, carry = model.loss(x, y, carry)
        carry = tuple(s.detach() for s in carry)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        loss_value = loss.item()
        if not (math.isfinite(loss_value) and math.isfinite(grad_norm.item())):
            nan_restarts += 1
            if nan_restarts > config.max_nan_restarts:
                save_last()
                raise TrainingDiverged(
                    f"loss became {loss_value} {nan_restarts} times at step {step}, even after restoring the "
                    f"best weights and lowering the learning rate to {lr:.2e}; try a lower --lr or --grad-clip")
            restore(model, optimizer, good)
            carry = model.init_state(batch_size, device)
            lr_scale *= 0.5
            msg = (f"non-finite loss at step {step}: restored the best weights and halved the learning rate "
                   f"to {config.lr * lr_scale:.2e}")
            warnings.append(msg)
            emit("warning", progress(smooth or math.nan, None, tps), {"message": msg})
            continue
        optimizer.step()
        step += 1
        elapsed = time.perf_counter() - clock
        smooth = loss_value if smooth is None else 0.95 * smooth + 0.05 * loss_value
        window_tokens += x.numel()

        if step % config.log_interval == 0 or step == 1:
            now = time.perf_counter()
            tps = window_tokens / max(now - window_start, 1e-9)
            window_tokens, window_start = 0, now
            emit("progress", progress(smooth, None, tps), {})
            train_log.append({"step": step, "elapsed": round(elapsed, 2), "train_loss": round(smooth, 5)})

        end_of_budget = (total_steps and step >= total_steps) or (config.minutes and elapsed >= config.minutes * 60)
        if step % config.eval_interval == 0 or end_of_budget or elapsed >= next_eval_s:
            if size_evaluation:  # ~10 evaluations plus one per eval_interval steps share EVAL_SHARE of the budget
                evals = 10 + step / elapsed * config.minutes * 60 / config.eval_interval
                eval_tokens = eval_tokens_for(config.minutes * 60, evals, step * x.numel() / elapsed, block)
                val_data, size_evaluation = eval_streams(val_ids, eval_tokens, batch_size, seq_len, block), False
            last_val = evaluate(model, val_data) if val_data else smooth
            model.train()
            improved = last_val < best_val
            if improved:
                best_val, bad_evals = last_val, 0
                good = snapshot(model, optimizer)
            else:
                bad_evals += 1
                if config.schedule == "plateau" and bad_evals % 2 == 0:
                    lr_scale *= 0.5
            history.append({"step": step, "elapsed": round(elapsed, 2), "train_loss": smooth, "val_loss": last_val,
                            "lr": lr, "val_tokens": val_data.n_tokens if val_data else 0})
            metrics = run_metrics(tokenizer, best_val if improved else last_val, val_ids, text, config, unigram)
            if improved:
                ckpt.save(best_path, model, tokenizer, {**meta, "metrics": metrics, "step": step,
                                                        "history": history})
            save_last()
            elapsed = time.perf_counter() - clock
            next_eval_s = (math.floor(elapsed / eval_every_s) + 1) * eval_every_s if config.minutes else math.inf
            emit("eval", progress(smooth, last_val, tps), {"improved": improved, "metrics": metrics})
            emit("checkpoint", progress(smooth, last_val, tps), {"best": str(best_path), "last": str(last_path)})
            if config.patience and bad_evals >= config.patience:
                stop_reason = f"early stopping: no improvement in {config.patience} evaluations"
                break
            window_start = time.perf_counter()

        if config.sample_interval and step % config.sample_interval == 0:
            emit("sample", progress(smooth, None, tps), {"text": sample_text(model, tokenizer, config)})
            model.train()

    save_last()
    if history and 0 < eval_tokens < len(val_ids) and not config.eval_tokens and stop_reason != "stopped":
        restore(model, optimizer, good)  # evaluations scored a sample within the budget; the best, the whole split
        sampled, best_val = best_val, evaluate(model, eval_streams(val_ids, 0, batch_size, seq_len, block))
        metrics = {**run_metrics(tokenizer, best_val, val_ids, text, config, unigram), "val_loss_sampled": sampled}
        best_step = next((h["step"] for h in history if h["val_loss"] == sampled), step)
        ckpt.save(best_path, model, tokenizer, {**meta, "metrics": metrics, "step": best_step, "history": history})
    if not best_path.exists():  # stopped before the first evaluation
        metrics = run_metrics(tokenizer, smooth or math.nan, val_ids, text, config, unigram)
        ckpt.save(best_path, model, tokenizer, {**meta, "step": step, "history": history, "metrics": metrics})
    (out_dir / "history.json").write_text(json.dumps(history, indent=1))
    if history:
        from .plot import plot_history

        plot_history(history, out_dir / "loss.png", title=plot_title(config), train_log=train_log,
                     bits_per_token=tokenizer.kind == "char")
    return TrainResult(out_dir, best_val, last_val, step, elapsed, stop_reason, history, warnings)
