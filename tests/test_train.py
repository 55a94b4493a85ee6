"""Training (trainer/train.py): the families learn real text, an interrupted run resumes exactly, the NaN
guard recovers or gives up clearly, and every budget stops where it says. Models are tiny on purpose."""

from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path

import pytest
import torch

import trainer.train as train_module
from core.checkpoints import read_meta
from tests.environment import within
from trainer import checkpoint as ckpt
from trainer.data import split_corpus
from trainer.model import build_model
from trainer.recipes import load_recipe, recipe_names
from trainer.train import TrainConfig, TrainingDiverged, train

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = {
    "n_layers": 1,
    "n_embd": 16,
    "n_hidden": 32,
    "batch_size": 8,
    "seq_len": 32,
    "warmup_steps": 2,
    "eval_interval": 10,
}


class Events:
    """Collects callback events."""

    def __init__(self):
        self.events: list[tuple[str, object, dict]] = []

    def __call__(self, event, progress, details):
        self.events.append((event, progress, details))

    def of(self, kind: str):
        return [(p, d) for e, p, d in self.events if e == kind]

    @property
    def losses(self) -> list[float]:
        return [p.loss for p, _ in self.of("progress")]

    @property
    def steps(self) -> list[int]:
        return [p.step for p, _ in self.of("progress")]


def record_models(mp: pytest.MonkeyPatch) -> list:
    """Make train() record every model it builds, with the raw loss of every training step it computes.
    Setting `model.poison = True` makes every later loss NaN."""
    models: list = []

    def recording_build(config, embedding=None):
        model = build_model(config, embedding)
        model.raw_losses = []
        original = model.loss

        def loss(idx, targets, state=None):
            value, state = original(idx, targets, state)
            if getattr(model, "poison", False):
                value = value * float("nan")
            model.raw_losses.append(value.item())
            return value, state

        model.loss = loss
        models.append(model)
        return model

    mp.setattr(train_module, "build_model", recording_build)
    return models


@pytest.fixture
def captured_models(monkeypatch):
    return record_models(monkeypatch)


# -----------------------------------------------------------------------------
# learning


def test_char_rnn_learns_real_text(tmp_path, alice_text):
    events = Events()
    config = TrainConfig(
        out_dir=str(tmp_path),
        family="char-rnn",
        cell="lstm",
        n_layers=1,
        n_embd=32,
        n_hidden=64,
        batch_size=16,
        seq_len=64,
        lr=1e-2,
        warmup_steps=10,
        max_steps=200,
        eval_interval=50,
    )
    result = train(config, alice_text, callback=events)
    vocab = len(set(alice_text))
    uniform = math.log(vocab)
    vals = [h["val_loss"] for h in result.history]
    assert [h["step"] for h in result.history] == [50, 100, 150, 200]
    assert result.best_val_loss < 0.6 * uniform, (result.best_val_loss, uniform)
    assert vals[-1] < vals[0] - 0.3
    assert all(b <= a + 0.02 for a, b in itertools.pairwise(vals)), vals  # no backsliding between evaluations
    assert events.losses[0] == pytest.approx(uniform, abs=0.5)  # it started from (near) uniform
    assert result.stop_reason == "finished" and result.steps == 200
    best = ckpt.load(tmp_path / "best.safetensors")
    assert best.meta["metrics"]["val_bpc"] == pytest.approx(result.best_val_loss / math.log(2))


@pytest.mark.parametrize(
    "family, extra",
    [
        ("word-mlp", {"context": 3, "n_embd": 16, "n_hidden": 64}),
        ("word-gru", {"cell": "gru", "n_layers": 1, "n_embd": 24, "n_hidden": 64}),
    ],
)
def test_word_models_learn_real_text(tmp_path, trump_text, family, extra):
    events = Events()
    config = TrainConfig(
        out_dir=str(tmp_path),
        family=family,
        max_vocab=500,
        lowercase=True,
        batch_size=16,
        seq_len=32,
        lr=5e-3,
        warmup_steps=5,
        max_steps=100,
        eval_interval=50,
        **extra,
    )
    result = train(config, trump_text, callback=events)
    uniform = math.log(500)
    initial = events.losses[0]  # the first step's loss: the untrained model
    assert initial == pytest.approx(uniform, abs=0.6)
    assert result.best_val_loss < 0.85 * uniform, (result.best_val_loss, uniform)
    assert result.best_val_loss < initial - 1.0
    meta = read_meta(tmp_path / "best.safetensors")
    assert meta["model"]["family"] == family and meta["tokenizer"]["lowercase"] is True
    assert len(meta["tokenizer"]["vocab"]) == 500


