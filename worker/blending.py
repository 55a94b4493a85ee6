"""Blended voices in a generate request (issue 15): `request["blend"]` lists the voices the service resolved,
[{"checkpoint_id", "weight", "persona"}, ...], the first being the request's own checkpoint_id. The worker
holds every voice's cache entry for the stream's whole life (so none is evicted mid-stream) and the engine
samples from trainer.blend's mixture, in a batch keyed by the blend (worker/engine.py)."""

from __future__ import annotations

from dataclasses import dataclass


class BlendRequestError(ValueError):
    pass


@dataclass(frozen=True)
class Voice:
    checkpoint_id: int
    weight: float
    persona: str


def blend_voices(request: dict, checkpoint_id: int) -> list[Voice]:
    """The request's voices ([] for a single persona); BlendRequestError when malformed."""
    raw = request.get("blend")
    if not raw:
        return []
    try:
        voices = [Voice(int(v["checkpoint_id"]), float(v["weight"]), str(v.get("persona", ""))) for v in raw]
    except (TypeError, KeyError, ValueError):
        raise BlendRequestError("invalid blend: a list of {checkpoint_id, weight, persona} expected") from None
    if len(voices) < 2 or voices[0].checkpoint_id != checkpoint_id:
        raise BlendRequestError("invalid blend: at least two voices, the first being the request's checkpoint")
    if any(not 0 < v.weight <= 1 for v in voices):
        raise BlendRequestError("invalid blend: weights must be in (0, 1]")
    return voices


def acquire_voices(cache, voices: list[Voice]) -> list:
    """Acquire every voice's cache entry (all or none: a failed load releases the ones taken)."""
    entries = []
    try:
        for voice in voices:
            entries.append(cache.acquire(voice.checkpoint_id))
    except BaseException:
        for entry in entries:
            cache.release(entry)
        raise
    return entries
