"""The `improbable` command (improbable/cli.py) through typer's CliRunner, with tiny settings."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from core.checkpoints import read_meta
from core.settings import get_settings
from improbable.cli import app

pytestmark = pytest.mark.usefixtures("single_thread")

runner = CliRunner()


def flat(text: str) -> str:
    """Rich wraps long lines at the console width; compare messages with whitespace collapsed."""
    return " ".join(text.split())


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=True)


def ok(*args: str):
    result = invoke(*args)
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    return result


def fails_cleanly(result, *phrases: str) -> str:
    """Exit status 1, an `error:` line that says what is wrong, and no traceback."""
    out = flat(result.output)
    assert result.exit_code == 1, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert "error:" in out
    for phrase in phrases:
        assert flat(phrase) in out, f"{phrase!r} not in {out!r}"
    return out


@pytest.fixture(autouse=True)
def isolated_settings(monkeypatch, tmp_path):
    """No .env from the working directory, no corpus path from the environment; fresh settings."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IMPROBABLE_CORPUS_PATH", raising=False)
    monkeypatch.setenv("IMPROBABLE_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def use_corpora(monkeypatch, corpora_dir):
    monkeypatch.setenv("IMPROBABLE_CORPUS_PATH", str(corpora_dir))
    get_settings.cache_clear()
    return corpora_dir


@pytest.fixture(scope="module")
def trained(tmp_path_factory, alice_text, single_thread):
    """One tiny run through the CLI, shared by the generate/evaluate/info tests."""
    root = tmp_path_factory.mktemp("cli")
    corpus = root / "alice-head.txt"
    corpus.write_text(alice_text[:10_000], encoding="utf-8")
    out = root / "run"
    get_settings.cache_clear()
    result = runner.invoke(
        app,
        [
            "train",
            "--corpus",
            str(corpus),
            "--max-steps",
            "20",
            "--hidden",
            "32",
            "--layers",
            "1",
            "--batch-size",
            "8",
            "--seq-len",
            "32",
            "--eval-interval",
            "10",
            "--threads",
            "1",
            "--out",
            str(out),
        ],
    )
    return corpus, out, result


def test_help_lists_the_commands():
    out = ok("--help").output
    for command in ("train", "generate", "evaluate", "corpora", "info"):
        assert command in out


def test_train_writes_checkpoints(trained):
    _corpus, out, result = trained
    assert result.exit_code == 0, result.output
    text = flat(result.output)
    assert "done (finished) after 20 steps" in text
    assert "best validation loss" in text
    for name in ("best.safetensors", "last.safetensors", "history.json", "loss.png"):
        assert (out / name).is_file(), name
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history] == [10, 20]
    assert json.loads(ok("info", out / "best.safetensors").output)["train_config"]["threads"] == 1  # --threads


def test_generate_prints_text_and_is_reproducible_with_seed(trained):
    _, out, _ = trained
    args = ["generate", out / "best.safetensors", "--prompt", "Alice", "--max-tokens", "40", "--seed", "7"]
    first, again = ok(*args), ok(*args)
    assert first.output == again.output
    assert first.output.startswith("Alice")
    assert "seed 7, 40 tokens, stopped: length" in flat(first.output)
    other = ok(*args[:-1], "8")
    assert other.output != first.output


def test_generate_prints_exactly_the_sampled_text(trained):
    """The printed completion is the model's text, byte for byte: the console must not re-wrap it
    (`improbable generate ... > sample.txt` is how people keep samples)."""
    from core.contracts import SamplingParams
    from trainer import checkpoint as ckpt
    from trainer.sample import generate

    _, out, _ = trained
    loaded = ckpt.load(out / "best.safetensors")
    stream = generate(
        loaded.model, loaded.tokenizer, ["Alice"], SamplingParams(max_tokens=300, temperature=0.8, seed=11)
    )[0]
    printed = ok(
        "generate", out / "best.safetensors", "--prompt", "Alice", "--max-tokens", "300", "--seed", "11"
    ).output
    assert printed.startswith("Alice" + stream.text)


