"""The command logic shared by Discord and the console (service/), on a real migrated SQLite file."""

from __future__ import annotations

import random

import pytest

import db
import service.generation
import service.personas
import service.policy
import service.schedules
import service.training
from core.text import originality
from db.checkpoints import add_checkpoint
from db.generations import record_generation
from db.guilds import update_guild_settings
from db.personas import get_persona
from service.errors import Code, NeedsOwnCopy, NoModelYet, TooManyRuns, TrainCooldown, UnknownPersona
from service.policy import Actor, NotAllowed, UserError

GUILD = 111
TRAINER_ROLE = 999
MANAGER = Actor(1, GUILD, 5, can_manage=True)
MEMBER = Actor(2, GUILD, 5)
TRAINER = Actor(3, GUILD, 5, role_ids=frozenset({TRAINER_ROLE}))
# an upload must have settings.train_min_distinct_bytes of distinct text: 6 KB of sentences that never repeat
_WORDS = ("Alice was beginning to get very tired of sitting by her sister on the bank and of having nothing "
          "to do once or twice she had peeped into the book but it had no pictures or conversations in it").split()
_rng = random.Random(29)
TEXT = "\n".join(" ".join(_rng.choice(_WORDS) for _ in range(12)).capitalize() + "." for _ in range(100)).encode()


@pytest.fixture
def env(service_db):
    """A fresh copy of a migrated, seeded database (tests/service/conftest.py), GUILD's limits set for the tests."""
    with db.session_scope() as session:
        update_guild_settings(session, GUILD, trainer_role_id=TRAINER_ROLE, train_cooldown_seconds=0,
                              max_queued_jobs_per_user=1, max_upload_bytes=100_000)
    return service_db


def _activate(slug: str = "alice") -> int:
    with db.session_scope() as session:
        persona = get_persona(session, slug, None)
        return add_checkpoint(session, persona, f"checkpoints/{slug}/x/best.safetensors", activate=True).id


# -- generation ------------------------------------------------------------------------------------------

def test_generate_request_resolves_the_active_checkpoint(env):
    ckpt = _activate()
    request = service.generation.prepare_generation("Alice", "Once", MEMBER, {"temperature": 0.5, "max_tokens": None})
    p = request.payload
    assert p["checkpoint_id"] == ckpt and p["persona"] == "alice" and p["prompt"] == "Once"
    assert p["params"]["temperature"] == 0.5 and p["params"]["max_tokens"] == 500  # the persona's default
    assert p["params"].get("top_k", 0) == 0  # the char personas sample without top-k (0 = off)
    assert isinstance(p["params"]["seed"], int) and p["guild_id"] == GUILD and p["user_id"] == MEMBER.user_id


def test_unknown_persona_suggests_close_names(env):
    with pytest.raises(UnknownPersona) as refused:
        service.generation.prepare_generation("alcie", "", MEMBER)
    assert refused.value.name == "alcie" and refused.value.suggestions == ("alice",)
    assert refused.value.message == "There is no persona called alcie. Did you mean alice?"
    assert refused.value.render(lambda v: f"[{v}]" if isinstance(v, Code) else str(v)) == \
        "There is no persona called [alcie]. Did you mean [alice]?"


def test_persona_without_a_model_says_how_to_get_one(env):
    with pytest.raises(NoModelYet, match="Upload your own copy") as refused:
        service.generation.prepare_generation("harry-potter", "", MEMBER)
    assert refused.value.persona == "harry-potter" and refused.value.own_copy  # db.bundled.OWN_COPY_ONLY
    with pytest.raises(NoModelYet, match="improbable train --recipe trump") as refused:
        service.generation.prepare_generation("trump", "", MEMBER)
    assert refused.value.recipe == "trump" and not refused.value.own_copy


@pytest.mark.parametrize("params, message", [({"temperature": -1}, "temperature"), ({"top_p": 0}, "top-p"),
                                             ({"improbability": 2}, "improbability"), ({"max_tokens": 0}, "length")])
