"""The serving runtime of one generate worker process: the one object that owns the engine, the checkpoint
cache, the recorder, delivery and leases, and takes a `GenerateRequest` to its `GenerateResult`.

    request ─ begin() ─▶ engine (batched stepping) ─ finish() ─▶ row ─▶ recorder ─ answer() ─▶ GenerateResult
                 │                                                                   ▲
                 └── recorded_result(): a request that ran before answers from its row ┘

`serve()` waits for the answer in the calling thread (eager mode, scheduled posts); a worker's generate task
hands the job to `delivery` and returns (worker/serve/delivery.py). Every part is created on first use, in
the process that serves (a Celery worker child, or the bot's own process in eager mode), never at import
time: CUDA must not start before a fork.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from core import metrics
from core.contracts import GenerateRequest, GenerateResult, Liveness, ProbabilitySummary, SamplingParams
from core.settings import Settings, get_settings

log = logging.getLogger(__name__)


class BadRequest(ValueError):
    """A request that can never succeed (unknown checkpoint, a length past the cap): not retried."""


@dataclass
class Serving:
    """A request handed to the engine: what its answer needs once its stream is done."""

    request: GenerateRequest
    params: SamplingParams  # the request's, with the seed drawn and the length capped
    record: bool
    held: list  # cache entries held for the stream's life (every voice of a blend)
    job: object  # worker.serve.engine.EngineRequest
    started: float
    deadline: float


class Runtime:
    def __init__(self, app=None, settings: Settings | None = None):
        self.app = app  # the Celery app that re-published jobs and stored states go through (None: eager)
        self.settings = settings or get_settings()
        self.liveness: Liveness = self.settings.liveness
        self._lock = threading.Lock()
        self._parts: dict[str, object] = {}

    # -- the parts, each made once on first use -----------------------------------------------------------

    def _part(self, name: str, make: Callable[[], object]):
        with self._lock:
            if name not in self._parts:
                self._parts[name] = make()
            return self._parts[name]

    @property
    def engine(self):
        def make():
            from .engine import Engine
            from .engine_process import EngineProcess

            threads = self.settings.torch_threads or engine_threads()
            in_a_worker = self.app is not None and not self.app.conf.task_always_eager  # (eager: the bot's own process)
            kind = EngineProcess if self.settings.generate_engine == "process" and in_a_worker else Engine
            return kind(self.settings.device, threads, int8=self.settings.generate_int8)
        return self._part("engine", make)

    @property
    def cache(self):
        def make():
            from .cache import CheckpointCache

            cache = CheckpointCache(self.load_checkpoint, self.settings.model_cache_mb * 2**20,
                                    on_evict=lambda entry: self.engine.forget(entry.checkpoint_id))
            metrics.CHECKPOINT_CACHE_ENTRIES.set_function(lambda: len(cache))
            metrics.CHECKPOINT_CACHE_LOADS.set_function(lambda: cache.loads)
            return cache
        return self._part("cache", make)

    @property
    def recorder(self):
        from .recording import Recorder

        return self._part("recorder", lambda: Recorder(outage=self.liveness.recording_outage))

    @property
    def delivery(self):
        from .delivery import Delivery

        return self._part("delivery", lambda: Delivery(self, self.settings.generate_max_streams))

    @property
    def leases(self):
        """The Leases of this process, or None when the broker is not Redis (AMQP gives a dead consumer's
        messages back at once; eager mode has no broker)."""
        return self._part("leases", self._make_leases)

    def _make_leases(self):
        url = self.settings.broker_url
        if self.app is None or not url.startswith(("redis://", "rediss://", "unix://")):
            return None
        import redis

        from .leases import Leases

        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5, decode_responses=True)
        return Leases(client, self._republish, lease=self.liveness.lease)

    def _republish(self, task: str, args: list, task_id: str) -> None:
        self.app.send_task(task, args=args, task_id=task_id, headers={"republished": True})

    def loaded(self, checkpoint_id: int) -> bool:
        """Whether the checkpoint is resident (without creating the cache)."""
        cache = self._parts.get("cache")
        return cache is not None and checkpoint_id in cache

    def drain(self, timeout: float) -> bool:
        """Wait until every job handed to delivery is answered (True when none is left)."""
        delivery = self._parts.get("delivery")
        return delivery.drain(timeout) if delivery is not None else True

    def load_checkpoint(self, checkpoint_id: int):
        """(Checkpoint on the engine's device, its model's bytes, persona id) for a checkpoint row: its row and
        bytes read in the calling thread, the model built on the engine's thread (the one torch user; with
        the engine in its own process, there, and the checkpoint here holds no model)."""
        from db import Checkpoint, open_storage, session_scope

        with session_scope() as session:
            row = session.get(Checkpoint, checkpoint_id)
            if row is None:
                raise BadRequest(f"no checkpoint {checkpoint_id}")
            key, persona_id = row.storage_key, row.persona_id
        data = open_storage().get(key)
        return *self.engine.load(checkpoint_id, data, key, self.settings.generate_precision), persona_id

    # -- one request ----------------------------------------------------------------------------------------

    def sampling(self, params: SamplingParams) -> SamplingParams:
        """The request's parameters as the sampler takes them: a seed always set, the length capped."""
        return params.model_copy(update={
            "max_tokens": min(params.max_tokens, self.settings.max_generate_tokens),
            "seed": secrets.randbits(31) if params.seed is None else params.seed})

    def begin(self, request: GenerateRequest, record: bool = True,
              maybe_done: bool = False) -> Serving | GenerateResult:
        """Hand a request to the engine: a Serving, or the recorded answer of a request that ran before.
        `maybe_done`: the job may have run before (redelivered, re-published, retried): look for its row
        first (any run records once; this only saves the work)."""
        started = time.perf_counter()
        if record and request.request_id and maybe_done:
            earlier = self.recorded_result(request)
            if earlier is not None:
                return earlier
        params = self.sampling(request.params)
        held = self._acquire([v.checkpoint_id for v in request.blend] or [request.checkpoint_id])
        try:
            job = self.engine.submit(held[0], request.prompt, params, voices=tuple(held) if request.blend else (),
                                     weights=tuple(v.weight for v in request.blend),
                                     names=tuple(v.persona for v in request.blend), owner=request.guild_id)
        except BaseException:
            self.release(held)
            raise
        return Serving(request, params, record, held, job, started, started + self.settings.generate_timeout)

    def _acquire(self, checkpoint_ids: list[int]) -> list:
        """Every checkpoint's cache entry, all or none (a failed load releases the ones taken)."""
        entries = []
        try:
            for checkpoint_id in checkpoint_ids:
                entries.append(self.cache.acquire(checkpoint_id))
        except BaseException:
            self.release(entries)
            raise
        return entries

    def release(self, held: list) -> None:
        for entry in held:
            self.cache.release(entry)

    def serve(self, request: GenerateRequest, on_partial: Callable[[str], None] | None = None,
              record: bool = True, maybe_done: bool = False) -> GenerateResult:
        """Serve one request and wait for its answer in this thread. `on_partial(text)` gets the completion
        so far while it grows (every `partial_interval`), and the same again every `partial_heartbeat`."""
        serving = self.begin(request, record, maybe_done)
        if isinstance(serving, GenerateResult):
            return serving
        try:
            self._follow(serving, on_partial)
        finally:
            self.release(serving.held)
        result, row = self.finish(serving)
        return self.answer(serving, result, self.recorder.record(row) if row is not None else None)

    def _follow(self, serving: Serving, on_partial: Callable[[str], None] | None) -> None:
        sent, sent_at = "", time.perf_counter()
        while True:
            try:
                serving.job.future.result(timeout=self.liveness.partial_interval)
                return
            except TimeoutError:
                if time.perf_counter() > serving.deadline:
                    self.engine.abandon(serving.job)  # the engine stops computing it
                    raise TimeoutError(f"generation took more than {self.settings.generate_timeout:.0f} s") from None
                text = serving.job.partial
                if on_partial is not None and (text != sent or
                                               time.perf_counter() - sent_at > self.liveness.partial_heartbeat):
                    on_partial(text)
                    sent, sent_at = text, time.perf_counter()

    def finish(self, serving: Serving) -> tuple[GenerateResult, dict | None]:
        """(The result of a finished stream, its `generations` row to record or None). Raises what the engine
        raised for the stream. The caller releases the cache entries."""
        from db.generations import generation_row

        from ..probability import picture_pieces, probability_summary

        stream, job, request = serving.job.future.result(timeout=0), serving.job, serving.request
        entry = serving.held[0]
        tokenizer = entry.checkpoint.tokenizer
        result = GenerateResult(
            text=stream.text, full_text=tokenizer.continue_text(request.prompt, stream.text), seed=stream.seed,
            tokens=len(stream.tokens), finish_reason=stream.finish_reason, unknown=stream.unknown,
            latency_ms=round((time.perf_counter() - serving.started) * 1000),
            load_ms=round((job.submitted - serving.started) * 1000), batch_peak=job.batch_peak,
            checkpoint_id=request.checkpoint_id, probability=ProbabilitySummary(**probability_summary(stream)),
            **request.routing())
        if not serving.record or entry.persona_id is None:
            return result, None
        # the probability summary and the picture's pieces go to the row (Info draws them later)
        row = generation_row(
            entry.persona_id, prompt=request.prompt, output=result.text, seed=result.seed,
            params={**serving.params.model_dump(mode="json"),
                    "probability": {**result.probability.model_dump(mode="json"),
                                    "pieces": picture_pieces(stream, tokenizer)}},
            checkpoint=request.checkpoint_id, latency_ms=result.latency_ms, user_id=request.user_id,
            guild_id=request.guild_id, channel_id=request.channel_id, interaction_id=request.interaction_id,
            parent=request.parent_generation_id, request_id=request.request_id)
        return result, row

    def answer(self, serving: Serving, result: GenerateResult, recorded) -> GenerateResult:
        """The final result, given how its row was recorded (a worker.serve.recording.Recorded, or None)."""
        if recorded is None:
            return result
        if recorded.duplicate and recorded.id is not None:  # another run of this request recorded first
            earlier = self.recorded_result(serving.request)
            if earlier is None or earlier.text == result.text:  # (a seeded request: the same text)
                return result.model_copy(update={"generation_id": recorded.id, "duplicate": True})
            return earlier  # an unseeded one: the text that was recorded, not this run's
        return result.model_copy(update={"generation_id": recorded.id})

    def recorded_result(self, request: GenerateRequest) -> GenerateResult | None:
        """The result of a request recorded earlier (by another run of the same job), rebuilt from its row,
        or None. A redelivered job answers with what the first run wrote, even if its seed was not fixed."""
        from sqlalchemy import select

        from db import Generation, session_scope

        with session_scope() as session:
            row = session.scalars(select(Generation).where(Generation.request_id == request.request_id)).first()
            if row is None:
                return None
            text, prompt, seed, generation_id = row.output, row.prompt, row.seed, row.id
            checkpoint_id, latency_ms = row.checkpoint_id, row.latency_ms
        entry = self.cache.acquire(checkpoint_id) if checkpoint_id is not None else None
        try:
            full_text = entry.checkpoint.tokenizer.continue_text(prompt, text) if entry else prompt + text
        finally:
            if entry is not None:
                self.cache.release(entry)
        return GenerateResult(text=text, full_text=full_text, seed=seed, latency_ms=latency_ms,
                              checkpoint_id=checkpoint_id, generation_id=generation_id, duplicate=True,
                              **request.routing())


def engine_threads() -> int:
    """Intra-op threads for the engine when not configured: the engine is one serial loop over small
    matrices, and the worker's job threads, Redis and the database need CPU too, so half the cores (at
    most 4). On a loaded 2-core machine a second thread made batched steps slower, not faster."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))
