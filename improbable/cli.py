"""The `improbable` command: train, generate, evaluate, list corpora.

Torch is imported inside the commands that need it, so `improbable --help` stays instant.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from core.contracts import SamplingError, bounds, help_of, parse_sampling
from core.settings import SettingsError, get_settings
from improbable.operator import operator_app
from improbable.persona import persona_app

app = typer.Typer(help="Improbable: small recurrent language models that talk in borrowed voices.",
                  no_args_is_help=True, add_completion=False)
app.add_typer(persona_app, name="persona")  # improbable persona attach NAME CHECKPOINT (improbable/persona.py)
app.add_typer(operator_app, name="operator")  # improbable operator servers|reports|… (improbable/operator.py)
console = Console()
MODEL_HELP = "A .safetensors checkpoint (best.safetensors of a run), or a persona's name (alice, trump, ...)."
err_console = Console(stderr=True)


@app.callback()
def _check_settings() -> None:
    # Every command starts by validating the settings: a bad one stops it with a line naming the variable.
    try:
        get_settings()
    except SettingsError as e:
        for line in str(e).splitlines():
            err_console.print(f"[bold red]error:[/] {line}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)  # one line, even in a log
    raise typer.Exit(1)


def _checkpoint(name_or_path: str) -> Path:
    """A checkpoint path or a persona name (improbable/checkpoints.py) as a file, or one error line."""
    from improbable.checkpoints import ModelNotFound, resolve_checkpoint

    try:
        return resolve_checkpoint(name_or_path, get_settings())
    except ModelNotFound as e:
        _fail(str(e))


def _load_corpus(name_or_path: str):
    from core.text import CorpusError
    from trainer.corpus import load_corpus

    dirs = get_settings().corpus_dirs
    try:
        return load_corpus(name_or_path, dirs)
    except CorpusError as e:
        searched = ", ".join(map(str, dirs)) or "no folders"
        hint = "" if e.code != "not_found" or Path(name_or_path).suffix else (
            f" (searched {searched}): put it there, or set IMPROBABLE_CORPUS_PATH to the folder that holds it")
        _fail(f"{e}{hint}")


@app.command()
def corpora() -> None:
    """List the corpora found on IMPROBABLE_CORPUS_PATH (names usable with --corpus)."""
    from trainer.corpus import list_corpora

    dirs = get_settings().corpus_dirs
    entries = list_corpora(dirs)
    if not entries:
        searched = ", ".join(map(str, dirs)) or "no folders"
        _fail(f"no corpora found (searched {searched}): put .txt files or folders of them there, or set "
              "IMPROBABLE_CORPUS_PATH to such folders (or pass a file path to --corpus)")
    table = Table("name", "size", "path")
    for entry in entries:
        table.add_row(entry.name, f"{entry.n_bytes / 1e6:.2f} MB", str(entry.path))
    console.print(table)


@app.command()
def train(
    recipe: str | None = typer.Option(
        None, help="Start from a checked-in recipe: alice, trump, shakespeare, movie-reviews, harry-potter."),
    corpus: str | None = typer.Option(None, help="Corpus name on IMPROBABLE_CORPUS_PATH, or a path to a text file."),
    out: Path | None = typer.Option(
        None, help="Run folder for checkpoints, history and loss.png [default: runs/<corpus>]."),
    family: str | None = typer.Option(None, help="char-rnn | word-gru | word-mlp."),
    cell: str | None = typer.Option(None, help="char-rnn cell: lstm | gru | rnn."),
    layers: int | None = typer.Option(None, help="Recurrent layers (1-3)."),
    hidden: int | None = typer.Option(None, help="Hidden units per layer."),
    dropout: float | None = typer.Option(None),
    batch_size: int | None = typer.Option(None),
    seq_len: int | None = typer.Option(None, help="Tokens per back-propagation window."),
    lr: float | None = typer.Option(None, help="Peak learning rate."),
    minutes: float | None = typer.Option(
        None, help="Total wall-clock budget of the run folder, evaluation included: re-run with more to continue."),
    max_steps: int | None = typer.Option(None),
    epochs: float | None = typer.Option(None),
    eval_interval: int | None = typer.Option(None, help="Steps between evaluations on the whole validation split."),
    precision: str | None = typer.Option(None, help="auto (bf16 only where measured faster) | fp32 | bf16."),
    init: str | None = typer.Option(
        None, help="char-rnn: fine-tune from 'base' (the shipped pretrained model) or a checkpoint path; "
                   "'' trains from scratch. The char persona recipes start from base."),
    split: str | None = typer.Option(None, help="spread (held-out blocks through the corpus) | tail (last 10 %)."),
    word_vectors: str | None = typer.Option(
        None, help="word-gru: word2vec-format vectors file (default: train word2vec)."),
    seed: int | None = typer.Option(None),
    threads: int | None = typer.Option(
        None, help="Torch intra-op threads (0: PyTorch's default; recipes set 1 or none)."),
    resume: bool = typer.Option(True, help="Continue from <out>/last.safetensors when it exists."),
) -> None:
    """Train a model; resumes an interrupted run in the same --out folder exactly where it stopped."""
    from trainer.corpus import find_corpus

    overrides = {"corpus": corpus, "family": family, "cell": cell, "n_layers": layers, "n_hidden": hidden,
                 "dropout": dropout, "batch_size": batch_size, "seq_len": seq_len, "lr": lr, "minutes": minutes,
                 "max_steps": max_steps, "max_epochs": epochs, "eval_interval": eval_interval,
                 "precision": precision, "init": init, "split": split, "word_vectors": word_vectors, "seed": seed,
                 "threads": threads}
    shape = [f"--{name}" for name, value in (("layers", layers), ("hidden", hidden), ("cell", cell))
             if value is not None]
    given_budget = any(v is not None for v in (minutes, max_steps, epochs))
    config = _train_config(recipe, overrides, shape, out, resume, given_budget)
    text = _load_corpus(config.corpus)
    config.corpus_path = str(find_corpus(config.corpus, get_settings().corpus_dirs).resolve())
    console.print(f"training [bold]{config.family}[/] on {config.corpus} ({text.n_chars:,} chars) → {config.out_dir}")
    for warning in text.warnings:
        console.print(f"[yellow]note:[/] {warning}")
    result = _train_with_progress_bar(config, text, resume)
    if result.stop_reason == "already done":
        return
    console.print(f"[green]done[/] ({result.stop_reason}) after {result.steps} steps, {result.elapsed:.0f} s: "
                  f"best validation loss {result.best_val_loss:.4f} nats/token")
    console.print(f"checkpoints: {result.out_dir}/best.safetensors, last.safetensors; curve: {result.out_dir}/loss.png")


def _train_config(recipe: str | None, overrides: dict, shape: list[str], out: Path | None, resume: bool,
                  given_budget: bool):
    """The run's settings: the recipe's, the command line's over them, and when resuming the run folder's own
    for what the command line leaves unsaid (a budget given replaces the whole budget: it is the new total)."""
    from improbable.checkpoints import saved_run_config
    from trainer.recipes import load_recipe
    from trainer.train import TrainConfig

    try:
        settings = load_recipe(recipe) if recipe else {}
    except ValueError as e:
        _fail(str(e))
    settings.update({k: v for k, v in overrides.items() if v is not None})
    if settings.get("init") and shape:
        _fail(f"{' and '.join(shape)} set the architecture, but --init {settings['init']} fine-tunes a model whose "
              "architecture is fixed; drop them, or train from scratch with --init ''")
    if not settings.get("corpus"):
        _fail("say what to train on: --recipe NAME or --corpus NAME_OR_PATH")
    settings["out_dir"] = str(out or Path("runs") / Path(settings["corpus"]).stem)
    budget = ("minutes", "max_steps", "max_epochs")
    saved = saved_run_config(Path(settings["out_dir"])) if resume else {}
    settings = {**{k: v for k, v in saved.items() if k not in ("out_dir", "name", "corpus_path")
                   and not (given_budget and k in budget)}, **settings}
    if not any(settings.get(k) for k in budget):
        settings["minutes"] = 3.0
    settings.setdefault("name", recipe or Path(settings["out_dir"]).name)
    return TrainConfig.from_dict(settings)


def _train_with_progress_bar(config, text, resume: bool):
    """trainer.train.train with a live progress bar (or a line every 10 log intervals in a log file)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from trainer.train import TrainingDiverged
    from trainer.train import train as run_training

    columns = [TextColumn("[progress.description]{task.description}"), BarColumn(),
               TextColumn("{task.percentage:>3.0f}%"), TimeRemainingColumn(), TextColumn("{task.fields[status]}")]
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("training", total=1.0, status="")

        def on_event(event: str, p, details: dict) -> None:
            val = f" val {p.val_loss:.3f}" if p.val_loss is not None else ""
            best = f" best {p.best_val_loss:.3f}" if p.best_val_loss is not None else ""
            bar.update(task, completed=p.fraction,
                       status=f"step {p.step} loss {p.loss:.3f}{val}{best} {p.tokens_per_s:,.0f} tok/s")
            if event == "resume":
                bar.console.print(details["message"], highlight=False, soft_wrap=True)
            elif event == "sample":
                bar.console.print(f"[dim]sample at step {p.step}:[/] {details['text'][:300]!r}")
            elif event == "warning":
                bar.console.print(f"[yellow]warning:[/] {details['message']}")
            elif event == "progress" and not console.is_terminal and p.step % (10 * config.log_interval) == 0:
                bar.console.print(f"step {p.step}: loss {p.loss:.3f}, {p.tokens_per_s:,.0f} tokens/s, "
                                  f"{p.fraction:.0%} of the budget")  # no live bar in a log file
            elif event == "eval":
                bar.console.print(f"step {p.step}: val {p.val_loss:.4f} nats/token"
                                  f" ({details['metrics']['val_bpc']:.3f} bits/char)")

        try:
            return run_training(config, text, callback=on_event, resume=resume)
        except (TrainingDiverged, ValueError) as e:
            _fail(str(e))