def test_generate_several_samples_in_one_batch(trained):
    _, out, _ = trained
    result = ok(
        "generate",
        out / "best.safetensors",
        "-n",
        "3",
        "--max-tokens",
        "15",
        "--seed",
        "100",
        "--temperature",
        "1.0",
    )
    text = flat(result.output)
    for seed in (100, 101, 102):
        assert f"seed {seed}, 15 tokens" in text


def test_generate_with_unknown_characters_notes_them(trained):
    _, out, _ = trained
    result = ok(
        "generate", out / "best.safetensors", "--prompt", "Alice 🎉", "--max-tokens", "10", "--seed", "1"
    )
    assert "not in the vocabulary, dropped: '🎉'" in flat(result.output)


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--top-p", "0", "top_p must be more than 0 and at most 1"),  # core.contracts.SamplingParams' bounds
        ("--temperature", "-1", "temperature must be between 0 (greedy) and 5"),
        ("--improbability", "2", "improbability must be between 0 (off) and 1"),
        ("--max-tokens", "0", "max_tokens must be between 1 and 100000"),
    ],
)
def test_generate_with_invalid_parameters(trained, option, value, message):
    _, out, _ = trained
    fails_cleanly(invoke("generate", out / "best.safetensors", option, value), message)


@pytest.mark.parametrize("corruption", ["random", "truncated", "empty", "missing", "flipped"])
def test_generate_on_a_bad_checkpoint_fails_cleanly(trained, tmp_path, corruption):
    _, out, _ = trained
    good = (out / "best.safetensors").read_bytes()
    bad = tmp_path / "bad.safetensors"
    if corruption == "random":
        bad.write_bytes(random.Random(0).randbytes(2048))
    elif corruption == "truncated":
        bad.write_bytes(good[: len(good) // 2])
    elif corruption == "empty":
        bad.write_bytes(b"")
    elif corruption == "flipped":
        data = bytearray(good)
        data[-10] ^= 0xFF
        bad.write_bytes(bytes(data))
    out_text = fails_cleanly(invoke("generate", bad, "--max-tokens", "5"))
    assert "bad.safetensors" in out_text


def test_evaluate_reports_the_loss(trained):
    corpus, out, _ = trained
    result = ok("evaluate", out / "best.safetensors")
    match = re.search(r"\{.*\}", result.output, re.DOTALL)
    metrics = json.loads(match.group(0))
    assert set(metrics) == {"nats_per_token", "perplexity", "bits_per_char"}
    best_val = json.loads((out / "history.json").read_text())
    assert metrics["nats_per_token"] == pytest.approx(min(h["val_loss"] for h in best_val), rel=0.05)
    assert metrics["bits_per_char"] == pytest.approx(metrics["nats_per_token"] / 0.6931471805599453, rel=1e-3)
    # the held-out part is the one training held out: as many tokens as the run recorded
    scored = re.search(r"tokens scored\D*([\d,]+)", result.output).group(1)
    assert int(scored.replace(",", "")) == read_meta(out / "best.safetensors")["split"]["val_tokens"]
    whole = ok("evaluate", out / "best.safetensors", "--corpus", corpus, "--whole")
    assert "tokens scored" in whole.output and "10," in whole.output


def test_evaluate_on_a_bad_checkpoint_fails_cleanly(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    fails_cleanly(invoke("evaluate", bad), "bad.safetensors")


def test_info_shows_the_metadata(trained):
    _, out, _ = trained
    result = ok("info", out / "best.safetensors")
    meta = json.loads(result.output)
    assert meta["model"]["family"] == "char-rnn" and meta["model"]["n_hidden"] == 32
    assert re.fullmatch(r"\d+ entries", meta["tokenizer"]["vocab"])
    assert "history" not in meta and "corpus_sha256" in meta and "metrics" in meta


def test_info_on_a_missing_file_fails_cleanly(tmp_path):
    fails_cleanly(invoke("info", tmp_path / "nope.safetensors"), "nope.safetensors")


def test_info_on_a_corrupt_file_fails_cleanly(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(random.Random(1).randbytes(512))
    fails_cleanly(invoke("info", bad), "bad.safetensors")


def test_corpora_lists_the_search_path(use_corpora):
    result = ok("corpora")
    text = flat(result.output)
    for name in ("alice", "trump", "shakespeare", "imdb"):
        assert name in text
    assert "harry_potter" not in text  # a folder without a text is not a corpus


def test_corpora_in_an_empty_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("IMPROBABLE_CORPUS_PATH", str(tmp_path))
    get_settings.cache_clear()
    fails_cleanly(invoke("corpora"), "no corpora found", str(tmp_path), "IMPROBABLE_CORPUS_PATH")


def test_corpora_by_default_are_the_data_dir_and_the_shared_folder_beside_the_checkout(tmp_path):
    """Nothing configured: data_dir/corpora, plus ../shared/corpora when that exists beside the checkout."""
    mine = tmp_path / "data" / "corpora"
    mine.mkdir(parents=True)
    (mine / "my-notes.txt").write_text("a text of my own " * 50, encoding="utf-8")
    dirs = get_settings().corpus_dirs
    shared = Path(__file__).resolve().parents[2] / "shared" / "corpora"
    assert dirs == [mine, *([shared] if shared.is_dir() else [])]
    assert "my-notes" in flat(ok("corpora").output)


def test_generate_info_and_evaluate_take_a_persona_name():
    """A name is the bundled checkpoint (no database in this data dir); a wrong one lists the names."""
    result = ok("generate", "trump", "-p", "We will", "--max-tokens", "20", "--seed", "3")
    assert result.output.startswith("We will")
    assert json.loads(ok("info", "shakespeare").output)["model"]["family"] == "char-rnn"
    fails_cleanly(invoke("generate", "trumpp"), "trumpp", "alice, movie-reviews, shakespeare, trump")


def test_a_persona_name_uses_the_active_checkpoint_of_the_database(trained, tmp_path):
    """With the embedded database present, a name is the persona's active checkpoint there, not the bundle."""
    from db.bundled import register_bundled
    from db.checkpoints import add_checkpoint
    from db.migrate import upgrade
    from db.personas import get_persona, set_active_checkpoint
    from db.session import make_engine, session_scope
    from db.storage import checkpoint_key, open_storage

    _, out, _ = trained
    settings = get_settings()
    upgrade(settings.effective_database_url)
    engine = make_engine(settings.effective_database_url)
    storage = open_storage(settings.effective_storage_url)
    with session_scope(engine) as session:
        register_bundled(session, storage)
        persona = get_persona(session, "alice", None)
        key = checkpoint_key("alice", "mine", "best")
        storage.put(key, (out / "best.safetensors").read_bytes())
        set_active_checkpoint(session, persona, add_checkpoint(session, persona, key))
    engine.dispose()
    assert json.loads(ok("info", "alice").output)["model"]["n_hidden"] == 32  # the tiny run, not the bundled 256


def test_evaluate_from_another_folder_finds_the_training_text(trained, tmp_path, monkeypatch):
    """The checkpoint keeps the corpus's absolute path; when that file is gone, a corpus on the path with the
    same content (sha256) is used; a text that is nowhere is one clear error."""
    corpus, _, _ = trained
    text = tmp_path / "mine.txt"
    text.write_bytes(Path(corpus).read_bytes())
    ok("train", "--corpus", "mine.txt", "--max-steps", "2", "--hidden", "16", "--layers", "1", "--batch-size", "4",
       "--seq-len", "16", "--out", tmp_path / "run")
    best = tmp_path / "run" / "best.safetensors"
    assert json.loads(ok("info", best).output)["train_config"]["corpus_path"] == str(text.resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert "nats_per_token" in ok("evaluate", best).output
    moved = tmp_path / "moved"
    moved.mkdir()
    text.rename(moved / "renamed.txt")
    monkeypatch.setenv("IMPROBABLE_CORPUS_PATH", str(moved))
    get_settings.cache_clear()
    assert "nats_per_token" in ok("evaluate", best).output  # found by content, under another name
    monkeypatch.setenv("IMPROBABLE_CORPUS_PATH", str(elsewhere))
    get_settings.cache_clear()
    fails_cleanly(invoke("evaluate", best), "training text", "--corpus")


def test_train_with_an_unknown_recipe():
    fails_cleanly(invoke("train", "--recipe", "nope"), "unknown recipe 'nope'", "known recipes:", "alice")


def test_train_with_an_unknown_corpus(use_corpora):
    fails_cleanly(
        invoke("train", "--corpus", "alicee", "--max-steps", "1"),
        "There is no corpus called 'alicee'",
        "Did you mean alice",
    )


def test_train_with_a_missing_corpus_file(tmp_path):
    fails_cleanly(
        invoke("train", "--corpus", str(tmp_path / "missing.txt"), "--max-steps", "1"), "There is no file at"
    )


def test_train_without_a_corpus():
    fails_cleanly(invoke("train", "--max-steps", "1"), "say what to train on")


def test_train_from_a_recipe_by_corpus_name(use_corpora, tmp_path):
    out = tmp_path / "alice-run"
    result = ok(
        "train",
        "--recipe",
        "alice",
        "--init",
        "",  # from scratch: the base would decide the architecture
        "--max-steps",
        "3",
        "--hidden",
        "16",
        "--layers",
        "1",
        "--batch-size",
        "4",
        "--seq-len",
        "16",
        "--out",
        out,
    )
    assert "done (finished) after 3 steps" in flat(result.output)
    meta = json.loads(ok("info", out / "last.safetensors").output)
    assert meta["train_config"]["corpus"] == "alice"
    assert meta["train_config"]["dropout"] == 0.1  # from the recipe
    assert meta["model"]["n_hidden"] == 16  # from the command line


def test_train_refuses_to_resume_on_another_corpus(trained, tmp_path):
    corpus, out, _ = trained
    other = tmp_path / "other.txt"
    other.write_text(Path(corpus).read_text()[::-1], encoding="utf-8")
    target = tmp_path / "run"
    target.mkdir()
    (target / "last.safetensors").write_bytes((out / "last.safetensors").read_bytes())
    fails_cleanly(
        invoke("train", "--corpus", other, "--max-steps", "1", "--out", target),
        "trained on a different corpus",
    )


def test_rerunning_a_run_keeps_its_settings_and_the_budget_is_the_total(trained, tmp_path):
    """The same folder again: its own batch shape and model; a bigger --max-steps continues and says so; the
    same budget again says the run is done and how to go on."""
    corpus, _, _ = trained
    out = tmp_path / "run"
    ok("train", "--corpus", corpus, "--max-steps", "3", "--hidden", "16", "--layers", "1", "--batch-size", "4",
       "--seq-len", "16", "--init", "", "--out", out)
    more = flat(ok("train", "--corpus", corpus, "--max-steps", "5", "--out", out).output)
    assert f"resuming {out} from step 3, 2 steps left of 5" in more and "done (finished) after 5 steps" in more
    again = flat(ok("train", "--corpus", corpus, "--out", out).output)
    assert f"{out} finished at step 5 after" in again and "pass --max-steps 105 (the total)" in again
    assert "done (" not in again
    fails_cleanly(invoke("train", "--corpus", corpus, "--max-steps", "9", "--batch-size", "8", "--out", out),
                  "was trained with batch size, seq len [4, 16]", "--no-resume")