# -----------------------------------------------------------------------------
# exact resume

RESUME = dict(
    TINY,
    n_layers=2,
    dropout=0.3,
    max_steps=40,
    eval_interval=7,
    log_interval=1,
    warmup_steps=5,
    anneal_fraction=0.5,
)


def stop_after(events: Events, n: int):
    return lambda: bool(events.steps) and events.steps[-1] >= n


def run_interrupted(tmp_path: Path, text: str, config_kwargs: dict, stop_at: int):
    """Run B: stopped after `stop_at` steps, then a second train() call resumes to the end."""
    config = TrainConfig(out_dir=str(tmp_path), **config_kwargs)
    first, second = Events(), Events()
    r1 = train(config, text, callback=first, should_stop=stop_after(first, stop_at))
    assert r1.stop_reason == "stopped" and r1.steps == stop_at
    r2 = train(config, text, callback=second, resume=True)
    return first, second, r1, r2


@pytest.fixture(scope="module")
def resume_runs(tmp_path_factory, alice_text, single_thread):
    """Run A (uninterrupted), run B (20 steps, then resumed to 40) and run C (like B, but resuming
    without restoring the RNG state), with the raw per-step losses of each."""
    tmp_path = tmp_path_factory.mktemp("resume")
    text = alice_text[:12_000]
    mp = pytest.MonkeyPatch()
    try:
        models = record_models(mp)
        a_events = Events()
        a = train(TrainConfig(out_dir=str(tmp_path / "a"), **RESUME), text, callback=a_events)
        b_first, b_second, b1, b2 = run_interrupted(tmp_path / "b", text, RESUME, 20)
        c_config = TrainConfig(out_dir=str(tmp_path / "c"), **RESUME)
        c_events = Events()
        train(c_config, text, callback=c_events, should_stop=stop_after(c_events, 20))
        mp.setattr(torch, "set_rng_state", lambda state: None)
        train(c_config, text)
    finally:
        mp.undo()
    assert len(models) == 5
    return {
        "dir": tmp_path,
        "a": a,
        "a_events": a_events,
        "b1": b1,
        "b2": b2,
        "b_first": b_first,
        "b_second": b_second,
        "raw_a": models[0].raw_losses,
        "raw_b": models[1].raw_losses + models[2].raw_losses,
        "raw_c": models[3].raw_losses + models[4].raw_losses,
    }


def test_resume_reproduces_the_training_losses_and_weights(resume_runs):
    r = resume_runs
    assert r["a"].steps == r["b2"].steps == 40 and r["b2"].stop_reason == "finished"
    assert len(r["raw_a"]) == len(r["raw_b"]) == 40
    assert r["raw_b"] == pytest.approx(r["raw_a"], abs=1e-6, rel=0)
    assert r["raw_a"][0] != r["raw_a"][20]
    a_last = ckpt.load(r["dir"] / "a" / "last.safetensors")
    b_last = ckpt.load(r["dir"] / "b" / "last.safetensors")
    assert b_last.meta["run"]["step"] == 40
    for name, value in a_last.tensors.items():
        if name.startswith(("model.", "optim.", "state.carry")):
            torch.testing.assert_close(b_last.tensors[name], value, atol=1e-6, rtol=0, msg=name)
    a_best = ckpt.load(r["dir"] / "a" / "best.safetensors")
    b_best = ckpt.load(r["dir"] / "b" / "best.safetensors")
    assert a_best.meta["step"] == b_best.meta["step"]
    assert [h["val_loss"] for h in r["b2"].history] == pytest.approx(
        [h["val_loss"] for h in r["a"].history], abs=1e-6
    )
    assert [h["step"] for h in r["b2"].history] == [7, 14, 21, 28, 35, 40]
    assert r["b2"].best_val_loss == pytest.approx(r["a"].best_val_loss, abs=1e-6)


