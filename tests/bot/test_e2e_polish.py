"""End to end, the small things a user notices, through the real bot process, a real worker and Redis against
the fake Discord (the session's stack, conftest.py): a run queued behind a training run is not said to lack a
trainer and loses its notes when it starts; a progress message is not edited for its ETA alone; a long
word-model text uploads its `.txt` once; no runs of blank lines; a continued text's prompt is shown as a short
tail; the owner-only refusal reads as English; a loss plot is titled by its persona; a schedule paused by a
refused post says why in words and tells its creator once; fast replies leave no StaleDataError."""

from __future__ import annotations

import re
import time
import zlib
from datetime import UTC, datetime, timedelta

import pytest

from db.bundled import bundled_checkpoints

from .conftest import install_checkpoint
from .fake_discord import SEND_MESSAGES, custom_ids, opt
from .test_e2e import TIMEOUT, ephemeral_reply, final_text
from .test_e2e_voices import _alice, _outcome, _upload

pytestmark = pytest.mark.slow


def _db(e2e):
    import db

    return db.make_engine(e2e.database_url)


def _set_run(e2e, run_id: int, *, start: bool = False, **progress) -> None:
    """Act as the trainer of a run: start it (with a ticket of its own) and write its progress report."""
    import db
    from db.runs import start_run

    engine = _db(e2e)
    try:
        with db.session_scope(engine) as session:
            run = session.get(db.TrainingRun, run_id)
            if start:
                start_run(session, run, f"polish-{run_id}")
            run.progress = {"owner": "polish-test", "heartbeat": time.time(), **progress}
    finally:
        engine.dispose()


def _end_run(e2e, run_id: int) -> None:
    import db
    from db.runs import cancel_run

    engine = _db(e2e)
    try:
        with db.session_scope(engine) as session:
            run = session.get(db.TrainingRun, run_id)
            if run is not None and not run.status.finished:
                cancel_run(session, run)
    finally:
        engine.dispose()


def _run_of(e2e, slug: str) -> int:
    from sqlalchemy import select

    import db

    engine = _db(e2e)
    try:
        with db.session_scope(engine) as session:
            return session.scalars(select(db.TrainingRun.id).join(db.Persona).where(db.Persona.slug == slug)
                                   .order_by(db.TrainingRun.id.desc())).first()
    finally:
        engine.dispose()


def _consumes_train(celery) -> bool:
    replies = celery.control.inspect(timeout=0.5).active_queues() or {}
    return any(q.get("name") == "train" for qs in replies.values() for q in qs or ())


@pytest.fixture
def busy_trainer(e2e):
    """The worker stops taking train tickets, as a solo trainer busy with a run cannot answer the broker: the
    test itself plays that trainer (start_run, progress reports)."""
    celery = e2e.celery()
    celery.control.cancel_consumer("train")
    e2e.fake.wait_for(lambda: not _consumes_train(celery), TIMEOUT, "the worker to stop taking train tickets")
    runs: list[int] = []
    try:
        yield runs
    finally:
        for run_id in runs:
            _end_run(e2e, run_id)
        celery.control.add_consumer("train")
        e2e.fake.wait_for(lambda: _consumes_train(celery), TIMEOUT, "the worker to take train tickets again")


def _edits(fake, ix) -> list[str]:
    edits = fake.sent("PATCH", f"/webhooks/{fake.app_id}/{ix.token}/messages/@original")
    return [r.json.get("content", "") for r in edits if isinstance(r.json, dict)]


