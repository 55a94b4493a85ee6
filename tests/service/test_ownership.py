"""Every server's personas and data are its own: a built-in retrained from a server becomes that server's copy,
uploads keep their own rows, a lookup by id of another server's row is answered as a missing one, and deleting
a persona leaves nothing of it in storage. On a real migrated SQLite file (as tests/service/test_service.py)."""

from __future__ import annotations

import pytest
from sqlalchemy import insert, select, text

import db
import service.controls
import service.generation
import service.personas
import service.schedules
import service.training
from core.settings import get_settings
from db.checkpoints import add_checkpoint
from db.generations import record_generation
from db.guilds import update_guild_settings
from db.personas import get_persona
from db.runs import start_run
from service.errors import TextGone, UserError
from service.policy import Actor

GUILD, OTHER = 111, 222
MANAGER = Actor(1, GUILD, 5, can_manage=True)
MEMBER = Actor(2, GUILD, 5)
OTHER_MANAGER = Actor(3, OTHER, 6, can_manage=True)
OTHER_MEMBER = Actor(4, OTHER, 6)
CONSOLE = Actor(None, can_manage=True, operator=True)
CORPORA = get_settings().corpus_dirs


def _text(relative: str, n_chars: int) -> bytes:
    """Real text (uploads must hold enough distinct text to learn from): the head of a shared corpus."""
    for folder in CORPORA:
        if (folder / relative).is_file():
            return (folder / relative).read_text(encoding="utf-8")[:n_chars].encode()
    pytest.skip(f"shared corpus {relative} not found", allow_module_level=True)


TEXT = _text("alice/alice.txt", 20_000)
OTHER_TEXT = _text("trump/speeches.txt", 20_000)


@pytest.fixture
def env(service_db):
    with db.session_scope() as session:
        for guild in (GUILD, OTHER):
            update_guild_settings(session, guild, train_cooldown_seconds=0, max_queued_jobs_per_user=5,
                                  max_upload_bytes=100_000)
    return service_db


def _activate_builtin(slug: str = "alice") -> int:
    """The built-in's active model: a small blob in storage and its checkpoint row."""
    key = f"checkpoints/{slug}/bundled/best.safetensors"
    db.open_storage().put(key, b"model bytes of " + slug.encode())
    with db.session_scope() as session:
        return add_checkpoint(session, get_persona(session, slug, None), key, name="bundled", val_loss=1.5,
                              activate=True).id


def _active(slug: str, guild: int | None) -> tuple[int, int | None, int | None]:
    """(persona id, its guild, its active checkpoint) as `slug` resolves in `guild`."""
    with db.session_scope() as session:
        persona = get_persona(session, slug, guild)
        return persona.id, persona.guild_id, persona.active_checkpoint_id


def _finish(run_id: int) -> None:
    with db.session_scope() as session:
        db.runs.succeed_run(session, start_run(session, run_id))


# -- built-ins and a server's own copy ---------------------------------------------------------------------

def test_a_second_server_retraining_a_builtin_gets_its_own_copy(env):
    builtin_ckpt = _activate_builtin()
    before = _active("alice", GUILD)
    new = service.personas.retrain(OTHER_MANAGER, "alice", TEXT, "wonderland.txt")
    _finish(new.run_id)
    assert _active("alice", GUILD) == before == _active("alice", None)  # server 1 and the built-in unchanged
    copy_id, copy_guild, copy_ckpt = _active("alice", OTHER)
    assert copy_guild == OTHER and copy_id != before[0]
    assert copy_ckpt is not None and copy_ckpt != builtin_ckpt  # the built-in's model, copied as its own
    with db.session_scope() as session:
        run = session.get(db.TrainingRun, new.run_id)
        assert run.persona_id == copy_id and run.guild_id == OTHER and run.corpus.guild_id == OTHER
        copied = session.get(db.Checkpoint, copy_ckpt)
        assert db.open_storage().get(copied.storage_key) == b"model bytes of alice"
    # every lookup in server 2 finds its copy; server 1 the built-in
    assert service.generation.prepare_generation("alice", "", OTHER_MEMBER).payload["checkpoint_id"] == copy_ckpt
    assert service.generation.prepare_generation("alice", "", MEMBER).payload["checkpoint_id"] == builtin_ckpt
    assert [p.scope for p in service.personas.list_personas(OTHER) if p.slug == "alice"] == ["this server's copy"]
    assert [p.scope for p in service.personas.list_personas(GUILD) if p.slug == "alice"] == ["built-in"]
    info_1 = service.personas.persona_info("alice", MEMBER)
    info_2 = service.personas.persona_info("alice", OTHER_MEMBER)
    assert info_1.checkpoint_id == builtin_ckpt and info_1.corpora == []
    assert [c["filename"] for c in info_2.corpora] == ["wonderland.txt"]
    # a plain retrain of the copy trains on the copy's own upload
    again = service.personas.retrain(OTHER_MANAGER, "alice")
    with db.session_scope() as session:
        assert session.get(db.TrainingRun, again.run_id).persona_id == copy_id
    service.training.cancel_training(OTHER_MANAGER, again.run_id)
    # deleting the copy brings back the built-in there
    assert service.personas.delete_persona(OTHER_MANAGER, "alice") == "alice"
    assert _active("alice", OTHER) == before
    with pytest.raises(UserError, match="built-in"):
        service.personas.delete_persona(OTHER_MANAGER, "alice")


