"""Issue 11 in the service: "More improbable" (lower target, new seed, the floor said), uploads of several
files as one corpus of several documents, and attaching a checkpoint trained on the command line."""

from __future__ import annotations

import pytest

import db
import service.generation
import service.personas
from db.bundled import bundled_checkpoints
from db.generations import record_generation
from db.ingest import read_corpus
from db.personas import get_persona
from service.policy import UserError

from .test_service import MANAGER, MEMBER, TEXT, _activate, env  # noqa: F401 - fixtures

pytestmark = pytest.mark.usefixtures("env")  # every test on a fresh copy of a migrated database
OTHER = ("The Queen of Hearts, she made some tarts, all on a summer day. " * 20).encode()


def _generation(params: dict) -> int:
    with db.session_scope() as session:
        ckpt = get_persona(session, "alice", None).active_checkpoint_id
    ckpt = ckpt or _activate()
    with db.session_scope() as session:
        persona = get_persona(session, "alice", None)
        return record_generation(session, persona, prompt="Alice was", output=" tired.", checkpoint=ckpt,
                                 params=params, seed=params.get("seed"), guild_id=MEMBER.guild_id).id


def test_more_improbable_lowers_the_target_and_changes_the_seed():
    gid = _generation({"temperature": 0.8, "seed": 5, "improbability": 0.05})
    seeds, targets = set(), set()
    for _ in range(5):
        more = service.generation.follow_up(gid, "improbable", MEMBER)
        seeds.add(more.params["seed"])
        targets.add(more.params["improbability"])
    assert targets == {0.01} and len(seeds) == 5 and 5 not in seeds
    assert "from 0.05 to 0.01" in more.note
    floor = service.generation.follow_up(_generation({"seed": 1, "improbability": 1e-4}), "improbable", MEMBER)
    assert floor.params["improbability"] == 1e-4 and floor.params["seed"] != 1
    assert "lowest" in floor.note and "0.0001" in floor.note


def test_regenerate_uses_a_new_seed():
    gid = _generation({"temperature": 0.8, "seed": 5})
    seeds = {service.generation.follow_up(gid, "regenerate", MEMBER).params["seed"] for _ in range(4)}
    assert 5 not in seeds and len(seeds) == 4


def test_several_files_become_one_corpus_of_documents():
    new = service.personas.create_persona(MANAGER, "poets", TEXT, "alice.txt", more=[(OTHER, "queen.txt")])
    with db.session_scope() as session:
        run = session.get(db.TrainingRun, new.run_id)
        corpus = run.corpus
        assert corpus.filename == "alice.txt (+1 more)"
        assert corpus.stats["document_names"] == ["alice.txt", "queen.txt"]
        decoded = read_corpus(corpus, db.open_storage())
    first, second = decoded.document_texts()
    assert first.strip() == TEXT.decode().strip() and second.strip() == OTHER.decode().strip()
    assert decoded.sha256 == corpus.sha256


def test_several_files_are_checked_one_by_one_and_together():
    with pytest.raises(UserError, match="queen.pdf"):
        service.personas.create_persona(MANAGER, "poets", TEXT, "alice.txt", more=[(OTHER, "queen.pdf")])
    with pytest.raises(UserError, match="empty.txt"):
        service.personas.create_persona(MANAGER, "poets", TEXT, "alice.txt", more=[(b"", "empty.txt")])
    with pytest.raises(UserError, match="2 files are together"):  # the guild's cap is 100 KB
        service.personas.create_persona(MANAGER, "poets", TEXT * 40, "a.txt", more=[(OTHER * 40, "b.txt")])


def test_retrain_with_several_files():
    new = service.personas.retrain(MANAGER, "harry-potter", TEXT, "book1.txt", 0.1, [(OTHER, "book2.txt")])
    with db.session_scope() as session:
        run = session.get(db.TrainingRun, new.run_id)
        assert run.corpus.stats["documents"] and len(run.corpus.stats["documents"]) == 2


def test_attach_checks_the_family_and_activates():
    trump = bundled_checkpoints()["trump"].read_bytes()  # a real char-rnn checkpoint
    with pytest.raises(UserError, match="char-rnn model, but harry-potter is a word-mlp persona"):
        service.personas.attach_checkpoint("harry-potter", trump, "best.safetensors")
    with pytest.raises(UserError, match="best.safetensors"):
        service.personas.attach_checkpoint("alice", b"hello" * 10, "best.safetensors")
    attached = service.personas.attach_checkpoint("alice", trump, "trump.safetensors")
    assert attached.family == "char-rnn" and attached.val_loss is not None
    with db.session_scope() as session:
        persona = get_persona(session, "alice", None)
        assert persona.active_checkpoint_id == attached.checkpoint_id
        ckpt = persona.active_checkpoint
        assert db.open_storage().get(ckpt.storage_key) == trump
        assert ckpt.run.status.value == "succeeded" and ckpt.run.metrics["attached"] == "trump.safetensors"
    request = service.generation.prepare_generation("alice", "Alice", MEMBER)
    assert request.payload["checkpoint_id"] == attached.checkpoint_id