def test_out_of_range_parameters_are_refused(env, params, message):
    _activate()
    with pytest.raises(UserError, match=message):
        service.generation.prepare_generation("alice", "", MEMBER, params)


def test_follow_ups_keep_or_change_the_parameters(env):
    ckpt = _activate()
    with db.session_scope() as session:
        persona = get_persona(session, "alice", None)
        gen = record_generation(session, persona, prompt="Alice was", output=" tired.", checkpoint=ckpt,
                                params={"temperature": 0.7, "seed": 5, "improbability": 0.0}, seed=5, guild_id=GUILD)
        gid = gen.id
    regen = service.generation.follow_up(gid, "regenerate", MEMBER)
    assert regen.payload["prompt"] == "Alice was" and regen.params["temperature"] == 0.7
    assert regen.payload["parent_generation_id"] == gid
    more = service.generation.follow_up(gid, "improbable", MEMBER)
    assert more.params["improbability"] == 0.1 and more.params["seed"] != 5  # a new seed: never the same text
    assert "target 0.1" in more.note
    cont = service.generation.follow_up(gid, "continue", MEMBER, "And then")
    assert cont.payload["prompt"] == "Alice was tired.\nAnd then"
    with pytest.raises(UserError):
        service.generation.follow_up(10**6, "regenerate", MEMBER)


def test_more_improbable_goes_down_by_fifths():
    assert service.generation.lower_improbability(0) == 0.1
    assert service.generation.lower_improbability(None) == 0.1
    assert service.generation.lower_improbability(0.1) == 0.02
    assert service.generation.lower_improbability(0.02) == 0.004
    assert service.generation.lower_improbability(0.0003) == 1e-4
    assert service.generation.lower_improbability(1e-4) == 1e-4


def test_join_text_by_family():
    assert service.generation.join_text("Alice", " was", "char-rnn") == "Alice was"
    assert service.generation.join_text("the movie", "was good", "word-gru") == "the movie was good"
    assert service.generation.join_text("the movie", ", sadly", "word-gru") == "the movie, sadly"


def test_parse_chat(env):
    assert service.generation.parse_chat("trump: make the wall", GUILD) == ("trump", "make the wall")
    assert service.generation.parse_chat("Note: not a persona", GUILD) == ("alice", "Note: not a persona")
    assert service.generation.parse_chat("just text", GUILD) == ("alice", "just text")
    with pytest.raises(UnknownPersona) as refused:
        service.generation.parse_chat("trmp: typo", GUILD)
    assert "trump" in refused.value.suggestions


# -- permissions and limits -------------------------------------------------------------------------------

def test_training_needs_manage_server_or_the_trainer_role(env):
    with pytest.raises(NotAllowed, match="Manage Server"):
        service.personas.create_persona(MEMBER, "poet", TEXT, "poet.txt")
    new = service.personas.create_persona(TRAINER, "poet", TEXT, "poet.txt", "char-rnn", "A poet", 0.5)
    view = service.training.run_status(new.run_id)
    assert view.status == "queued" and view.position == 1 and view.persona_slug == "poet"
    with db.session_scope() as session:
        persona = get_persona(session, "poet", GUILD)
        assert persona.recipe == "alice" and persona.guild_id == GUILD and persona.description == "A poet"
        assert persona.corpora[0].filename == "poet.txt"
    assert get_persona_or_none("poet", None) is None  # a guild's persona is not visible elsewhere


def get_persona_or_none(slug, guild):
    with db.session_scope() as session:
        return get_persona(session, slug, guild)