def test_resume_equivalence_is_sensitive_to_the_rng(resume_runs):
    """The comparison above can fail: resuming without the saved RNG state (dropout masks differ)
    matches the first 20 steps and then departs from run A."""
    raw_a, raw_c = resume_runs["raw_a"], resume_runs["raw_c"]
    assert raw_c[:20] == raw_a[:20]
    assert all(abs(c - a) > 1e-6 for c, a in zip(raw_c[20:25], raw_a[20:25]))
    assert len(set(raw_a)) == len(raw_a)  # the losses move every step


def test_resume_reports_the_same_progress_losses(resume_runs):
    """What the callback reports (Progress.loss, the smoothed training loss) and what history.json
    records as train_loss must also match the uninterrupted run: users compare runs by these curves."""
    r = resume_runs
    a_steps = r["a_events"].steps
    b_steps = r["b_first"].steps + r["b_second"].steps
    assert a_steps == b_steps == list(range(1, 41))
    b_losses = r["b_first"].losses + r["b_second"].losses
    assert b_losses == pytest.approx(r["a_events"].losses, abs=1e-6)
    assert [h["train_loss"] for h in r["b2"].history] == pytest.approx(
        [h["train_loss"] for h in r["a"].history], abs=1e-6
    )


def test_resume_with_a_different_corpus_is_refused(tmp_path, alice_text):
    config = TrainConfig(out_dir=str(tmp_path), **dict(TINY, max_steps=3))
    train(config, alice_text[:5_000])
    with pytest.raises(ValueError, match="trained on a different corpus"):
        train(config, alice_text[5_000:10_000])
    # resume=False starts afresh in the same folder instead
    result = train(config, alice_text[5_000:10_000], resume=False)
    assert result.steps == 3


def test_resume_after_the_budget_is_spent_says_so_and_how_to_continue(tmp_path, alice_text):
    """The budget is the total for the run folder: the same budget again trains nothing and says how to go on;
    a bigger one continues from where the run stopped and says so."""
    config = TrainConfig(out_dir=str(tmp_path), **dict(TINY, max_steps=4))
    train(config, alice_text[:5_000])
    events = Events()
    again = train(config, alice_text[:5_000], callback=events)
    assert again.steps == 4 and again.stop_reason == "already done"
    [(_, details)] = events.of("resume")
    assert re.fullmatch(rf"{re.escape(str(tmp_path))} finished at step 4 after \d+ s; pass --max-steps 104 "
                        r"\(the total\) to train more, or --no-resume to start afresh", details["message"])
    assert not events.of("progress")
    events = Events()
    more = train(TrainConfig(out_dir=str(tmp_path), **dict(TINY, max_steps=6)), alice_text[:5_000], callback=events)
    assert more.steps == 6 and more.stop_reason == "finished"
    [(_, details)] = events.of("resume")
    assert details["message"] == f"resuming {tmp_path} from step 4, 2 steps left of 6"


def test_resume_message_of_a_time_budget():
    from trainer.train import resume_message

    assert resume_message("runs/x", 420, 180, 10, None) == ("resuming runs/x from step 420, 7 min left of 10 min",
                                                            False)
    message, done = resume_message("run-3", 420, 600.4, 10, None)
    assert done and message.startswith("run-3 finished at step 420 after 10 min; pass --minutes 15 (the total)")


def test_continuing_with_a_bigger_budget_goes_on_down_from_the_annealed_lr(tmp_path, alice_text):
    """A finished run's lr has warmed down to min_lr; continuing must not jump back to the peak but go on
    from there to min_lr at the end of the new budget."""
    kwargs = dict(TINY, max_steps=20, warmup_steps=2, anneal_fraction=0.5, log_interval=1, lr=4e-3, min_lr=4e-4)
    first = Events()
    train(TrainConfig(out_dir=str(tmp_path), **kwargs), alice_text[:8_000], callback=first)
    last_lr = first.of("progress")[-1][0].lr
    assert last_lr < 1e-3
    second = Events()
    train(TrainConfig(out_dir=str(tmp_path), **{**kwargs, "max_steps": 40}), alice_text[:8_000], callback=second)
    lrs = [p.lr for p, _ in second.of("progress")]
    assert len(lrs) == 20 and max(lrs) <= last_lr * 1.001
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] == pytest.approx(4e-4, rel=0.1)


