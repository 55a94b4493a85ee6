"""One generate request, end to end: checkpoint from the cache, text from the shared engine, a row in
`generations`. `begin()` validates a request and hands it to the engine, `finish()` and `answer()` turn its
stream into the result and the row. Scheduled posts and eager mode wait in their own thread through
`serve_request()`; a worker's generate task hands over and returns (worker/delivery.py answers).

The engine and the cache are created on first use in the process that serves requests (a Celery worker
child, or the bot's own process in eager mode), never at import time.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from core import metrics
from core.contracts import GenerateRequest, SamplingError, parse_sampling
from core.settings import get_settings
from worker import signals
from worker.blending import BlendRequestError, acquire_voices, blend_voices
from worker.probability import picture_pieces, probability_summary

# ids from the request that are echoed in the result, so the bot can route it without keeping state
ROUTING_KEYS = ("persona", "guild_id", "channel_id", "user_id", "interaction_id", "reply_to")
PARTIAL_HEARTBEAT = 2.0  # seconds between partial-text updates even when the text has not grown

_lock = threading.Lock()
_engine = None
_cache = None
_recorder = None


class BadRequest(ValueError):
    """A request that can never succeed (unknown checkpoint, invalid parameters): not retried."""


def load_checkpoint(checkpoint_id: int):
    """(Checkpoint on the engine's device, persona id) for a checkpoint row, read from storage."""
    import torch

    from db import Checkpoint, open_storage, session_scope
    from trainer.checkpoint import from_bytes

    with session_scope() as session:
        row = session.get(Checkpoint, checkpoint_id)
        if row is None:
            raise BadRequest(f"no checkpoint {checkpoint_id}")
        key, persona_id = row.storage_key, row.persona_id
    dtype = torch.bfloat16 if get_settings().generate_precision == "bf16" else torch.float32
    return from_bytes(open_storage().get(key), name=key, device=engine().device, dtype=dtype), persona_id


def engine():
    global _engine
    with _lock:
        if _engine is None:
            from .engine import Engine, pick_device

            settings = get_settings()
            _engine = Engine(pick_device(settings.device), settings.torch_threads or engine_threads(),
                             int8=settings.generate_int8)
        return _engine


def engine_threads() -> int:
    """Intra-op threads for the engine when not configured: the engine is one serial loop over small
    matrices, and the worker's job threads, Redis and the database need CPU too, so half the cores (at
    most 4). On a loaded 2-core machine a second thread made batched steps slower, not faster."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def cache():
    global _cache
    with _lock:
        if _cache is None:
            from .cache import CheckpointCache

            _cache = CheckpointCache(load_checkpoint, get_settings().model_cache_mb * 2**20)
            metrics.CHECKPOINT_CACHE_ENTRIES.set_function(lambda: len(_cache))
            metrics.CHECKPOINT_CACHE_LOADS.set_function(lambda: _cache.loads)
            signals.cache_probe = _cache.__contains__  # cache hits and misses, counted at task start
        return _cache


def sampling_params(params: dict | None, max_tokens_cap: int):
    """The sampler's SamplingParams from a request's JSON, validated by the contract (core.contracts), with
    a seed always set and max_tokens capped. None values mean "default"."""
    from trainer.sample import SamplingParams

    try:
        checked = parse_sampling(params)
    except SamplingError as e:
        raise BadRequest(f"invalid sampling parameters: {e.message}") from None
    sp = SamplingParams(**checked.model_dump())
    sp.max_tokens = min(sp.max_tokens, max_tokens_cap)
    if sp.seed is None:
        sp.seed = secrets.randbits(31)
    return sp


@dataclass
class Serving:
    """A request handed to the engine: what its answer needs once its stream is done."""

    request: dict
    checkpoint_id: int
    prompt: str
    params: object  # trainer.sample.SamplingParams
    record: bool
    held: list  # cache entries held for the stream's life (the voices of a blend)
    job: object  # worker.engine.EngineRequest
    started: float
    deadline: float


def begin(request: dict, record: bool = True, maybe_done: bool = False) -> dict | Serving:
    """Validate a request (the `improbable.generate` payload, core.contracts.GenerateRequest; see
    worker/tasks.py) and hand it to the engine: a Serving, or the recorded answer (a dict) of a request that
    ran before. `maybe_done`: the job may have run before (redelivered, re-published, retried): look for its
    row first. (Any run records once; this only saves the work.) Raises BadRequest for a request that can
    never succeed."""
    from pydantic import ValidationError

    settings = get_settings()
    started = time.perf_counter()
    if not isinstance(request, dict) or not isinstance(request.get("checkpoint_id"), int | str):
        raise BadRequest("a generate request needs an integer checkpoint_id")
    try:
        checked = GenerateRequest.model_validate(request)
    except ValidationError as e:
        raise BadRequest(f"invalid generate request: {e.errors()[0]['loc']}: {e.errors()[0]['msg']}") from None
    checkpoint_id, prompt = checked.checkpoint_id, checked.prompt
    params = sampling_params(checked.params, settings.max_generate_tokens)
    request_id = request.get("request_id") if isinstance(request.get("request_id"), str) else None
    if record and request_id and maybe_done:
        earlier = recorded_result(request_id, request)
        if earlier is not None:  # this request ran before (a redelivery): its answer, not a second one
            return earlier
    try:
        voices = blend_voices(request, checkpoint_id)
    except BlendRequestError as e:
        raise BadRequest(str(e)) from None
    held = acquire_voices(cache(), voices) if voices else [cache().acquire(checkpoint_id)]
    try:
        job = engine().submit(held[0], prompt, params, voices=tuple(held) if voices else (),
                              weights=tuple(v.weight for v in voices), names=tuple(v.persona for v in voices))
    except BaseException:
        release(held)
        raise
    return Serving(request, checkpoint_id, prompt, params, record, held, job, started,
                   started + settings.generate_timeout)


def release(held: list) -> None:
    for entry in held:
        cache().release(entry)


def serve_request(request: dict, on_partial: Callable[[str], None] | None = None, record: bool = True,
                  maybe_done: bool = False) -> dict:
    """Serve one request and wait for its answer in this thread (eager mode and scheduled posts; the
    generate task of a worker hands its request over instead, worker/delivery.py). `on_partial(text)` is
    called with the completion so far, at most every `partial_interval` seconds, while it grows."""
    settings = get_settings()
    serving = begin(request, record, maybe_done)
    if isinstance(serving, dict):
        return serving
    try:
        sent, sent_at = "", time.perf_counter()
        while True:
            try:
                serving.job.future.result(timeout=settings.partial_interval)
                break
            except TimeoutError:
                if time.perf_counter() > serving.deadline:
                    engine().abandon(serving.job)  # the engine stops computing it
                    raise TimeoutError(f"generation took more than {settings.generate_timeout:.0f} s") from None
                text = serving.job.partial
                # new text, or the same again as a heartbeat: the bot takes a silent job for a dead one
                if on_partial is not None and (text != sent or time.perf_counter() - sent_at > PARTIAL_HEARTBEAT):
                    on_partial(text)
                    sent, sent_at = text, time.perf_counter()
    finally:
        release(serving.held)
    result, row = finish(serving)
    return answer(serving, result, recorder().record(row) if row is not None else None)


def finish(serving: Serving) -> tuple[dict, dict | None]:
    """(The result of a finished stream, its `generations` row to record or None). Raises what the engine
    raised for the stream. The caller releases the cache entries (`release(serving.held)`)."""
    from db.queries import generation_row

    stream, job, request = serving.job.future.result(timeout=0), serving.job, serving.request
    entry = serving.held[0]
    tokenizer = entry.checkpoint.tokenizer
    result = {
        "text": stream.text,
        "full_text": tokenizer.continue_text(serving.prompt, stream.text),
        "seed": stream.seed,
        "tokens": len(stream.tokens),
        "finish_reason": stream.finish_reason,
        "unknown": stream.unknown,
        "latency_ms": round((time.perf_counter() - serving.started) * 1000),
        "load_ms": round((job.submitted - serving.started) * 1000),  # checkpoint load (0 when cached)
        "batch_peak": job.batch_peak,
        "checkpoint_id": serving.checkpoint_id,
        "probability": probability_summary(stream),
        "generation_id": None,
        **{k: request[k] for k in ROUTING_KEYS if k in request},
    }
    if not serving.record or entry.persona_id is None:
        return result, None
    # the probability summary and the picture's pieces go to the row only (Info and show:probabilities draw
    # them; follow-ups ignore them), not the result
    params = serving.params
    row = generation_row(
        entry.persona_id, prompt=serving.prompt, output=result["text"], seed=result["seed"],
        params={**params.to_dict(), "probability": {**result["probability"],
                                                     "pieces": picture_pieces(stream, tokenizer)}},
        checkpoint=result["checkpoint_id"], latency_ms=result["latency_ms"], user_id=request.get("user_id"),
        guild_id=request.get("guild_id"), channel_id=request.get("channel_id"),
        interaction_id=request.get("interaction_id"), parent=request.get("parent_generation_id"),
        request_id=_request_id(request))
    return result, row


def answer(serving: Serving, result: dict, recorded) -> dict:
    """The final result, given how its row was recorded (a worker.recording.Recorded, or None)."""
    if recorded is None:
        return result
    if recorded.duplicate and recorded.id is not None:  # another run of this request recorded first
        earlier = recorded_result(_request_id(serving.request), serving.request)
        if earlier is None or earlier["text"] == result["text"]:  # (a seeded request: the same text)
            return {**result, "generation_id": recorded.id, "duplicate": True}
        return earlier  # an unseeded one: the text that was recorded, not this run's
    return {**result, "generation_id": recorded.id}


def _request_id(request: dict) -> str | None:
    return request.get("request_id") if isinstance(request.get("request_id"), str) else None


def recorded_result(request_id: str, request: dict) -> dict | None:
    """The result of a request recorded earlier (by another run of the same job), rebuilt from its row, or
    None. A redelivered job answers with what the first run wrote, even if its seed was not fixed."""
    from sqlalchemy import select

    from db import Generation, session_scope

    with session_scope() as session:
        row = session.scalars(select(Generation).where(Generation.request_id == request_id)).first()
        if row is None:
            return None
        found = {"text": row.output, "prompt": row.prompt, "seed": row.seed, "generation_id": row.id,
                 "checkpoint_id": row.checkpoint_id, "latency_ms": row.latency_ms}
    entry = cache().acquire(found["checkpoint_id"]) if found["checkpoint_id"] is not None else None
    try:
        full_text = (entry.checkpoint.tokenizer.continue_text(found["prompt"], found["text"]) if entry
                     else found["prompt"] + found["text"])
    finally:
        if entry is not None:
            cache().release(entry)
    return {"text": found["text"], "full_text": full_text, "seed": found["seed"], "tokens": None,
            "finish_reason": None, "unknown": [], "latency_ms": found["latency_ms"], "load_ms": 0, "batch_peak": 0,
            "checkpoint_id": found["checkpoint_id"], "generation_id": found["generation_id"], "duplicate": True,
            **{k: request[k] for k in ROUTING_KEYS if k in request}}


def recorder():
    """This process's worker.recording.Recorder (one thread writing rows in batches)."""
    global _recorder
    with _lock:
        if _recorder is None:
            from .recording import Recorder

            _recorder = Recorder()
        return _recorder