def test_queued_runs_per_user_and_cooldown(env):
    service.personas.create_persona(TRAINER, "one", TEXT, "one.txt")
    with pytest.raises(TooManyRuns, match="already have 1 training run") as refused:
        service.personas.create_persona(TRAINER, "two", TEXT, "two.txt")
    assert (refused.value.count, refused.value.limit) == (1, 1)
    service.training.cancel_training(TRAINER)
    with db.session_scope() as session:
        update_guild_settings(session, GUILD, train_cooldown_seconds=600)
    with pytest.raises(TrainCooldown, match="another training run in ") as refused:
        service.personas.create_persona(TRAINER, "two", TEXT, "two.txt")
    assert refused.value.ready_at is not None  # the bot shows it as a Discord timestamp
    assert "<t:" in refused.value.render(lambda t: f"<t:{int(t.timestamp())}:R>" if t is refused.value.ready_at
                                         else str(t))
    service.personas.create_persona(MANAGER, "three", TEXT, "three.txt")  # managers are not cooled down


def test_bad_uploads_and_names_are_explained(env):
    with pytest.raises(UserError, match="limit here is 0.1 MB"):
        service.personas.create_persona(MANAGER, "big", b"x" * 200_000, "big.txt")
    with pytest.raises(UserError, match="cannot be used"):
        service.personas.create_persona(MANAGER, "bin", b"\x89PNG\r\n\x1a\n" + b"\0" * 500, "bin.txt")
    with pytest.raises(UserError, match="not a valid persona name"):
        service.personas.create_persona(MANAGER, "Bad Name!", TEXT, "a.txt")
    with pytest.raises(UserError, match="already taken"):
        service.personas.create_persona(MANAGER, "alice", TEXT, "a.txt")


def test_cancel_is_for_the_requester_or_trainers(env):
    new = service.personas.create_persona(TRAINER, "poet", TEXT, "poet.txt")
    with pytest.raises(NotAllowed):
        service.training.cancel_training(MEMBER, new.run_id)
    assert service.training.cancel_training(MANAGER, new.run_id).status == "cancelled"
    with pytest.raises(UserError, match="already cancelled"):
        service.training.cancel_training(TRAINER, new.run_id)


def test_abandoned_run_removes_the_new_persona(env):
    new = service.personas.create_persona(MANAGER, "poet", TEXT, "poet.txt")
    service.training.abandon_run(new.run_id, delete_persona=True)
    assert get_persona_or_none("poet", GUILD) is None


def test_delete_only_own_personas(env):
    with pytest.raises(UserError, match="built-in"):
        service.personas.delete_persona(MANAGER, "alice")
    service.personas.create_persona(MANAGER, "poet", TEXT, "poet.txt")
    with pytest.raises(NotAllowed):
        service.personas.delete_persona(MEMBER, "poet")
    assert service.personas.delete_persona(MANAGER, "poet") == "poet"
    assert get_persona_or_none("poet", GUILD) is None


def test_retrain_reuses_the_corpus_and_refuses_while_training(env):
    new = service.personas.create_persona(MANAGER, "poet", TEXT, "poet.txt", minutes=1)
    with pytest.raises(UserError, match="already training"):
        service.personas.retrain(MANAGER, "poet")
    service.training.cancel_training(MANAGER, new.run_id)
    with pytest.raises(UserError, match="no text to train on"):  # the cancelled upload went with its run
        service.personas.retrain(MANAGER, "poet")
    first = service.personas.retrain(MANAGER, "poet", TEXT, "poet2.txt", minutes=2)
    with db.session_scope() as session:
        db.runs.fail_run(session, db.runs.start_run(session, first.run_id), "boom")
    with pytest.raises(UserError, match="no text to train on"):  # so did the failed one
        service.personas.retrain(MANAGER, "poet")
    third = service.personas.retrain(MANAGER, "poet", TEXT, "poet3.txt")
    with db.session_scope() as session:
        db.runs.succeed_run(session, db.runs.start_run(session, third.run_id))
    again = service.personas.retrain(MANAGER, "poet", minutes=2)  # an upload a run succeeded on is kept
    with db.session_scope() as session:
        run = session.get(db.TrainingRun, again.run_id)
        assert run.corpus is not None and run.corpus.filename == "poet3.txt" and run.config == {"minutes": 2.0}
    with pytest.raises(NeedsOwnCopy, match="copyrighted") as refused:
        service.personas.retrain(Actor(9, GUILD, can_manage=True), "harry-potter")
    assert refused.value.display_name == "Harry Potter"


