"""Bundled checkpoints (db/bundled/): float16 safetensors for the default personas whose text is freely
available, trained by scripts/train_bundled.py from the checked-in recipes (model cards beside them).

`register_bundled()` makes each one its persona's active checkpoint when the persona has none yet, so a
fresh install talks at once. Torch-free: the metadata comes from the one header reader
(core.checkpoints.meta_from_bytes), which refuses a bad file as the trainer's loader would.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from core.checkpoints import meta_from_bytes
from db.checkpoints import add_checkpoint
from db.personas import get_persona
from db.storage import Storage, checkpoint_key

BUNDLED_DIR = Path(__file__).parent / "bundled"
# Built-in personas whose text may not ship with Improbable (copyright): no bundled checkpoint and no corpus,
# so only the operator's own copy of the text can train them.
OWN_COPY_ONLY = frozenset({"harry-potter"})


def needs_own_copy(persona) -> bool:
    """Whether only an uploaded copy of the text can train this persona (a built-in in OWN_COPY_ONLY)."""
    return persona.guild_id is None and persona.slug in OWN_COPY_ONLY


def bundled_checkpoints() -> dict[str, Path]:
    return {path.stem: path for path in sorted(BUNDLED_DIR.glob("*.safetensors"))}


def register_bundled(session: Session, storage: Storage) -> list[str]:
    """Store and activate bundled checkpoints for global personas without one; returns their slugs."""
    registered = []
    for slug, path in bundled_checkpoints().items():
        persona = get_persona(session, slug, None)
        if persona is None or persona.active_checkpoint_id is not None:
            continue
        data = path.read_bytes()
        metrics = meta_from_bytes(data, path.name).get("metrics", {})
        key = checkpoint_key(slug, "bundled", "best")
        storage.put(key, data)
        add_checkpoint(session, persona, key, name="bundled", val_loss=metrics.get("val_loss"), metrics=metrics,
                       size_bytes=len(data), activate=True)
        registered.append(slug)
    return registered
