"""Members' voices in the service: `/voice me` makes a persona only its owner finds, uses or deletes, labelled as
a parody; learning from channels is refused while the setting is off; opting out removes the member's text from
a learned corpus and retires the persona; a learned persona of hidden channels answers only there; and a tiny
voice trained on a member's text does not give back 40 characters of it in a row."""

from __future__ import annotations

import random

import pytest
from sqlalchemy import select

import db
import service.generation
import service.personas
import service.training
import service.voices
from db.ingest import read_corpus_text
from db.models import LearnedSource, VoiceOptIn
from db.personas import get_persona
from service.errors import UnknownPersona
from service.policy import Actor, NotAllowed, UserError
from tests.environment import configured

from .test_service import GUILD, MANAGER, env  # noqa: F401 - fixtures

pytestmark = pytest.mark.usefixtures("env")
OWNER = Actor(21, GUILD, 5)
OTHER = Actor(22, GUILD, 5)
_WORDS = ("the kettle sang while we argued about maps and trains and whether the harbour lights were ever "
          "meant for us or for the gulls that followed every ferry home across the grey water").split()


def _lines(seed: int, n: int = 90) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(11)).capitalize() + "." for _ in range(n)]


def _voice(actor: Actor = OWNER, name: str = "Zed") -> service.voices.NewRun:
    text = "\n".join(_lines(actor.user_id))
    return service.voices.train_voice(actor, name, service.voices.VoiceText(text, 90, 90), minutes=0.05)


def _corpus_texts(slug: str) -> list[str]:
    with db.session_scope() as session:
        persona = get_persona(session, slug, GUILD)
        return [read_corpus_text(c) for c in persona.corpora]


def _activate(slug: str) -> None:
    from db.checkpoints import add_checkpoint

    with db.session_scope() as session:
        persona = get_persona(session, slug, GUILD)
        add_checkpoint(session, persona, f"checkpoints/{slug}/x/best.safetensors", activate=True)


def test_a_voice_is_its_owners_alone_and_labelled():
    new = _voice()
    assert new.persona_slug == "me-zed" and new.display_name == "Zed (parody voice)" and new.created_persona
    _activate("me-zed")
    assert service.generation.prepare_generation("me-zed", "", OWNER).payload["persona"] == "me-zed"
    for actor in (OTHER, MANAGER):  # another member, a manager too: as if there were none
        with pytest.raises(UnknownPersona):
            service.generation.prepare_generation("me-zed", "", actor)
        with pytest.raises(UnknownPersona if actor.can_manage else UserError):
            service.personas.delete_persona(actor, "me-zed")
        assert service.voices.delete_voice(actor) is None
    assert "me-zed" not in service.personas.persona_names(GUILD)
    service.training.cancel_training(OWNER)
    with pytest.raises(UserError, match="another training run"):
        _voice()  # the train cooldown counts for a member's voice as for any run
    with configured({"IMPROBABLE_CEILING_MIN_TRAIN_COOLDOWN_SECONDS": "0"}):
        again = _voice()  # the owner trains it again: the same persona
    assert again.persona_slug == "me-zed" and not again.created_persona
    assert _voice(OTHER, "zed").persona_slug == "me-zed-0022"  # another Zed gets a name of their own
    assert service.voices.delete_voice(OWNER) == "me-zed"
    with db.session_scope() as session:
        assert get_persona(session, "me-zed", GUILD) is None


def test_a_text_file_cannot_be_limited_to_this_server():
    with pytest.raises(UserError, match="data package"):
        service.voices.voice_text(b"my own words", "notes.txt", GUILD, 100_000)
    with pytest.raises(UserError, match="does not say which server"):
        service.voices.voice_text(b'[{"ID": 1, "Timestamp": "t", "Contents": "hi"}]', "messages.json", GUILD, 10_000)


def test_learning_is_refused_while_the_setting_is_off():
    with pytest.raises(NotAllowed, match="IMPROBABLE_CHANNEL_LEARNING"):
        service.voices.check_learn(MANAGER, "crowd", None)


def test_opting_out_removes_the_members_text_and_retires_the_persona():
    with configured({"IMPROBABLE_CHANNEL_LEARNING": "true"}):
        with pytest.raises(NotAllowed):
            service.voices.check_learn(OTHER, "crowd", None)  # Manage Server only
        new = service.voices.learn(MANAGER, "crowd", {21: _lines(1), 22: _lines(2)}, [5], False, minutes=0.05)
        assert new.created_persona
        _activate("crowd")
        (text,) = _corpus_texts("crowd")
        assert _lines(1)[0] in text and _lines(2)[0] in text
        service.voices.opt_in(OWNER)
        out = service.voices.opt_out(OWNER)
    assert out.was_opted_in and out.retired == ("crowd",) and out.voice is None
    (text,) = _corpus_texts("crowd")
    assert _lines(1)[0] not in text and text == "\n".join(_lines(2))
    with db.session_scope() as session:
        persona = get_persona(session, "crowd", GUILD)
        assert persona.active_checkpoint_id is None and not persona.checkpoints
        sources = select(LearnedSource.user_id).where(LearnedSource.persona_id == persona.id)
        assert session.scalars(sources).all() == [22]