def test_queued_behind_a_training_run_and_edits_for_the_eta_alone(e2e, busy_trainer):
    fake = e2e.fake
    text = _alice(e2e, 14_000, 20_000)
    first = _upload(fake, "persona create", [opt("name", "polish-ahead"), opt("minutes", 0.05)],
                    {"file": ("ahead.txt", text)})
    fake.wait_for(lambda: first.state == "sent" and _run_of(e2e, "polish-ahead"), TIMEOUT, "the first run")
    ahead = _run_of(e2e, "polish-ahead")
    busy_trainer.append(ahead)
    _set_run(e2e, ahead, start=True, step=5, total=100, loss=2.5, eta=600)
    second = _upload(fake, "persona create", [opt("name", "polish-behind"), opt("minutes", 0.05)],
                     {"file": ("behind.txt", text)})
    fake.wait_for(lambda: second.state == "sent" and _run_of(e2e, "polish-behind"), TIMEOUT, "the second run")
    behind = _run_of(e2e, "polish-behind")
    busy_trainer.append(behind)

    bumps = [0]

    def queued_note():
        """Only the ETA of the run ahead changes meanwhile (by minutes: a new relative timestamp each time)."""
        bumps[0] += 1
        _set_run(e2e, ahead, step=5, total=100, loss=2.5, eta=600 + 60 * bumps[0])
        shown = fake.message(second.original_id)["content"]
        return shown if "No trainer" in shown or "training ahead" in shown else None

    shown = fake.wait_for(queued_note, 20, "the queued run's note")
    step5 = [c for c in _edits(fake, first) if "step 5/100" in c]
    assert len(step5) == 1, step5  # edited once for step 5, never for its ETA alone
    assert "No trainer" not in shown and "position 2" in shown, shown

    _set_run(e2e, behind, start=True, step=3, total=50, loss=3.0)
    started = fake.wait_for(lambda: next((c for c in _edits(fake, second) if "step 3/50" in c), None), TIMEOUT,
                            "the second run's progress")
    assert "No trainer" not in started and "training ahead" not in started, started


def _png_title(png: bytes) -> str | None:
    """The PNG's tEXt 'Title' (the plot's title)."""
    pos = 8
    while pos < len(png):
        length, kind = int.from_bytes(png[pos:pos + 4], "big"), png[pos + 4:pos + 8]
        data = png[pos + 8:pos + 8 + length]
        if kind == b"tEXt" and data.startswith(b"Title\0"):
            return data[6:].decode("latin-1")
        if kind == b"zTXt" and data.startswith(b"Title\0"):
            return zlib.decompress(data[7:]).decode("latin-1")
        pos += 12 + length
    return None


def test_an_uploads_loss_plot_is_titled_by_its_persona(e2e):
    fake = e2e.fake
    ix = _upload(fake, "persona create", [opt("name", "polish-plot"), opt("minutes", 0.05)],
                 {"file": ("plot.txt", _alice(e2e, 30_000, 36_000))})
    outcome = _outcome(fake, ix)
    assert "failed" not in outcome, outcome
    (name, png), = fake.files[ix.followups[-1]]
    title = _png_title(png)
    assert name == "loss.png" and title is not None and title.startswith("Polish Plot"), title
    assert "alice" not in title, title


def test_a_long_word_model_text_uploads_its_file_once(e2e):
    fake = e2e.fake
    install_checkpoint(e2e.database_url, e2e.storage_dir, bundled_checkpoints()["movie-reviews"].read_bytes(),
                       slug="movie-reviews")
    ix = fake.slash("generate", [opt("persona", "movie-reviews"), opt("prompt", "this movie was"),
                                 opt("length", 2000), opt("seed", 4)], user=fake.bob)
    msg = final_text(fake, ix, timeout=90)
    edits = fake.sent("PATCH", f"/webhooks/{fake.app_id}/{ix.token}/messages/@original")
    uploads = [r for r in edits if r.files]
    assert len(uploads) == 1 and uploads[-1] is edits[-1], [len(r.files) for r in edits]
    streamed_long = [r.json["content"] for r in edits[:-1] if len(r.json.get("content", "")) > 1500]
    assert all(c.endswith("▌") for c in streamed_long), [c[-30:] for c in streamed_long]
    (name, data), = fake.files[int(msg["id"])]
    assert name == "generated.txt" and len(data.decode()) > 2000


def test_no_runs_of_blank_lines(e2e):
    fake = e2e.fake
    said = fake.say(f"<@{fake.app_id}> alice: The Hatter\n\n\n\n \n\n\nsaid", user=fake.owner, mention_bot=True)
    reply = fake.wait_for(lambda: next((m for m in fake.channel_messages(fake.channel_id) if custom_ids(m) and
                                        (m.get("message_reference") or {}).get("message_id") == said["id"]), None),
                          TIMEOUT, "the reply")
    assert "The Hatter" in reply["content"] and not re.search(r"\n[ \t]*\n[ \t]*\n", reply["content"]), reply