def test_word_gru_with_a_vectors_file_of_another_width_resumes(tmp_path, trump_text):
    """A vectors file decides the embedding width (n_embd is overridden); resuming must rebuild the
    model the checkpoint describes, not one with the configured n_embd."""
    from trainer.tokenizer import WordTokenizer

    text = trump_text[:10_000]
    tok = WordTokenizer.build(text, max_vocab=200, lowercase=True)
    dim = 12
    g = torch.Generator().manual_seed(0)
    lines = [f"{len(tok) - 1} {dim}"] + [
        w + " " + " ".join(f"{x:.4f}" for x in torch.randn(dim, generator=g).tolist())
        for w in tok.vocab[1:]
        if w.strip()
    ]
    lines[0] = f"{len(lines) - 1} {dim}"
    vectors = tmp_path / "vectors.txt"
    vectors.write_text("\n".join(lines) + "\n")
    config = TrainConfig(
        out_dir=str(tmp_path / "run"),
        family="word-gru",
        cell="gru",
        word_vectors=str(vectors),
        max_vocab=200,
        lowercase=True,
        freeze_embedding=True,
        **dict(TINY, n_embd=16, max_steps=6, log_interval=1),
    )
    events = Events()
    first = train(config, text, callback=events, should_stop=stop_after(events, 3))
    assert first.steps == 3
    assert read_meta(tmp_path / "run" / "last.safetensors")["model"]["n_embd"] == dim
    second = train(config, text)
    assert second.steps == 6


# -----------------------------------------------------------------------------
# NaN guard


def test_nan_guard_restores_halves_the_lr_and_finishes(tmp_path, alice_text, captured_models):
    events = Events()
    poisoned = []

    def callback(event, progress, details):
        events(event, progress, details)
        if event == "progress" and progress.step == 5 and not poisoned:
            model = captured_models[-1]
            with torch.no_grad():
                model.head.proj.weight.fill_(float("nan"))
            poisoned.append(True)

    config = TrainConfig(
        out_dir=str(tmp_path),
        **dict(TINY, max_steps=15, log_interval=1, lr=4e-3, warmup_steps=0, eval_interval=3),
    )
    result = train(config, alice_text[:8_000], callback=callback)
    warnings = events.of("warning")
    assert len(warnings) == 1
    message = warnings[0][1]["message"]
    assert "non-finite loss at step 5" in message and "halved the learning rate to 2.00e-03" in message
    assert result.warnings == [message]
    assert result.steps == 15 and result.stop_reason == "finished"
    model = captured_models[-1]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert math.isfinite(result.best_val_loss)
    # the step that saw the NaN was retried, not counted, and the learning rate after it is halved
    assert events.steps == list(range(1, 16))
    lrs = {p.step: p.lr for p, _ in events.of("progress")}
    assert lrs[6] == pytest.approx(lrs[5] / 2, rel=0.01)
    assert math.isnan(model.raw_losses[5]) and all(
        math.isfinite(v) for i, v in enumerate(model.raw_losses) if i != 5
    )
    assert len(model.raw_losses) == 16


def test_persistent_nan_raises_training_diverged(tmp_path, alice_text, captured_models):
    events = Events()

    def callback(event, progress, details):
        events(event, progress, details)
        if event == "progress" and progress.step == 4:
            captured_models[-1].poison = True

    config = TrainConfig(
        out_dir=str(tmp_path), **dict(TINY, max_steps=30, log_interval=1, max_nan_restarts=3)
    )
    with pytest.raises(TrainingDiverged, match=r"loss became nan 4 times at step 4.*lower --lr"):
        train(config, alice_text[:8_000], callback=callback)
    assert len(events.of("warning")) == 3
    # the last checkpoint was saved with the restored (finite) weights, so the run can be inspected
    last = ckpt.load(tmp_path / "last.safetensors")
    assert all(torch.isfinite(v).all() for k, v in last.tensors.items() if k.startswith("model."))


# -----------------------------------------------------------------------------
# budgets, outputs, warnings


def test_minutes_budget_stops(tmp_path, alice_text):
    config = TrainConfig(out_dir=str(tmp_path), **dict(TINY, minutes=0.01, eval_interval=10_000))
    result = train(config, alice_text[:8_000])
    assert result.stop_reason == "time budget reached"
    assert 0.6 <= result.elapsed < within(5)
    assert result.steps > 0
    # evaluated every tenth of the budget (eval_interval is far away), and at its end
    assert 3 <= len(result.history) <= 11 and result.history[-1]["step"] == result.steps


