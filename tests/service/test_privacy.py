"""A user's data (show, export, delete), retention, servers the bot left, reports and the operator's tools:
service/privacy.py, service/operator.py and db/retention.py on a real migrated SQLite file, with the real
Redis as Celery's result backend."""

from __future__ import annotations

import json
import os
import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest

import db
import service.generation
import service.operator
import service.personas
import service.privacy
from db.checkpoints import add_checkpoint
from db.generations import record_generation
from db.guilds import update_guild_settings
from db.personas import get_persona
from db.retention import sweep
from service.errors import NotAllowed, PersonaDisabled, TextGone
from service.policy import Actor
from tests.environment import configured

GUILD, OTHER_GUILD = 4411, 4422
USER = 777_000_111_222_333  # a snowflake no other id in the database can equal
OTHER = 777_000_999_888_777
MARK = "zebra-quartz"  # in every text of USER's


def _varied(mark: str) -> bytes:
    """An upload with enough distinct text to be accepted (settings.train_min_distinct_bytes), `mark` in it."""
    rng = random.Random(mark)
    words = "the queen rabbit garden tea hatter cat croquet mushroom door key bottle cake pool mouse".split()
    return "\n".join(f"{mark} saw the " + " ".join(rng.choice(words) for _ in range(10)) + "."
                      for _ in range(120)).encode()
MANAGER = Actor(USER, GUILD, 5, can_manage=True)
OPERATOR = Actor(1, None, None, can_manage=True, operator=True)
REDIS_URL = os.environ.get("IMPROBABLE_TEST_REDIS_URL", "redis://127.0.0.1:6379/5")
T0 = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture
def env(service_db):
    with db.session_scope() as session:
        update_guild_settings(session, GUILD, train_cooldown_seconds=0, max_queued_jobs_per_user=5)
    return service_db