def _sampling_help(field: str, note: str = "") -> str:
    """An option's help from the contract (core.contracts.SamplingParams), with its bounds."""
    low, high = bounds(field)
    return f"{help_of(field)}{note} [{low:g} to {high:g}]"


@app.command("generate")
def generate_text(
    checkpoint: str = typer.Argument(..., help=MODEL_HELP),
    prompt: str = typer.Option("", "--prompt", "-p", help="Text to continue (fed through the model first)."),
    max_tokens: int = typer.Option(300, help=_sampling_help("max_tokens")),
    temperature: float = typer.Option(0.8, help=_sampling_help("temperature")),
    top_k: int = typer.Option(0, help=_sampling_help("top_k")),
    top_p: float = typer.Option(1.0, help=_sampling_help("top_p")),
    improbability: float = typer.Option(0.0, help=_sampling_help("improbability")),
    tolerance: float = typer.Option(0.0, help=_sampling_help("tolerance")),
    repetition_penalty: float = typer.Option(1.0, help=_sampling_help("repetition_penalty")),
    stop: list[str] = typer.Option([], help=help_of("stop") + "."),
    sentence: bool = typer.Option(False, help=help_of("stop_at_sentence_end") + "."),
    seed: int | None = typer.Option(None, help=_sampling_help("seed", " (each of --n adds 1)")),
    n: int = typer.Option(1, "--n", "-n", help="Number of samples, generated together as one batch."),
    precision: str = typer.Option("fp32", help="Weights while sampling: fp32, or bf16 (faster for big models)."),
) -> None:
    """Continue a prompt with a trained model."""
    import torch

    from core.contracts import SamplingParams
    from trainer import checkpoint as ckpt
    from trainer.sample import generate as sample

    try:
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"--precision must be fp32 or bf16, not {precision!r}")
        checked = [parse_sampling(dict(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                       improbability=improbability, tolerance=tolerance,
                                       repetition_penalty=repetition_penalty, stop=tuple(stop),
                                       stop_at_sentence_end=sentence, seed=None if seed is None else seed + i))
                   for i in range(n)]
        model = ckpt.load(_checkpoint(checkpoint), dtype=torch.bfloat16 if precision == "bf16" else torch.float32)
        params = [SamplingParams(**p.model_dump()) for p in checked]
    except SamplingError as e:
        _fail(e.message)
    except (ckpt.CheckpointError, ValueError) as e:
        _fail(str(e))
    streams = sample(model.model, model.tokenizer, [prompt] * n, params)
    if streams[0].unknown:
        policy = "dropped" if model.tokenizer.unknown_policy == "drop" else "read as <unk>"
        console.print(f"[yellow]note:[/] not in the vocabulary, {policy}: {' '.join(map(repr, streams[0].unknown))}")
    for stream in streams:
        console.print(model.tokenizer.continue_text(prompt, stream.text), markup=False, highlight=False,
                      soft_wrap=True)
        console.print(f"[dim]seed {stream.seed}, {len(stream.tokens)} tokens, stopped: {stream.finish_reason}[/]")


