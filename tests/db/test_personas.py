"""Persona registry: seeds, slugs, namespaces, visibility, resolution, checkpoints, deletion."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from db.checkpoints import add_checkpoint, save_checkpoint
from db.generations import record_generation
from db.ingest import ingest
from db.models import Checkpoint, Corpus, Family, Generation, Persona, PersonaCorpus, TrainingRun
from db.personas import (
    DEFAULT_PERSONAS,
    InvalidSlug,
    PersonaError,
    PersonaExists,
    UnknownPersona,
    create_persona,
    delete_persona,
    get_persona,
    link_corpus,
    resolve_persona,
    seed_defaults,
    set_active_checkpoint,
    validate_slug,
    visible_personas,
)
from db.runs import create_run
from db.session import count_rows

G1, G2 = 111111111111111111, 222222222222222222
SEEDS = {"trump": ("char-rnn", "trump"), "alice": ("char-rnn", "alice"),
         "shakespeare": ("char-rnn", "shakespeare"), "movie-reviews": ("word-gru", "movie-reviews"),
         "harry-potter": ("word-mlp", "harry-potter")}


def test_seeds_present_with_recipes_and_sampling(session):
    personas = {p.slug: p for p in visible_personas(session, None)}
    assert {slug: (p.family.value, p.recipe) for slug, p in personas.items()} == SEEDS
    for p in personas.values():
        assert p.guild_id is None and p.description and p.display_name
        assert {"temperature", "top_k", "top_p", "max_tokens"} <= set(p.sampling)
        assert p.active_checkpoint_id is None
    hp = personas["harry-potter"].description
    assert "copyright" in hp and "/persona retrain" in hp and "improbable train" in hp
    assert "IMDB" in personas["movie-reviews"].description
    assert "campaign speeches" in personas["trump"].description


def test_seeding_is_idempotent_and_keeps_edits(session):
    trump = get_persona(session, "trump", None)
    trump.description = "edited by the operator"
    session.commit()
    assert seed_defaults(session) == []
    session.delete(get_persona(session, "alice", None))
    session.commit()
    assert [p.slug for p in seed_defaults(session)] == ["alice"]
    session.commit()
    assert count_rows(session, Persona) == len(DEFAULT_PERSONAS)
    assert get_persona(session, "trump", None).description == "edited by the operator"


@pytest.mark.parametrize("slug", ["bob", "my-persona", "a", "x1", "Trump2", "  padded  ", "a" * 32])
def test_valid_slugs(slug):
    assert validate_slug(slug) == slug.strip().lower()


@pytest.mark.parametrize("slug", ["", "-bob", "bob-", "b_o_b", "bob smith", "a" * 33, "bøb", "../x", "bob!"])
def test_invalid_slugs(session, slug):
    with pytest.raises(InvalidSlug, match="not a valid persona name"):
        validate_slug(slug)
    with pytest.raises(InvalidSlug):
        create_persona(session, slug, family="char-rnn", guild_id=G1)


def test_global_and_guild_namespaces(session):
    bob1 = create_persona(session, "bob", family=Family.CHAR_RNN, guild_id=G1, created_by=42)
    bob2 = create_persona(session, "Bob", family="word-gru", guild_id=G2)  # another guild: fine
    session.commit()
    # without a recipe, each family trains with its default recipe (a real trainer/recipes file)
    assert (bob1.slug, bob2.slug, bob1.recipe, bob2.recipe) == ("bob", "bob", "alice", "movie-reviews")
    with pytest.raises(PersonaExists, match="this server"):
        create_persona(session, "bob", family="char-rnn", guild_id=G1)
    with pytest.raises(PersonaExists, match="built-in"):
        create_persona(session, "trump", family="char-rnn", guild_id=G1)
    with pytest.raises(PersonaExists, match="built-in"):
        create_persona(session, "trump", family="char-rnn")
    with pytest.raises(PersonaExists, match="in server"):
        create_persona(session, "bob", family="char-rnn")  # a global would shadow the guilds' bobs
    with pytest.raises(ValueError):
        create_persona(session, "carol", family="transformer", guild_id=G1)


@pytest.mark.parametrize("guild", [None, G1])
def test_database_enforces_unique_slugs(session, guild):
    """Even without the registry's checks (a concurrent creator), the constraints hold on both databases."""
    session.add(Persona(slug="dup", guild_id=guild, display_name="x", family=Family.CHAR_RNN, recipe="r"))
    session.commit()
    session.add(Persona(slug="dup", guild_id=guild, display_name="y", family=Family.CHAR_RNN, recipe="r"))
    with pytest.raises(IntegrityError):
        session.commit()
    session.rollback()


def test_guild_personas_visible_only_in_their_guild(session):
    create_persona(session, "bob", family="char-rnn", guild_id=G1)
    create_persona(session, "carol", family="char-rnn", guild_id=G2)
    session.commit()
    in_g1 = [p.slug for p in visible_personas(session, G1)]
    assert "bob" in in_g1 and "carol" not in in_g1 and "trump" in in_g1
    assert in_g1 == sorted(in_g1)
    assert [p.slug for p in visible_personas(session, None)] == sorted(SEEDS)
    assert get_persona(session, "carol", G1) is None
    assert get_persona(session, "carol", None) is None
    assert get_persona(session, "CAROL", G2).guild_id == G2