def test_a_continued_texts_prompt_is_a_short_tail_and_the_refusal_reads_well(e2e):
    fake = e2e.fake
    ix = fake.slash("generate", [opt("persona", "alice"), opt("prompt", "The Queen"), opt("length", 250),
                                 opt("seed", 8)], user=fake.alice)
    first = final_text(fake, ix)
    refused = fake.click(first, custom_ids(first)[2], user=fake.carol)  # More improbable, not carol's text
    assert "can make it more improbable." in ephemeral_reply(fake, refused)["content"]

    cont = fake.click(first, custom_ids(first)[1], user=fake.bob)
    continued = final_text(fake, cont)
    mid = int(continued["id"])
    for button in (0, 2):  # Regenerate, More improbable
        before = custom_ids(fake.message(mid))
        fake.click(fake.message(mid), before[button], user=fake.bob)
        shown = fake.wait_for(lambda b=before: (m := fake.message(mid)) and custom_ids(m) and custom_ids(m) != b
                              and m, TIMEOUT, "the changed text")["content"]
        bold = re.search(r"\*\*(.+?)\*\*", shown.split("\n", 1)[1], re.DOTALL).group(1)
        assert len(bold) <= 125 and bold.startswith("…"), (button, bold)


def test_a_paused_schedule_says_why_in_words_and_tells_its_creator(e2e):
    fake = e2e.fake
    channel = fake.add_channel(fake.guild_id, "polish-posts")
    cid = str(channel)
    ix = fake.slash("schedule add", [opt("persona", "alice"), opt("channel", cid, 7), opt("every", "1m")],
                    user=fake.owner,
                    resolved={"channels": {cid: {"id": cid, "name": "polish-posts", "type": 0, "permissions": "0"}}})
    fake.wait_for(lambda: (m := fake.message(ix.original_id)) and "Schedule" in m["content"], TIMEOUT)
    fake.overwrite(channel, fake.bot_user.id, deny=SEND_MESSAGES, member=True)
    dm = fake.dm_channel(fake.owner)
    later = (datetime.now(UTC) + timedelta(minutes=2)).isoformat()
    e2e.celery().send_task("improbable.dispatch_schedules", args=[later])
    told = fake.wait_for(lambda: [m for m in fake.channel_messages(dm) if "paused" in m["content"]], TIMEOUT,
                         "the creator told of the pause")
    assert len(told) == 1 and "Send Messages" in told[0]["content"] and "{" not in told[0]["content"], told
    listed = fake.slash("schedule list", [], user=fake.owner)
    shown = fake.wait_for(lambda: (m := fake.message(listed.original_id)) and listed.state == "sent"
                          and m["content"] and m, TIMEOUT)["content"]
    line = next(part for part in shown.split("\n**") if f"<#{cid}>" in part)
    assert "paused" in line and "Send Messages" in line and "{" not in line and "code" not in line, line


def _in_flight(e2e) -> int:
    from sqlalchemy import func, select

    import db

    engine = _db(e2e)
    try:
        with db.session_scope(engine) as session:
            return session.scalar(select(func.count()).select_from(db.InflightGeneration))
    finally:
        engine.dispose()


def test_fast_replies_leave_no_stale_data_error(e2e):
    fake = e2e.fake
    start = len(e2e.bot.log(tail=10**9))
    said = [fake.say(f"<@{fake.app_id}> alice: Quick {i}", user=user, mention_bot=True)
            for i, user in enumerate((fake.alice, fake.bob, fake.carol, fake.owner) * 3)]

    def answered():
        refs = {(m.get("message_reference") or {}).get("message_id") for m in fake.channel_messages(fake.channel_id)
                if custom_ids(m)}
        return all(s["id"] in refs for s in said)

    fake.wait_for(answered, 60, "every reply")
    fake.wait_for(lambda: _in_flight(e2e) == 0, TIMEOUT, "the replies' in-flight rows forgotten")
    log = e2e.bot.log(tail=10**9)[start:]
    assert "StaleDataError" not in log and "Task exception was never retrieved" not in log, log[-3000:]
