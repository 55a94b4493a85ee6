"""Generated texts: the row of one (which the workers insert in batches), recording one, attaching its Discord
message, and reading them back. Functions flush but do not commit (the caller owns the transaction).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.models import Checkpoint, Generation, Persona
from db.types import as_utc


def generation_row(persona_id: int, *, prompt: str, output: str, params: dict[str, Any] | None = None,
                   seed: int | None = None, checkpoint: Checkpoint | int | None = None, latency_ms: int | None = None,
                   user_id: int | None = None, guild_id: int | None = None, channel_id: int | None = None,
                   message_id: int | None = None, interaction_id: int | None = None,
                   parent: Generation | int | None = None, request_id: str | None = None) -> dict[str, Any]:
    """The `generations` columns of one generated text, with everything a regenerate button needs to do it
    again. The workers insert such rows in batches (worker/recording.py); `record_generation` adds one.
    `request_id` is the idempotency key (the job's id). NUL characters are dropped: PostgreSQL text cannot
    hold them, and one would fail the whole batch insert it travels in."""
    prompt, output = prompt.replace("\x00", ""), output.replace("\x00", "")
    return {"persona_id": persona_id, "prompt": prompt, "output": output, "params": dict(params or {}),
            "seed": seed, "checkpoint_id": checkpoint.id if isinstance(checkpoint, Checkpoint) else checkpoint,
            "latency_ms": latency_ms, "user_id": user_id, "guild_id": guild_id, "channel_id": channel_id,
            "message_id": message_id, "interaction_id": interaction_id,
            "parent_id": parent.id if isinstance(parent, Generation) else parent, "request_id": request_id}


def record_generation(session: Session, persona: Persona, **fields: Any) -> Generation:
    """Store one generated text (the fields of `generation_row`)."""
    gen = Generation(**generation_row(persona.id, **fields))
    session.add(gen)
    session.flush()
    return gen


def set_generation_message(session: Session, generation: Generation | int, message_id: int) -> None:
    """Attach the Discord message id once the reply has been posted."""
    gen_id = generation if isinstance(generation, int) else generation.id
    session.execute(update(Generation).where(Generation.id == gen_id).values(message_id=message_id))


def generation_for_message(session: Session, message_id: int) -> Generation | None:
    """The (latest) generation shown in a Discord message: what a regenerate button reads."""
    return session.scalars(select(Generation).where(Generation.message_id == message_id)
                           .order_by(Generation.id.desc()).limit(1)).first()


def recent_generations(session: Session, *, user_id: int | None = None, since: datetime | None = None,
                       limit: int = 50) -> list[Generation]:
    q = select(Generation).order_by(Generation.created_at.desc(), Generation.id.desc()).limit(limit)
    if user_id is not None:
        q = q.where(Generation.user_id == user_id)
    if since is not None:
        q = q.where(Generation.created_at >= as_utc(since))
    return list(session.scalars(q))