@app.command()
def evaluate(
    checkpoint: str = typer.Argument(..., help=MODEL_HELP),
    corpus: str | None = typer.Option(
        None, help="Score this text (its held-out part, split as in training) instead of the checkpoint's own."),
    whole: bool = typer.Option(False, help="Score the whole text, not its held-out part."),
) -> None:
    """Held-out loss in nats/token, bits/char and perplexity."""
    import torch

    from improbable.checkpoints import ModelNotFound, training_corpus, validation_split
    from trainer import checkpoint as ckpt
    from trainer.data import TokenStreams
    from trainer.evaluate import describe
    from trainer.evaluate import evaluate as score

    try:
        loaded = ckpt.load(_checkpoint(checkpoint))
        text = _load_corpus(corpus) if corpus else training_corpus(loaded.meta, get_settings())
    except (ckpt.CheckpointError, ModelNotFound) as e:
        _fail(str(e))
    if whole:
        ids, text_chars = loaded.tokenizer.encode(text.text), len(text.text)
    else:  # the held-out part, split as training split it
        ids, text_chars = validation_split(loaded.meta, loaded.tokenizer, text)
    data = TokenStreams(torch.as_tensor(ids), min(32, max(1, (len(ids) - 1) // 2)), 100)
    nats = score(loaded.model, data)
    result = describe(nats, len(ids), text_chars if loaded.tokenizer.kind == "word" else len(ids))
    table = Table("metric", "value")
    for key, value in result.items():
        table.add_row(key, f"{value:.4f}")
    table.add_row("tokens scored", f"{len(ids):,}")
    console.print(table)
    console.print_json(json.dumps({k: (v if math.isfinite(v) else None) for k, v in result.items()}))


@app.command()
def info(checkpoint: str = typer.Argument(..., help=MODEL_HELP)) -> None:
    """Show a checkpoint's metadata (family, hyperparameters, corpus, metrics) without loading torch weights."""
    from core.checkpoints import CheckpointError, read_meta

    try:
        meta = read_meta(_checkpoint(checkpoint))
    except CheckpointError as e:
        _fail(str(e))
    meta["tokenizer"] = {k: (f"{len(v)} entries" if k == "vocab" else v) for k, v in meta["tokenizer"].items()}
    meta.pop("history", None)
    meta.pop("train_log", None)
    console.print_json(json.dumps(meta, default=str))


@app.command("config")
def show_config(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    check: bool = typer.Option(False, "--check", help="Only validate: exit 0, or 2 naming each invalid setting."),
) -> None:
    """Print the effective settings (secrets masked) and warn about IMPROBABLE_ variables that set nothing."""
    from rich.text import Text

    from core.settings import Settings, env_names, masked_value, unknown_env_vars

    settings = get_settings()
    for var, close in unknown_env_vars():
        hint = f" (did you mean {close}?)" if close else ""
        err_console.print(f"[yellow]warning:[/] {var} is not a setting{hint}", highlight=False, soft_wrap=True)
    if check:
        console.print("settings are valid", highlight=False)
        return
    effective = {"database_url": settings.effective_database_url, "storage_url": settings.effective_storage_url,
                 "result_backend": settings.result_backend or settings.broker_url}
    rows = []
    for name in Settings.model_fields:
        value = masked_value(name, getattr(settings, name))
        if not value and effective.get(name):
            value = f"({masked_value(name, effective[name])})"
        rows.append((env_names(name)[0], value, "set" if name in settings.model_fields_set else "default"))
    if as_json:
        console.print_json(json.dumps({var: value for var, value, _ in rows}))
        return
    table = Table("setting", "value", "source")
    for column in table.columns:
        column.overflow = "fold"
    for var, value, source in rows:
        table.add_row(Text(var), Text(value), Text(source))
    console.print(table)


@app.command()
def health(
    checks: list[str] | None = typer.Argument(
        None, help="database, broker, storage, migrations, or an http(s):// URL [default: database broker storage]."),
    timeout: float = typer.Option(3.0, help="Seconds each check may take."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Check that the database, broker and storage answer (compose healthchecks): exit 0 if all pass, else 1."""
    from improbable.health import run_checks

    try:
        results = run_checks(checks or None, timeout=timeout)
    except ValueError as e:
        _fail(str(e))
    if as_json:
        console.print_json(json.dumps([r.to_dict() for r in results]))
    else:
        for result in results:
            console.print(result.line(), markup=False, highlight=False, soft_wrap=True)
    if not all(r.ok for r in results):
        raise typer.Exit(1)


@app.command()
def chat(
    command: list[str] = typer.Option([], "--command", "-c", help="Run this command line and exit (repeatable)."),
) -> None:
    """The Discord bot's commands in a terminal (/help), on the embedded defaults: no token needed."""
    from bot.console import main as chat_main

    raise typer.Exit(chat_main(command))


@app.command()
def bot(
    wait_without_token: bool = typer.Option(
        False, "--wait-without-token",
        help="Without DISCORD_TOKEN, say so and wait (the deployment's service) instead of exiting."),
) -> None:
    """Run the Discord bot (needs DISCORD_TOKEN; without one, try `improbable chat`)."""
    from bot.startup import run_bot

    status, error = run_bot(wait_without_token)  # a bad token, missing intents, no network: one line, no traceback
    if error:
        err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
    raise typer.Exit(status)


if __name__ == "__main__":
    app()