def test_minutes_budget_is_wall_clock_from_the_first_step(tmp_path, alice_text):
    # a slow progress callback (a busy database, say) spends the budget too: 0.6 s of 0.05 s callbacks
    # leaves room for at most 12 steps, where the steps alone would make hundreds
    import time

    config = TrainConfig(out_dir=str(tmp_path), **dict(TINY, minutes=0.01, eval_interval=10_000, log_interval=1))
    result = train(config, alice_text[:8_000], callback=lambda e, p, d: time.sleep(0.05) if e == "progress" else None)
    assert result.stop_reason == "time budget reached"
    assert 1 <= result.steps <= 13
    assert 0.6 <= result.elapsed < within(2)


def test_time_budget_sizes_evaluation_to_a_share_of_it(tmp_path, corpora_dir, monkeypatch):
    # 20 blocks of held-out text (distinct prose: the split drops repeats, so a text pasted many times would hold
    # out one copy's share); a 0.6 s budget affords far less than one block per evaluation, so every
    # evaluation scores the floor of MIN_EVAL_BLOCKS blocks spread through the split, and a resumed run keeps it
    from trainer.data import BLOCK_TOKENS
    from trainer.evaluate import MIN_EVAL_BLOCKS

    scored: list[int] = []
    real_evaluate = train_module.evaluate
    monkeypatch.setattr(train_module, "evaluate", lambda m, d: scored.append(d.n_tokens) or real_evaluate(m, d))
    text = (corpora_dir / "base" / "145-middlemarch.txt").read_text(encoding="utf-8")[:20 * BLOCK_TOKENS["char"] * 10]
    config = TrainConfig(out_dir=str(tmp_path), **dict(TINY, minutes=0.01, eval_interval=10_000))
    assert len(split_corpus(config, text).val_text) >= 19.5 * BLOCK_TOKENS["char"]
    result = train(config, text)
    floor = MIN_EVAL_BLOCKS * BLOCK_TOKENS["char"]
    assert len(result.history) >= 3 and len(scored) == len(result.history) + 1
    assert all(floor * 0.9 <= n <= floor for n in scored[:-1])  # streams drop a ragged tail of < batch × seq tokens
    assert all(h["val_tokens"] == scored[0] for h in result.history)
    assert ckpt.load(tmp_path / "last.safetensors").meta["run"]["eval_tokens"] == floor
    # after the budget, the best weights are scored once on the whole split: that is the loss the run reports
    assert scored[-1] >= 19 * BLOCK_TOKENS["char"]
    metrics = ckpt.load(tmp_path / "best.safetensors").meta["metrics"]
    assert metrics["val_loss"] == result.best_val_loss and metrics["val_loss_sampled"] == min(
        h["val_loss"] for h in result.history)
    # asked for explicitly, eval_tokens wins; 0 with no time budget scores the whole split
    scored.clear()
    train(TrainConfig(out_dir=str(tmp_path / "all"), **dict(TINY, max_steps=10)), text)
    assert scored and scored[-1] >= 19 * BLOCK_TOKENS["char"]
    scored.clear()
    train(TrainConfig(out_dir=str(tmp_path / "cap"), **dict(TINY, max_steps=10, eval_tokens=30_000)), text)
    assert scored and 7 * BLOCK_TOKENS["char"] * 0.9 <= scored[-1] <= 30_000


def test_spread_sample_caps_and_spreads():
    from trainer.data import spread_sample

    ids = torch.arange(100)
    assert torch.equal(spread_sample(ids, 0, 10), ids) and torch.equal(spread_sample(ids, 200, 10), ids)
    picked = spread_sample(ids, 35, 10)  # 3 whole blocks of 10, one from the middle of each third
    assert picked.tolist() == [*range(10, 20), *range(50, 60), *range(80, 90)]
    assert spread_sample(ids, 1, 10).tolist() == list(range(50, 60))  # never less than one block
    assert spread_sample(torch.arange(95), 20, 10).tolist() == [*range(20, 30), *range(70, 80)]


