"""Bundled checkpoints load with the trainer, stay small, and become active personas on a fresh database."""

import math
from pathlib import Path

import pytest

from core.checkpoints import meta_from_bytes
from core.contracts import SamplingParams
from db.bundled import BUNDLED_DIR, bundled_checkpoints, register_bundled
from trainer import checkpoint as ckpt
from trainer.pretrained import PRETRAINED_DIR
from trainer.sample import generate

pytestmark = pytest.mark.skipif(not bundled_checkpoints(), reason="no bundled checkpoints built")


MAX_SHIPPED_BYTES = 40_000_000  # issue 10: every checkpoint the package ships, together


def test_shipped_checkpoints_are_small_and_every_bundled_one_has_a_model_card():
    files = bundled_checkpoints()
    base = sorted(PRETRAINED_DIR.glob("*.safetensors"))  # the shipped base that fine-tunes start from
    assert base, f"no pretrained checkpoint in {PRETRAINED_DIR}: the limit would not count it"
    shipped = [*files.values(), *base]
    total = sum(p.stat().st_size for p in shipped)
    assert total <= MAX_SHIPPED_BYTES, f"{len(shipped)} shipped checkpoints take {total:,} bytes"
    for slug, path in files.items():
        card = (BUNDLED_DIR / f"{slug}.md").read_text()
        meta = meta_from_bytes(path.read_bytes())
        assert meta["corpus_sha256"] in card and "held-out loss" in card


@pytest.mark.parametrize("slug", sorted(bundled_checkpoints()))
def test_bundled_checkpoint_loads_and_talks(slug):
    loaded = ckpt.load(bundled_checkpoints()[slug])
    # Learned: held-out loss clearly below the uniform baseline ln(V). (Not a tight bound: trump's held-out
    # tail is a speech transcribed in capitals, which its training text never shows.)
    assert loaded.meta["metrics"]["val_loss"] < math.log(len(loaded.tokenizer)) - 0.5
    text = generate(loaded.model, loaded.tokenizer, ["The"], SamplingParams(max_tokens=40, seed=1))[0].text
    assert len(text) > 10


def test_register_bundled_activates_personas_once(tmp_path: Path):
    from db.migrate import upgrade
    from db.personas import get_persona
    from db.session import get_sessionmaker
    from db.storage import open_storage

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    storage = open_storage(str(tmp_path / "storage"))
    with get_sessionmaker(url)() as session:
        registered = register_bundled(session, storage)
        session.commit()
        assert registered == [s for s in bundled_checkpoints() if get_persona(session, s, None)]
        assert register_bundled(session, storage) == []  # already active: nothing to do
        for slug in registered:
            persona = get_persona(session, slug, None)
            assert storage.exists(persona.active_checkpoint.storage_key)
