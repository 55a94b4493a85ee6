"""End to end through the real bot, a real worker and Redis against the fake Discord: /privacy export and
delete, the Report button reaching the operator's list, GUILD_DELETE (outage or removal)."""

from __future__ import annotations

import json

import pytest

from .fake_discord import custom_ids, opt
from .test_e2e import TIMEOUT, ephemeral_reply, final_text

pytestmark = pytest.mark.slow


def _db(e2e):
    import db

    return db.make_engine(e2e.database_url)


def test_privacy_export_and_delete_then_report(e2e):
    import db
    from db.models import Generation, Report

    fake = e2e.fake
    msg = final_text(fake, fake.slash("generate", [opt("persona", "alice"), opt("prompt", "Zebra quartz"),
                                                   opt("length", 20)], user=fake.carol))
    gid = int(custom_ids(msg)[0].split(":")[2])

    report = fake.click(msg, f"improbable:report:{gid}", user=fake.bob)
    assert "report #" in ephemeral_reply(fake, report)["content"]
    engine = _db(e2e)
    try:
        with db.session_scope(engine) as session:
            [row] = session.query(Report).filter_by(generation_id=gid).all()
            assert row.reporter_id == fake.bob.id and "Zebra quartz" in row.text
    finally:
        engine.dispose()

    export = fake.slash("privacy export", user=fake.carol)
    reply = ephemeral_reply(fake, export)
    files = fake.wait_for(lambda: fake.files.get(int(reply["id"])), TIMEOUT, "the export file")
    data = json.loads(files[0][1])
    # (other tests of the shared stack generate as carol too: her export holds theirs as well)
    mine = {g["id"]: g for g in data["generations"]}
    assert gid in mine and mine[gid]["prompt"] == "Zebra quartz"
    engine = _db(e2e)
    try:
        with db.session_scope(engine) as session:
            theirs = session.query(Generation.id).filter(Generation.user_id == fake.carol.id).all()
            assert set(mine) == {row.id for row in theirs}
    finally:
        engine.dispose()

    ask = fake.slash("privacy delete", user=fake.carol)
    confirm = ephemeral_reply(fake, ask)
    fake.click(confirm, "improbable:privacy:delete", user=fake.carol)
    # (her texts, and ambient replies that quoted her: the listing below proves nothing is left)
    done = fake.wait_for(lambda: "Deleted: " in (m := fake.message(int(confirm["id"])) or {}).get("content", "")
                         and m["content"], TIMEOUT, "the deletion")
    assert int(done.split("Deleted: ", 1)[1].split(" ", 1)[0]) >= len(mine)
    import redis

    client = redis.Redis.from_url(e2e.redis_url)
    assert not [k for k in client.scan_iter("celery-task-meta-*") if str(fake.carol.id).encode() in client.get(k)]
    engine = _db(e2e)
    try:
        with db.session_scope(engine) as session:
            assert session.get(db.Generation, gid) is None
            assert session.query(db.Generation).filter_by(user_id=fake.carol.id).count() == 0
    finally:
        engine.dispose()


def test_privacy_export_includes_the_text_of_own_uploads(e2e):
    import db
    from db.ingest import ingest

    from .conftest import CORPORA

    fake = e2e.fake
    text = "Café naïve — “quoted”.\n" + (CORPORA / "alice" / "alice.txt").read_text(encoding="utf-8")[:4000]
    engine = _db(e2e)
    try:
        with db.session_scope(engine) as session:
            ingest(text.encode("utf-8"), "bob-own-words.txt", uploader=fake.bob.id, guild=fake.guild_id,
                   session=session, storage=db.Storage(str(e2e.storage_dir)))
    finally:
        engine.dispose()
    reply = ephemeral_reply(fake, fake.slash("privacy export", user=fake.bob))
    files = fake.wait_for(lambda: fake.files.get(int(reply["id"])), TIMEOUT, "the export file")
    data = json.loads(files[0][1])
    [upload] = [u for u in data["uploads"] if u["filename"] == "bob-own-words.txt"]
    assert upload["text"].startswith("Café naïve — “quoted”.") and len(upload["text"]) >= 4000
    assert "text_note" not in upload and upload["guild_id"] == fake.guild_id


def test_export_text_is_capped_with_a_note(tmp_path):
    """Past the cap an upload's text is cut on a character (never inside a UTF-8 sequence) and says so."""
    import db
    from service.privacy import EXPORT_TEXT_CHARS, _upload_text

    storage = db.Storage(str(tmp_path))
    text = "é" * 50 + "z" * 50
    storage.put("corpora/x.txt", text.encode("utf-8"))
    corpus = db.Corpus(storage_key="corpora/x.txt", n_chars=len(text))
    assert _upload_text(storage, corpus, 1000) == {"text": text}
    cut = _upload_text(storage, corpus, 30)
    assert cut["text"] == "é" * 30 and "first 30 of 100 characters" in cut["text_note"]
    assert f"{EXPORT_TEXT_CHARS:,}" in cut["text_note"]
    gone = _upload_text(storage, db.Corpus(storage_key="corpora/missing.txt", n_chars=5), 1000)
    assert gone["text"] is None and "missing" in gone["text_note"]