def test_a_persona_of_hidden_channels_answers_only_there():
    with configured({"IMPROBABLE_CHANNEL_LEARNING": "true"}):
        service.voices.learn(MANAGER, "backroom", {21: _lines(3)}, [77], True, minutes=0.05)
    _activate("backroom")
    with pytest.raises(UserError, match="only in those channels"):
        service.generation.prepare_generation("backroom", "", Actor(2, GUILD, 5))
    assert service.generation.prepare_generation("backroom", "", Actor(2, GUILD, 77)).payload["persona"] == "backroom"


def _longest_copy(output: str, source: str, n: int = 40) -> str | None:
    return next((output[i:i + n] for i in range(len(output) - n + 1) if output[i:i + n] in source), None)


def test_a_trained_voice_does_not_reproduce_40_characters_of_its_source(tmp_path):
    from core.contracts import SamplingParams
    from trainer import checkpoint
    from trainer.sample import generate
    from trainer.train import TrainConfig, train

    source = "\n".join(_lines(5, 160))
    assert _longest_copy(source[100:200], source) is not None  # the check finds a copy where there is one
    config = TrainConfig(corpus="voice", out_dir=str(tmp_path), n_layers=1, n_hidden=64, n_embd=16, batch_size=16,
                         seq_len=64, max_steps=150, eval_interval=150, log_interval=150, warmup_steps=5, threads=1)
    train(config, source)
    saved = checkpoint.load(tmp_path / "best.safetensors")
    params = [SamplingParams(temperature=0.8, max_tokens=300, seed=seed) for seed in range(20)]
    streams = generate(saved.model, saved.tokenizer, [""] * 20, params)
    outputs = [s.text for s in streams]
    assert all(len(o) > 100 for o in outputs)
    copies = [c for o in outputs if (c := _longest_copy(o, source)) is not None]
    assert not copies, copies


def test_privacy_delete_takes_the_members_voice_opt_in_and_learned_text():
    import service.privacy

    with configured({"IMPROBABLE_CHANNEL_LEARNING": "true"}):
        service.voices.learn(MANAGER, "crowd", {21: _lines(1), 22: _lines(2)}, [5], False, minutes=0.05)
        service.voices.opt_in(OWNER)
        _voice()
    service.privacy.delete_user_data(OWNER.user_id)
    with db.session_scope() as session:
        assert get_persona(session, "me-zed", GUILD) is None
        assert not session.scalars(select(VoiceOptIn).where(VoiceOptIn.user_id == OWNER.user_id)).all()
        assert not session.scalars(select(LearnedSource).where(LearnedSource.user_id == OWNER.user_id)).all()
    (text,) = _corpus_texts("crowd")
    assert _lines(1)[0] not in text


def test_privacy_export_and_show_include_the_members_voice_opt_in_and_learned_personas():
    import json

    import service.privacy

    with configured({"IMPROBABLE_CHANNEL_LEARNING": "true"}):
        service.voices.learn(MANAGER, "crowd", {21: _lines(1), 22: _lines(2)}, [5], False, minutes=0.05)
        service.voices.opt_in(OWNER)
        _voice()
    _activate("me-zed")
    data = json.loads(json.dumps(service.privacy.export(OWNER.user_id)))  # what /privacy export sends, as JSON
    assert [(v["persona"], v["guild_id"], v["ready"]) for v in data["voices"]] == [("me-zed", GUILD, True)]
    assert data["voices"][0]["display_name"] == "Zed (parody voice)"
    assert [o["guild_id"] for o in data["voice_optins"]] == [GUILD]
    assert data["learned_personas"] == [{"persona": "crowd", "guild_id": GUILD, "messages": 90}]
    shown = service.privacy.summary(OWNER.user_id)
    assert (shown.voices, shown.voice_optins, shown.learned_personas) == (1, 1, 1)
    other = service.privacy.export(OTHER.user_id)  # in the learned persona, with no voice and no opt-in
    assert (other["voices"], other["voice_optins"]) == ([], [])
    assert [s["persona"] for s in other["learned_personas"]] == ["crowd"]
    service.voices.opt_out(OWNER)
    gone = service.privacy.summary(OWNER.user_id)
    assert (gone.voices, gone.voice_optins, gone.learned_personas) == (0, 0, 0)