@pytest.fixture
def redis_backend(env):
    """worker.app with the real Redis as its result backend (a database of its own, emptied before)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        pytest.skip(f"no Redis at {REDIS_URL}")
    for key in client.scan_iter("celery-task-meta-*"):
        client.delete(key)
    with configured({"IMPROBABLE_BROKER_URL": REDIS_URL}, celery=True):
        from worker.app import app

        yield app, client


def _generation(session, slug: str, guild: int | None, **fields):
    persona = get_persona(session, slug, guild) or get_persona(session, slug, None)
    return record_generation(session, persona, **fields)


def _user_world(env) -> dict:
    """USER uploads a persona (trained: a checkpoint in storage), asks for texts, is quoted by an ambient
    reply, makes a schedule and files a report; OTHER has a text of their own."""
    created = service.personas.create_persona(MANAGER, "zebra", _varied(MARK), "zebra.txt")
    storage = db.open_storage()
    tasks = {"mine": str(uuid.uuid4()), "quote": str(uuid.uuid4()), "other": str(uuid.uuid4())}
    with db.session_scope() as session:
        persona = get_persona(session, created.persona_slug, GUILD)
        key = f"checkpoints/zebra/{created.run_id}/best.safetensors"
        storage.put(key, MARK.encode() * 10)
        add_checkpoint(session, persona, key, run=session.get(db.TrainingRun, created.run_id), activate=True)
        mine = _generation(session, "alice", None, prompt=f"{MARK} prompt", output=" went on", user_id=USER,
                           guild_id=GUILD, request_id=tasks["mine"])
        _generation(session, "alice", None, prompt=f"{MARK} said hello", output=" back", guild_id=GUILD,
                    request_id=tasks["quote"])
        other = _generation(session, "alice", None, prompt="their own", output=" text", user_id=OTHER,
                            guild_id=GUILD, request_id=tasks["other"])
        quote_id = session.query(db.Generation).filter_by(request_id=tasks["quote"]).one().id
        session.add(db.Schedule(guild_id=GUILD, channel_id=5, persona_id=persona.id, prompt=f"{MARK} daily",
                                interval_seconds=3600, created_by=USER))
        ids = {"mine": mine.id, "other": other.id, "quote": quote_id, "persona": persona.id}
    service.privacy.note_quote(ids["quote"], USER)
    service.operator.file_report(Actor(USER, GUILD, 5), str(ids["other"]), f"{MARK} offensive")
    return {**ids, "tasks": tasks}


def _all_sql_values() -> list[object]:
    values = []
    with db.session_scope() as session:
        for table in db.Base.metadata.sorted_tables:
            for row in session.execute(table.select()):
                values += list(row)
    return values


def _mentions_user(value: object) -> bool:
    text = json.dumps(value, default=str) if isinstance(value, dict | list) else str(value)
    return value == USER or str(USER) in text or MARK in text


def test_export_then_delete_leaves_nothing_of_the_user(env, redis_backend):
    app, client = redis_backend
    world = _user_world(env)
    for name, task_id in world["tasks"].items():
        user = OTHER if name == "other" else (USER if name == "mine" else None)
        app.backend.store_result(task_id, {"text": f"{MARK} went on" if user == USER else "x", "user_id": user},
                                 "SUCCESS")
    failed = str(uuid.uuid4())  # a failed job of theirs: no row, only the request in its stored result
    client.set(f"celery-task-meta-{failed}", json.dumps({"status": "FAILURE", "result": {"exc_message": "x"},
                                                         "args": [{"user_id": USER, "prompt": MARK}]}))

    shown = service.privacy.summary(USER)
    assert (shown.generations, shown.ambient_quotes, shown.uploads, shown.schedules, shown.reports) == (1, 1, 1, 1, 1)
    exported = service.privacy.export(USER)
    assert [g["prompt"] for g in exported["generations"]] == [f"{MARK} prompt"]
    assert [g["prompt"] for g in exported["ambient_quotes"]] == [f"{MARK} said hello"]
    assert exported["uploads"][0]["filename"] == "zebra.txt" and exported["uploads"][0]["personas"] == ["zebra"]
    assert exported["schedules"][0]["prompt"] == f"{MARK} daily" and exported["reports"][0]["reason"].startswith(MARK)
    assert json.loads(json.dumps(exported)) == exported  # plain JSON

    deleted = service.privacy.delete_user_data(USER)
    from worker.app import forget_results

    forget_results(deleted.task_ids, user_id=USER)
    assert deleted.retired == ["zebra"] and deleted.generations == 2 and deleted.uploads == 1

    assert not [v for v in _all_sql_values() if _mentions_user(v)]
    files = [p for p in (env / "storage").rglob("*") if p.is_file()]
    assert not [p for p in files if MARK.encode() in p.read_bytes()], files
    redis_values = [client.get(k) for k in client.scan_iter("celery-task-meta-*")]
    assert not [v for v in redis_values if str(USER).encode() in v or MARK.encode() in v]
    assert client.exists(f"celery-task-meta-{world['tasks']['other']}")  # another user's result stays
    assert service.privacy.summary(USER).empty
    with db.session_scope() as session:
        persona = session.get(db.Persona, world["persona"])
        assert persona is not None and persona.active_checkpoint_id is None and not persona.checkpoints
        assert session.get(db.Generation, world["other"]) is not None


def test_retention_sweep_under_an_injected_clock(env):
    with db.session_scope() as session:
        old = _generation(session, "alice", None, prompt="old", output="x", user_id=OTHER)
        new = _generation(session, "alice", None, prompt="new", output="y", user_id=OTHER, request_id="t-new")
        old.created_at, new.created_at = T0 - timedelta(days=31), T0 - timedelta(days=29)
        old.request_id = "t-old"
        ids = old.id, new.id
    result = sweep(T0, retention_days=30, grace_days=7)
    assert result.generations == 1 and result.task_ids == ["t-old"]
    with db.session_scope() as session:
        assert session.get(db.Generation, ids[0]) is None and session.get(db.Generation, ids[1]) is not None
    assert sweep(T0 + timedelta(days=2), retention_days=30).generations == 1


def test_a_server_the_bot_left_is_purged_after_the_grace_period(env):
    service.personas.create_persona(MANAGER, "zebra", _varied("Some text"), "zebra.txt")
    with db.session_scope() as session:
        _generation(session, "alice", None, prompt="here", output="x", user_id=OTHER, guild_id=GUILD)
    storage = db.open_storage()
    assert storage.keys("corpora/")

    service.operator.guild_left(GUILD, "Test", now=T0)
    assert sweep(T0 + timedelta(days=6), grace_days=7).guilds == []
    service.operator.guild_joined(GUILD)  # back within the grace period: nothing is purged
    assert sweep(T0 + timedelta(days=30), retention_days=10_000, grace_days=7).guilds == []

    service.operator.guild_left(GUILD, "Test", now=T0)
    assert sweep(T0 + timedelta(days=8), retention_days=10_000, grace_days=7).guilds == [GUILD]
    with db.session_scope() as session:
        assert get_persona(session, "zebra", GUILD) is None
        assert not session.query(db.Generation).filter_by(guild_id=GUILD).count()
        assert not session.query(db.TrainingRun).filter_by(guild_id=GUILD).count()
    assert not storage.keys("corpora/")
    assert sweep(T0 + timedelta(days=9), retention_days=10_000, grace_days=7).guilds == []  # once


def test_reports_reach_the_operator_and_disabled_personas_are_refused(env):
    with db.session_scope() as session:
        gen = _generation(session, "alice", None, prompt="Alice", output=" was rude", user_id=OTHER, guild_id=GUILD)
        gen_id = gen.id
    report_id = service.operator.file_report(Actor(USER, GUILD, 5), str(gen_id), "rude")
    with pytest.raises(NotAllowed):
        service.operator.reports(MANAGER)
    [report] = service.operator.reports(OPERATOR)
    assert (report.id, report.text, report.reason, report.persona, report.guild_id) == \
        (report_id, "Alice was rude", "rude", "alice", GUILD)
    with pytest.raises(TextGone):  # another server's text is not reported from here
        service.operator.file_report(Actor(USER, OTHER_GUILD, 5), str(gen_id), "rude")
    servers = {s.guild_id: s for s in service.operator.servers(OPERATOR, {GUILD: "Test"})}
    assert servers[GUILD].open_reports == 1 and servers[GUILD].jobs == 1 and servers[GUILD].name == "Test"

    with pytest.raises(NotAllowed):
        service.operator.set_persona_disabled(MANAGER, "alice", GUILD, True)
    service.operator.set_persona_disabled(OPERATOR, "alice", None, True)  # a built-in
    with pytest.raises(PersonaDisabled, match="disabled by the bot's operator"):
        service.generation.prepare_generation("alice", "Hi", MANAGER)
    service.operator.set_persona_disabled(OPERATOR, "alice", None, False)
    with pytest.raises(Exception) as refused:
        service.generation.prepare_generation("alice", "Hi", MANAGER)
    assert not isinstance(refused.value, PersonaDisabled)  # enabled again (it has no model in this database)


def test_blocking_a_server_purges_it(env):
    service.personas.create_persona(MANAGER, "zebra", _varied("Some text"), "zebra.txt")
    assert not service.operator.is_blocked(GUILD)
    purged = service.operator.block_server(OPERATOR, GUILD)
    assert purged.personas == 1 and service.operator.is_blocked(GUILD)
    assert GUILD in service.operator.blocked_guilds()
    assert service.operator.guild_joined(GUILD) is False  # added back: the bot leaves again
    with db.session_scope() as session:
        assert get_persona(session, "zebra", GUILD) is None
    assert service.operator.unblock_server(OPERATOR, GUILD) and service.operator.guild_joined(GUILD)
