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
    from db.models import Report

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
    assert [g["id"] for g in data["generations"]] == [gid] and data["generations"][0]["prompt"] == "Zebra quartz"

    ask = fake.slash("privacy delete", user=fake.carol)
    confirm = ephemeral_reply(fake, ask)
    fake.click(confirm, "improbable:privacy:delete", user=fake.carol)
    fake.wait_for(lambda: "Deleted: 1 texts" in (fake.message(int(confirm["id"])) or {}).get("content", ""),
                  TIMEOUT, "the deletion")
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
