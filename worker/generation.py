"""One generate request, end to end: checkpoint from the cache, text from the shared engine, a row in
`generations`. The generate task and scheduled posts both come through `serve_request()`.

The engine and the cache are created on first use in the process that serves requests (a Celery worker
child, or the bot's own process in eager mode), never at import time.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable

from core import metrics
from core.contracts import GenerateRequest, SamplingError, parse_sampling
from core.settings import get_settings
from worker import signals

# ids from the request that are echoed in the result, so the bot can route it without keeping state
ROUTING_KEYS = ("persona", "guild_id", "channel_id", "user_id", "interaction_id", "reply_to")

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
            _engine = Engine(pick_device(settings.device), settings.torch_threads or engine_threads())
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


def serve_request(request: dict, on_partial: Callable[[str], None] | None = None, record: bool = True) -> dict:
    """Serve one request (the `improbable.generate` payload, core.contracts.GenerateRequest; see
    worker/tasks.py). `on_partial(text)` is called with the completion so far, at most every
    `partial_interval` seconds, while it grows."""
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

    entry = cache().acquire(checkpoint_id)
    try:
        job = engine().submit(entry, prompt, params)
        deadline = started + settings.generate_timeout
        sent = ""
        while True:
            try:
                stream = job.future.result(timeout=settings.partial_interval)
                break
            except TimeoutError:
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"generation took more than {settings.generate_timeout:.0f} s") from None
                text = job.partial
                if on_partial is not None and text != sent:
                    on_partial(text)
                    sent = text
    finally:
        cache().release(entry)

    tokenizer = entry.checkpoint.tokenizer
    latency_ms = round((time.perf_counter() - started) * 1000)
    result = {
        "text": stream.text,
        "full_text": tokenizer.continue_text(prompt, stream.text),
        "seed": stream.seed,
        "tokens": len(stream.tokens),
        "finish_reason": stream.finish_reason,
        "unknown": stream.unknown,
        "latency_ms": latency_ms,
        "load_ms": round((job.submitted - started) * 1000),  # checkpoint load (0 when cached)
        "batch_peak": job.batch_peak,
        "checkpoint_id": checkpoint_id,
        "generation_id": None,
        **{k: request[k] for k in ROUTING_KEYS if k in request},
    }
    if record and entry.persona_id is not None:
        result["generation_id"] = _record(request, entry.persona_id, prompt, params, result)
    return result


def _record(request: dict, persona_id: int, prompt: str, params, result: dict) -> int | None:
    """The `generations` row, with everything a regenerate button needs to do it again."""
    from db.queries import generation_row

    global _recorder
    with _lock:
        if _recorder is None:
            from .recording import Recorder

            _recorder = Recorder()
    return _recorder.record(generation_row(
        persona_id, prompt=prompt, output=result["text"], params=params.to_dict(), seed=result["seed"],
        checkpoint=result["checkpoint_id"], latency_ms=result["latency_ms"], user_id=request.get("user_id"),
        guild_id=request.get("guild_id"), channel_id=request.get("channel_id"),
        interaction_id=request.get("interaction_id"), parent=request.get("parent_generation_id")))
