"""The quality gate through a real `celery worker -Q train`: a repetitive upload is refused before the first
step with its numbers; a barely trained fine-tune is not promoted over the base (the three numbers in the
message); a real short fine-tune that beats the base is promoted."""

from __future__ import annotations

import pytest

import db
from db.ingest import ingest
from db.models import Family, RunStatus, TrainingRun
from db.personas import create_persona
from db.runs import create_run
from worker.app import enqueue

from .conftest import CORPORA

GUILD = 4242


def _run_on(slug: str, text: str, **config) -> int:
    with db.session_scope() as session:
        corpus = ingest(text.encode(), f"{slug}.txt", session=session).corpus  # no size check: the trainer's turn
    with db.session_scope() as session:
        persona = create_persona(session, slug, family=Family.CHAR_RNN, recipe="alice", guild_id=GUILD)
        return create_run(session, persona, corpus=corpus, config={"threads": 1, **config}, requested_by=7).id


def _finished(run_id: int, worker, timeout: float = 240) -> TrainingRun:
    enqueue("improbable.train", run_id).get(timeout=timeout)
    with db.session_scope() as session:
        run = session.get(TrainingRun, run_id)
        assert run.status.finished, worker.log()
        return run


@pytest.fixture(scope="module")
def trainer(services):
    from .support import WorkerProcess

    worker = WorkerProcess(services, "gate-trainer", "train", "solo").wait_ready()
    yield worker
    worker.stop()


def test_a_repetitive_upload_is_refused_before_the_first_step(trainer):
    paragraph = (CORPORA / "alice" / "alice.txt").read_text(encoding="utf-8")[3000:3600]
    text = (paragraph + "\n\n") * 1000
    run = _finished(_run_on("echo", text, minutes=1), trainer)
    assert run.status is RunStatus.FAILED
    numbers = (f"{len(paragraph.strip().encode()) / 1000:.1f} KB of distinct text",
               f"of {len(text.encode()) / 1000:.1f} KB", "at least 5.0 KB")
    assert all(n in run.error for n in numbers), run.error
    assert not run.progress.get("step")  # not one step trained


def test_a_barely_trained_fine_tune_is_not_promoted_over_the_base(trainer):
    text = (CORPORA / "trump" / "speeches.txt").read_text(encoding="utf-8")[:40_000]
    run = _finished(_run_on("barely", text, init="base", max_steps=2, lr=1e-5, eval_interval=2,
                            batch_size=8, seq_len=64, minutes=1), trainer)
    assert run.status is RunStatus.SUCCEEDED, run.error
    m = run.metrics
    assert m["promoted"] is False and m["steps"] == 2
    losses = m["gate_losses"]
    assert abs(losses["candidate"] - losses["base"]) < 0.005  # the base, barely touched
    assert f"held-out loss {losses['candidate']:.3f} nats/char" in m["gate"], m["gate"]
    assert f"must beat the base model's {losses['base']:.3f}" in m["gate"], m["gate"]
    with db.session_scope() as session:
        assert session.get(TrainingRun, run.id).persona.active_checkpoint_id is None


def test_a_short_real_fine_tune_that_beats_the_base_is_promoted(trainer):
    text = (CORPORA / "trump" / "speeches.txt").read_text(encoding="utf-8")[:120_000]
    run = _finished(_run_on("speaker", text, init="base", lr=0.002, warmup_steps=5, batch_size=16, seq_len=100,
                            eval_interval=20, minutes=0.75), trainer)
    assert run.status is RunStatus.SUCCEEDED, run.error
    m = run.metrics
    losses = m["gate_losses"]
    assert m["promoted"] is True, m["gate"]
    assert losses["candidate"] < losses["base"] - 0.01 and losses["active"] is None
    assert f"{losses['candidate']:.3f} nats/char beats the base model's {losses['base']:.3f}" in m["gate"]
    with db.session_scope() as session:
        assert session.get(TrainingRun, run.id).persona.active_checkpoint_id == m["checkpoint_id"]