def test_resolve_unknown_suggests_close_visible_names(session):
    create_persona(session, "trumpet", family="char-rnn", guild_id=G2)
    session.commit()
    with pytest.raises(UnknownPersona) as info:
        resolve_persona(session, "trunp", G1)
    assert info.value.suggestions == ["trump"]  # G2's trumpet is not visible in G1
    assert "`trunp`" in info.value.message and "Did you mean `trump`?" in info.value.message
    assert info.value.code == "unknown"
    with pytest.raises(UnknownPersona) as info:
        resolve_persona(session, "trunp", G2)
    assert set(info.value.suggestions) == {"trump", "trumpet"}
    with pytest.raises(UnknownPersona) as info:
        resolve_persona(session, "zzzzzz", G1)
    assert info.value.suggestions == [] and "Did you mean" not in info.value.message


def test_resolve_returns_the_active_checkpoint(session):
    trump, ckpt = resolve_persona(session, "trump", G1)
    assert trump.slug == "trump" and ckpt is None
    run = create_run(session, trump)
    first = add_checkpoint(session, trump, "checkpoints/trump/1/best.safetensors", run=run, val_loss=1.5,
                           activate=True)
    add_checkpoint(session, trump, "checkpoints/trump/1/last.safetensors", run=run, name="last")
    session.commit()
    assert resolve_persona(session, "trump", G1)[1].id == first.id
    second = add_checkpoint(session, trump, "checkpoints/trump/2/best.safetensors", val_loss=1.2)
    set_active_checkpoint(session, trump, second)
    session.commit()
    session.expire_all()
    _, ckpt = resolve_persona(session, "trump", None)
    assert ckpt.id == second.id and ckpt.family is Family.CHAR_RNN and ckpt.val_loss == 1.2

    alice = get_persona(session, "alice", None)
    with pytest.raises(PersonaError, match="another persona"):
        set_active_checkpoint(session, alice, second)

    session.delete(second)  # the foreign key clears the active checkpoint
    session.commit()
    session.expire_all()
    assert resolve_persona(session, "trump", None)[1] is None


def test_delete_persona_removes_only_what_it_alone_referenced(session, storage, alice_text):
    shared = ingest(alice_text.encode(), "alice.txt", session=session, storage=storage).corpus
    own = ingest((alice_text[:3000] + " own").encode(), "own.txt", session=session, storage=storage).corpus
    bob = create_persona(session, "bob", family="char-rnn", guild_id=G1)
    carol = create_persona(session, "carol", family="char-rnn", guild_id=G1)
    for persona, corpus in ((bob, shared), (bob, own), (carol, shared)):
        link_corpus(session, persona, corpus)
    link_corpus(session, bob, own)  # idempotent
    bob_run, carol_run = create_run(session, bob, corpus=own), create_run(session, carol, corpus=shared)
    b1 = save_checkpoint(session, storage, bob, bob_run, "best", b"bob-best", activate=True)
    save_checkpoint(session, storage, bob, bob_run, "last", b"bob-last")
    c1 = save_checkpoint(session, storage, carol, carol_run, "best", b"carol-best")
    record_generation(session, bob, prompt="hi", output="there", checkpoint=b1)
    session.commit()
    assert len(storage.keys()) == 5
    assert {c.id for c in bob.corpora} == {shared.id, own.id}

    removed = delete_persona(session, bob, storage)

    assert sorted(removed) == sorted([b1.storage_key, f"checkpoints/bob/{bob_run.id}/last.safetensors",
                                      own.storage_key])
    assert sorted(storage.keys()) == sorted([shared.storage_key, c1.storage_key])
    session.expire_all()
    assert get_persona(session, "bob", G1) is None
    assert session.scalars(select(Corpus.id)).all() == [shared.id]
    assert session.scalars(select(Checkpoint.id)).all() == [c1.id]
    assert session.scalars(select(TrainingRun.id)).all() == [carol_run.id]
    assert count_rows(session, Generation) == 0
    assert session.scalars(select(PersonaCorpus.persona_id)).all() == [carol.id]
    assert storage.get(shared.storage_key).decode() == alice_text

    delete_persona(session, get_persona(session, "carol", G1), storage)
    assert storage.keys() == [] and count_rows(session, Corpus) == 0


def test_orm_delete_of_a_persona_with_an_active_checkpoint(session):
    """session.delete() (not delete_persona) also works despite the persona <-> checkpoint cycle."""
    bob = create_persona(session, "bob", family="word-gru", guild_id=G1)
    add_checkpoint(session, bob, "checkpoints/bob/1/best.safetensors", activate=True)
    session.commit()
    session.delete(bob)
    session.commit()
    assert count_rows(session, Checkpoint) == 0
    assert get_persona(session, "bob", G1) is None