def test_a_server_schedule_follows_its_copy_and_falls_back(env):
    _activate_builtin()
    sched = service.schedules.add_schedule(OTHER_MANAGER, "alice", 60, every="1h")
    new = service.personas.retrain(OTHER_MANAGER, "alice")  # the recipe's corpus, as the built-in's retrain
    with db.session_scope() as session:
        assert session.get(db.TrainingRun, new.run_id).corpus_id is None
        assert session.get(db.Schedule, sched.id).persona.guild_id == OTHER
    service.training.cancel_training(OTHER_MANAGER, new.run_id)
    service.personas.delete_persona(OTHER_MANAGER, "alice")
    with db.session_scope() as session:
        assert session.get(db.Schedule, sched.id).persona.guild_id is None  # kept, with the built-in


def test_only_the_operator_changes_a_builtin(env):
    builtin_id = _active("alice", None)[0]
    new = service.personas.retrain(CONSOLE, "alice", TEXT, "operator.txt")
    with db.session_scope() as session:
        run = session.get(db.TrainingRun, new.run_id)
        assert run.persona_id == builtin_id and run.corpus.guild_id is None
    service.training.cancel_training(CONSOLE, new.run_id)
    owner_in_a_server = Actor(9, GUILD, 5, can_manage=True, operator=True)
    new = service.personas.retrain(owner_in_a_server, "alice")
    with db.session_scope() as session:
        assert session.get(db.TrainingRun, new.run_id).persona_id == builtin_id
        assert session.scalar(select(db.Persona.id).where(db.Persona.guild_id.is_not(None))) is None  # no copy
    service.training.cancel_training(owner_in_a_server, new.run_id)
    with pytest.raises(UserError, match="only the bot's operator"):  # a DM is no server: no copy to make
        service.personas.retrain(Actor(8, None, can_manage=True), "alice")
    for actor in (MANAGER, CONSOLE, owner_in_a_server):  # built-ins are part of the deployment
        with pytest.raises(UserError, match="built-in"):
            service.personas.delete_persona(actor, "alice")


# -- uploads -------------------------------------------------------------------------------------------------

def test_identical_uploads_in_two_servers_are_each_their_own(env):
    first = service.personas.create_persona(MANAGER, "poet", TEXT, "mine.txt")
    second = service.personas.create_persona(OTHER_MANAGER, "poet", TEXT, "theirs.txt")
    assert not hasattr(second, "deduplicated") and first.warnings == second.warnings
    assert [c["filename"] for c in service.personas.persona_info("poet", MEMBER).corpora] == ["mine.txt"]
    assert [c["filename"] for c in service.personas.persona_info("poet", OTHER_MEMBER).corpora] == ["theirs.txt"]
    with db.session_scope() as session:
        rows = session.execute(select(db.Corpus.filename, db.Corpus.guild_id, db.Corpus.uploaded_by)
                               .order_by(db.Corpus.id)).all()
        assert [tuple(r) for r in rows] == [("mine.txt", GUILD, 1), ("theirs.txt", OTHER, 3)]
    assert len(db.open_storage().keys("corpora")) == 1  # the bytes are stored once


def test_a_cancelled_upload_is_detached_from_the_persona(env):
    _activate_builtin()
    first = service.personas.retrain(OTHER_MANAGER, "alice", TEXT, "kept.txt")
    _finish(first.run_id)
    cancelled = service.personas.retrain(OTHER_MANAGER, "alice", OTHER_TEXT, "cancelled.txt")
    service.training.cancel_training(OTHER_MANAGER, cancelled.run_id)
    assert [c["filename"] for c in service.personas.persona_info("alice", OTHER_MEMBER).corpora] == ["kept.txt"]
    plain = service.personas.retrain(OTHER_MANAGER, "alice")
    with db.session_scope() as session:
        assert session.get(db.TrainingRun, plain.run_id).corpus.filename == "kept.txt"