# -- schedules --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("1 d", 86400),
                                           ("90s", 90), ("1w", 604800)])
def test_intervals(text, seconds):
    assert service.schedules.parse_interval(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "10", "30s", "5x", "1h and 2m"])
def test_bad_intervals(text):
    with pytest.raises(UserError):
        service.schedules.parse_interval(text)


def test_cron_expressions():
    assert service.schedules.check_cron(" 0 9  * * 1-5 ") == "0 9 * * 1-5"
    for bad in ("* * *", "61 * * * *", "a b c d e"):
        with pytest.raises(UserError):
            service.schedules.check_cron(bad)


def test_schedules_add_list_remove(env):
    with pytest.raises(NotAllowed):
        service.schedules.add_schedule(MEMBER, "alice", 42, every="1h")
    with pytest.raises(UserError, match="exactly one"):
        service.schedules.add_schedule(MANAGER, "alice", 42, every="1h", cron="0 * * * *")
    a = service.schedules.add_schedule(MANAGER, "alice", 42, every="1h", prompt="Once")
    b = service.schedules.add_schedule(TRAINER, "trump", 43, cron="0 9 * * *")
    assert (a.interval_seconds, a.cron) == (3600, None) and (b.interval_seconds, b.cron) == (None, "0 9 * * *")
    assert [s.id for s in service.schedules.list_schedules(GUILD)] == [a.id, b.id]
    assert service.schedules.list_schedules(GUILD + 1) == []
    with pytest.raises(UserError):
        service.schedules.remove_schedule(Actor(1, GUILD + 1, can_manage=True), a.id)
    assert service.schedules.remove_schedule(MANAGER, a.id).persona_slug == "alice"
    assert [s.id for s in service.schedules.list_schedules(GUILD)] == [b.id]


def test_policy_defaults_and_guild_values(env):
    assert service.policy.policy(None) == service.policy.Policy()
    pol = service.policy.policy(GUILD)
    assert pol.trainer_role_id == TRAINER_ROLE and pol.max_upload_bytes == 100_000
    assert service.policy.may_train(TRAINER, pol) and not service.policy.may_train(MEMBER, pol)


def test_guild_settings_need_manage_server(env):
    with pytest.raises(NotAllowed):
        service.policy.update_policy(TRAINER, cooldown_seconds=5)
    with pytest.raises(UserError, match="max jobs"):
        service.policy.update_policy(MANAGER, max_queued_jobs=0)
    pol = service.policy.update_policy(MANAGER, cooldown_seconds=5, max_upload_mb=2.5, trainer_role_id=4242)
    assert (pol.cooldown_seconds, pol.max_upload_bytes, pol.trainer_role_id) == (5, 2_500_000, 4242)
    assert service.policy.update_policy(MANAGER, clear_trainer_role=True).trainer_role_id is None
    assert service.policy.policy(GUILD).cooldown_seconds == 5  # untouched values stay
    assert service.policy.policy(GUILD).trainer_role_id is None


def test_persona_listing_and_info(env):
    _activate()
    service.personas.create_persona(MANAGER, "poet", TEXT, "poet.txt")
    rows = {p.slug: p for p in service.personas.list_personas(GUILD)}
    assert rows["alice"].ready and rows["alice"].scope == "built-in"
    assert rows["poet"].training and rows["poet"].scope == "this server" and not rows["poet"].ready
    assert "poet" not in {p.slug for p in service.personas.list_personas(None)}
    info = service.personas.persona_info("poet", GUILD)
    assert info.corpora[0]["n_chars"] > 1000 and info.checkpoint_id is None and info.active_run
    assert originality("abcdefghijklmnopqrstuvwxyz", "xx abcdefghijklmnopqrst yy") == pytest.approx(6 / 7)