def test_max_epochs_budget(tmp_path, alice_text):
    text = alice_text[:6_000]
    events = Events()
    config = TrainConfig(
        out_dir=str(tmp_path), **dict(TINY, max_epochs=1.5, log_interval=1, eval_interval=1000)
    )
    result = train(config, text, callback=events)
    # an epoch is one pass over the training side of the run's split (repeats dropped, whole paragraphs held out)
    n_train = len(split_corpus(config, text).train_text)
    assert 0.8 * len(text) < n_train < len(text)
    chunks_per_epoch = ((n_train - 1) // 8) // 32
    assert result.steps == round(1.5 * chunks_per_epoch) and result.stop_reason == "finished"
    assert events.of("progress")[-1][0].epoch == pytest.approx(result.steps / chunks_per_epoch)
    assert events.of("progress")[-1][0].total_steps == result.steps


def test_early_stopping_with_patience(tmp_path, alice_text):
    # lr 0: the validation loss never improves after the first evaluation
    config = TrainConfig(
        out_dir=str(tmp_path), **dict(TINY, lr=0.0, min_lr=0.0, max_steps=500, eval_interval=4, patience=3)
    )
    result = train(config, alice_text[:8_000])
    assert result.stop_reason == "early stopping: no improvement in 3 evaluations"
    assert result.steps == 16  # evaluations at 4 (best), 8, 12, 16 (third without improvement)
    assert len(result.history) == 4


def test_a_small_text_stops_early_at_its_best_and_a_longer_budget_is_no_worse(tmp_path, alice_text):
    # 5 KB and a 1x256 LSTM at lr 1e-2: the held-out loss bottoms out after ~6 epochs, then climbs for good
    text = alice_text[:5_000]
    settings = dict(TINY, n_embd=32, n_hidden=256, lr=1e-2, min_lr=1e-3, split="tail")
    overfit = train(TrainConfig(out_dir=str(tmp_path / "off"), max_steps=300, **settings), text)
    lowest = min(h["val_loss"] for h in overfit.history)
    assert overfit.stop_reason == "finished" and overfit.last_val_loss > lowest + 0.3  # it really overfits

    results = {}
    for steps in (300, 600):
        config = TrainConfig(out_dir=str(tmp_path / str(steps)), max_steps=steps, patience_epochs=2, **settings)
        result = results[steps] = train(config, text)
        assert result.steps < steps, result.stop_reason
        assert result.stop_reason.startswith("early stopping: no improvement in "), result.stop_reason
        assert "went back to the best weights" in result.stop_reason
        seen = [h["val_loss"] for h in result.history]
        assert result.best_val_loss == min(seen)  # the best kept, not the last
        assert result.last_val_loss > result.best_val_loss
        best = ckpt.load(tmp_path / str(steps) / "best.safetensors")
        assert best.meta["metrics"]["val_loss"] == result.best_val_loss
        assert best.meta["step"] == next(h["step"] for h in result.history if h["val_loss"] == min(seen))
    assert results[600].best_val_loss <= results[300].best_val_loss + 1e-6
    assert results[300].best_val_loss <= lowest + 0.02  # as good as the run that went on overfitting ever was

    # a run that stopped early stays stopped when its budget grows: more steps would only overfit
    again = train(TrainConfig(out_dir=str(tmp_path / "300"), max_steps=900, patience_epochs=2, **settings), text)
    assert again.stop_reason == "already done" and again.steps == results[300].steps


def test_tiny_corpus_shrinks_the_batch_shape_with_a_warning(tmp_path):
    text = "The cat sat on the mat. The dog sat on the log. " * 6  # ~290 chars
    config = TrainConfig(out_dir=str(tmp_path), **dict(TINY, batch_size=32, seq_len=100, max_steps=5))
    result = train(config, text)
    assert any("batch size reduced from 32 to 2" in w for w in result.warnings), result.warnings
    assert read_meta(tmp_path / "best.safetensors")["batch_shape"] == [2, 100]
    assert result.steps == 5


def test_outputs_history_json_and_loss_png(tmp_path, alice_text):
    events = Events()
    config = TrainConfig(
        out_dir=str(tmp_path),
        **dict(TINY, max_steps=12, eval_interval=4, sample_interval=6, sample_length=30),
    )
    result = train(config, alice_text[:8_000], callback=events)
    assert {p.name for p in tmp_path.iterdir()} == {
        "best.safetensors",
        "last.safetensors",
        "history.json",
        "loss.png",
    }
    history = json.loads((tmp_path / "history.json").read_text())
    assert history == json.loads(json.dumps(result.history))
    assert [h["step"] for h in history] == [4, 8, 12]
    assert set(history[0]) >= {"step", "elapsed", "train_loss", "val_loss", "lr"}
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    train_log = read_meta(tmp_path / "last.safetensors")["train_log"]  # the plot's line between evaluations
    assert [t["step"] for t in train_log] == [1, *range(config.log_interval, 13, config.log_interval)]
    assert len(events.of("eval")) == 3 and len(events.of("checkpoint")) == 3
    samples = events.of("sample")
    assert [p.step for p, _ in samples] == [6, 12]
    assert all(isinstance(d["text"], str) and len(d["text"]) > 0 for _, d in samples)
    evals = events.of("eval")
    assert all(p.val_loss is not None and "val_bpc" in d["metrics"] for p, d in evals)
    assert evals[0][1]["improved"] is True


def test_stop_before_the_first_step_still_leaves_loadable_checkpoints(tmp_path, alice_text):
    config = TrainConfig(out_dir=str(tmp_path), **dict(TINY, max_steps=10))
    result = train(config, alice_text[:5_000], should_stop=lambda: True)
    assert result.steps == 0 and result.stop_reason == "stopped"
    ckpt.load(tmp_path / "best.safetensors")
    ckpt.load(tmp_path / "last.safetensors")


def test_a_budget_is_required(tmp_path):
    with pytest.raises(ValueError, match="set a budget"):
        train(TrainConfig(out_dir=str(tmp_path)), "some text " * 100)


def test_train_config_rejects_unknown_settings():
    with pytest.raises(ValueError, match="unknown training settings: bogus, hiddn"):
        TrainConfig.from_dict({"hiddn": 3, "bogus": 1})


def test_head_auto_switches_to_adaptive_for_big_vocabularies():
    assert TrainConfig().model_config(5_000).head == "full"
    assert TrainConfig().model_config(5_001).head == "adaptive"
    assert TrainConfig(head="full").model_config(20_000).head == "full"


# -----------------------------------------------------------------------------
# recipes


@pytest.mark.parametrize("name", recipe_names())
def test_every_recipe_is_a_valid_train_config(name):
    config = TrainConfig.from_dict(load_recipe(name))
    assert config.minutes or config.max_steps or config.max_epochs
    model_config = config.model_config(10_000)
    build_model(model_config)  # builds
    if config.family == "word-gru":
        assert model_config.cell == "gru", f"the {name} recipe is a word GRU but builds a {model_config.cell}"


def test_recipe_names_and_unknown_recipe():
    assert {"alice", "trump", "shakespeare", "movie-reviews", "harry-potter"} <= set(recipe_names())
    with pytest.raises(ValueError, match="unknown recipe 'nope'; known recipes: alice"):
        load_recipe("nope")


def test_word_gru_family_defaults_to_a_gru_cell():
    """`--family word-gru` without `--cell` must build a GRU (the family's name), not the char-rnn
    default LSTM."""
    assert TrainConfig(family="word-gru").model_config(100).cell == "gru"


def test_loss_plot_reads_well(tmp_path):
    """Title, bits/char axis, the best checkpoint's marker and the train line's note (matplotlib's objects)."""
    import matplotlib.pyplot as plt

    from trainer import plot
    from trainer.plot import plot_title

    history = [{"step": 10, "train_loss": 2.0, "val_loss": 1.9}, {"step": 20, "train_loss": 1.5, "val_loss": 1.6},
               {"step": 30, "train_loss": 1.4, "val_loss": 1.7}]
    log = [{"step": s, "train_loss": 2.5 - s / 30} for s in range(1, 31)]
    seen = {}
    real_savefig = plt.Figure.savefig

    def capture(fig, path, *args, **kwargs):
        ax = fig.axes[0]
        seen.update(title=ax.get_title(), ylabel=ax.get_ylabel(),
                    labels=[t.get_text() for t in ax.get_legend().get_texts()])
        return real_savefig(fig, path, *args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(plt.Figure, "savefig", capture)
    try:
        title = plot_title(TrainConfig(name="trump", corpus="uploads/speeches.txt", out_dir="runs/17"))
        plot.plot_history(history, tmp_path / "loss.png", title=title, train_log=log, bits_per_token=True)
    finally:
        mp.undo()
    assert seen["title"] == "trump (char-rnn)" and seen["ylabel"] == "loss (bits/char)"
    assert any("moving average" in label for label in seen["labels"])
    assert f"best checkpoint: step 20, {1.6 / math.log(2):.3f}" in seen["labels"]
    assert plot_title(TrainConfig(corpus="alice", out_dir="runs/alice")) == "alice"