# -- ids of another server -----------------------------------------------------------------------------------

def _generation(guild: int, user: int) -> int:
    with db.session_scope() as session:
        gen = record_generation(session, get_persona(session, "alice", None), prompt="Alice", output=" ran.",
                                params={"temperature": 0.7, "probability": {"pieces": [["Alice", 0.5]]}},
                                seed=5, user_id=user, guild_id=guild)
        return gen.id


def _refusal(call) -> tuple[type, str]:
    with pytest.raises(UserError) as refused:
        call()
    return type(refused.value), refused.value.message


def test_another_servers_generation_is_answered_as_a_missing_one(env):
    _activate_builtin()
    theirs, mine = _generation(OTHER, OTHER_MEMBER.user_id), _generation(GUILD, MEMBER.user_id)
    missing = theirs + mine + 1000
    calls = {
        "info": lambda gid: service.controls.generation_info(gid, MANAGER),
        "picture": lambda gid: service.controls.picture_source(gid, MANAGER),
        "delete": lambda gid: service.controls.delete_generation(gid, MANAGER),
        "continue": lambda gid: service.generation.follow_up(gid, "continue", MEMBER),
        "regenerate": lambda gid: service.generation.follow_up(gid, "regenerate", MEMBER),
    }
    for name, call in calls.items():
        refused, unknown = _refusal(lambda c=call: c(theirs)), _refusal(lambda c=call: c(missing))
        assert refused[0] is unknown[0] is TextGone, name
        assert refused[1] == unknown[1].replace(str(missing), str(theirs)), name
    with db.session_scope() as session:
        assert session.get(db.Generation, theirs).deleted_at is None
    assert service.controls.generation_info(mine, MEMBER).slug == "alice"  # its own server's works
    assert service.controls.picture_source(mine, MEMBER)["pieces"]
    with pytest.raises(TextGone):  # a DM member does not reach a server's text either
        service.controls.generation_info(mine, Actor(MEMBER.user_id))


def test_another_servers_run_and_schedule_are_answered_as_missing_ones(env):
    new = service.personas.create_persona(MANAGER, "poet", TEXT, "poet.txt")
    sched = service.schedules.add_schedule(MANAGER, "trump", 42, every="1h")
    missing = 10**6
    for call in (lambda rid: service.training.cancel_training(OTHER_MANAGER, rid),
                 lambda rid: service.training.cancel_training(Actor(MANAGER.user_id, None, can_manage=True), rid)):
        refused, unknown = _refusal(lambda c=call: c(new.run_id)), _refusal(lambda c=call: c(missing))
        assert refused[0] is unknown[0] and refused[1] == unknown[1].replace(str(missing), str(new.run_id))
    refused = _refusal(lambda: service.schedules.remove_schedule(OTHER_MANAGER, sched.id))
    unknown = _refusal(lambda: service.schedules.remove_schedule(OTHER_MANAGER, missing))
    assert refused[0] is unknown[0] and refused[1] == unknown[1].replace(str(missing), str(sched.id))
    assert service.training.training_runs(OTHER_MANAGER) == []
    with db.session_scope() as session:  # nothing changed
        run = session.get(db.TrainingRun, new.run_id)
        assert run.status is db.RunStatus.QUEUED and not run.cancel_requested
        assert session.get(db.Schedule, sched.id) is not None
    assert [s.id for s in service.schedules.list_schedules(GUILD)] == [sched.id]
    assert service.training.cancel_training(MANAGER, new.run_id).status == "cancelled"  # its own server may


# -- deleting leaves nothing -------------------------------------------------------------------------------

def _run_outputs(run_id: int, slug: str) -> None:
    """What a trainer leaves of a run: checkpoints (best, last, running-best), the loss curve, a run folder."""
    storage = db.open_storage()
    for name in ("best", "last", "running-best"):
        storage.put(f"checkpoints/{slug}/{run_id}/{name}.safetensors", b"weights")
    storage.put(f"runs/{run_id}/loss.png", b"png")
    folder = get_settings().runs_dir / f"run-{run_id}"
    folder.mkdir(parents=True)
    (folder / "last.safetensors").write_bytes(b"weights")
    (get_settings().runs_dir / f"run-{run_id}.lock").write_text("")
    with db.session_scope() as session:
        run = session.get(db.TrainingRun, run_id)
        add_checkpoint(session, run.persona, f"checkpoints/{slug}/{run_id}/best.safetensors", run=run,
                       activate=True)


