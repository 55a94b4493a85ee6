"""Checkpoint rows: recording a checkpoint already in storage, or storing its bytes and recording them
together. Functions flush but do not commit (the caller owns the transaction).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from db.models import Checkpoint, Persona, TrainingRun
from db.storage import Storage, checkpoint_key


def add_checkpoint(session: Session, persona: Persona, storage_key: str, *, run: TrainingRun | None = None,
                   name: str = "best", val_loss: float | None = None, metrics: dict[str, Any] | None = None,
                   size_bytes: int = 0, activate: bool = False) -> Checkpoint:
    """Record a checkpoint already in storage; activate=True promotes it to the persona's active one."""
    ckpt = Checkpoint(persona_id=persona.id, run_id=run.id if run else None, name=name, storage_key=storage_key,
                      family=persona.family, val_loss=val_loss, metrics=dict(metrics or {}), size_bytes=size_bytes)
    session.add(ckpt)
    session.flush()
    if activate:
        persona.active_checkpoint = ckpt
        session.flush()
    return ckpt


def save_checkpoint(session: Session, storage: Storage, persona: Persona, run: TrainingRun, name: str,
                    data: bytes, *, val_loss: float | None = None, metrics: dict[str, Any] | None = None,
                    activate: bool = False) -> Checkpoint:
    """Store checkpoint bytes at checkpoints/<slug>/<run>/<name>.safetensors (atomically), then record them.
    If recording fails the blob is removed again."""
    key = checkpoint_key(persona.slug, run.id, name)
    storage.put(key, data)
    try:
        with session.begin_nested():
            return add_checkpoint(session, persona, key, run=run, name=name, val_loss=val_loss,
                                  metrics=metrics, size_bytes=len(data), activate=activate)
    except BaseException:
        storage.delete(key)
        raise