def test_deleting_a_persona_leaves_nothing_of_it(env):
    _activate_builtin()
    kept = service.personas.create_persona(OTHER_MANAGER, "poet", TEXT, "same-text.txt")  # shares one blob
    runs = [service.personas.create_persona(MANAGER, "poet", TEXT, "poet.txt")]
    _finish(runs[0].run_id)
    runs.append(service.personas.retrain(MANAGER, "poet", OTHER_TEXT, "more.txt"))
    _finish(runs[1].run_id)
    copy = service.personas.retrain(MANAGER, "alice")  # the server's copy of a built-in, with its own runs
    _finish(copy.run_id)
    for new in (*runs, copy):
        _run_outputs(new.run_id, new.persona_slug)
    storage = db.open_storage()
    with db.session_scope() as session:
        shared = session.scalar(select(db.Corpus.storage_key).where(db.Corpus.guild_id == OTHER))
    assert len(storage.keys("corpora")) == 2
    service.personas.delete_persona(MANAGER, "poet")
    service.personas.delete_persona(MANAGER, "alice")
    left = set(storage.keys())
    for new in (*runs, copy):
        assert not [k for k in left if k.startswith((f"checkpoints/{new.persona_slug}/{new.run_id}/",
                                                     f"runs/{new.run_id}/"))]
        assert not (get_settings().runs_dir / f"run-{new.run_id}").exists()
        assert not (get_settings().runs_dir / f"run-{new.run_id}.lock").exists()
    assert not [k for k in left if k.startswith("checkpoints/alice/copy-")]
    assert left == {"checkpoints/alice/bundled/best.safetensors", shared}  # server 2's upload keeps its blob
    with db.session_scope() as session:
        assert session.scalars(select(db.Corpus.filename)).all() == ["same-text.txt"]  # server 2's, untouched
        assert session.scalar(select(db.Persona.id).where(db.Persona.guild_id == GUILD)) is None
        assert session.get(db.TrainingRun, kept.run_id) is not None


# -- the migration -------------------------------------------------------------------------------------------

def test_migration_gives_each_server_its_own_row_of_a_shared_upload(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    db.upgrade(url, "0006", seed=False)  # (seeding uses today's models: rows of that revision are written by hand)
    with db.session_scope(url) as session:
        conn = session.connection()
        for slug, guild in (("alice", None), ("poet", OTHER)):
            conn.execute(text("INSERT INTO personas (slug, guild_id, display_name, description, family, recipe, "
                              "sampling, disabled, created_at, updated_at) VALUES (:s, :g, :s, '', 'char-rnn', "
                              "'alice', '{}', 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"), {"s": slug, "g": guild})
        alice = conn.execute(text("SELECT id FROM personas WHERE slug = 'alice'")).scalar()
        poet = conn.execute(text("SELECT id FROM personas WHERE slug = 'poet'")).scalar()
        conn.execute(text("INSERT INTO corpora (id, sha256, raw_sha256, storage_key, filename, encoding, n_bytes, "
                          "n_chars, n_lines, n_words, n_unique_chars, n_unique_words, stats, uploaded_by, guild_id,"
                          " created_at) VALUES (1, 'abc', 'abc', 'corpora/abc.txt', 'secret-name.txt', 'utf-8', 1,"
                          " 1, 1, 1, 1, 1, '{}', 1, :g, CURRENT_TIMESTAMP)"), {"g": GUILD})
        for pid, by in ((alice, 1), (poet, 3)):
            conn.execute(insert(db.PersonaCorpus.__table__).values(persona_id=pid, corpus_id=1, added_by=by))
        conn.execute(text("INSERT INTO training_runs (persona_id, corpus_id, config, status, progress, metrics,"
                          " cancel_requested, created_at, updated_at) VALUES (:p, 1, '{}', 'succeeded', '{}', '{}',"
                          " 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"), {"p": poet})
    db.upgrade(url)
    with db.session_scope(url) as session:
        rows = {r.id: r for r in session.scalars(select(db.Corpus))}
        links = dict(session.execute(select(db.PersonaCorpus.persona_id, db.PersonaCorpus.corpus_id)).all())
        run_corpus = session.scalar(select(db.TrainingRun.corpus_id))
    assert links[poet] == run_corpus != 1 and links[alice] != 1 and len(rows) == 2
    assert {rows[links[poet]].filename, rows[links[alice]].filename} == {"upload.txt"}
    assert (rows[links[poet]].guild_id, rows[links[poet]].uploaded_by) == (OTHER, 3)
    assert rows[links[alice]].guild_id is None and rows[links[poet]].storage_key == "corpora/abc.txt"
    db.downgrade(url, "0006")  # merges the rows of one text back into one
    with db.session_scope(url) as session:
        assert session.scalar(text("SELECT count(*) FROM corpora")) == 1
