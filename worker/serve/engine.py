"""The batched generation engine: one thread per worker process owns the device and steps every request.

A generate task `submit()`s its request here and returns (worker/delivery.py answers it when its future
resolves), so the batch is not bounded by the worker's Celery threads. The engine thread keeps one
`trainer.sample.BatchSampler` per checkpoint id. Between two steps it lets waiting requests join (their
prompt is prefilled by `BatchSampler.add`), then advances every active batch by one token; a request that
finishes leaves at that step boundary and its future is resolved. Every request keeps its own sampling
parameters and seed, and the sampler's counter-based randomness makes its text independent of who else
shares the batch; with one exception: a batch of exactly one stream of an fp32 LSTM char model steps
with int8 weights (trainer/quantize.py) where that measured faster (`generate_int8`), so a seed gives
another text alone than in company (held-out loss +0.0004 nats, bench/generation.py).

The engine thread is the one thread of a generate worker that uses torch, loading included: a checkpoint
load (`call`) and a blend run on it between two steps. Every other thread that ran a torch op would bring
its own intra-op thread pool to the same cores and slow the steps down; they only read storage and the
database, and hand over. CUDA is touched only by this thread, in the worker process that will use it
(never in a parent that forks), and the device it picks is used for every model afterwards.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from core.contracts import SamplingParams
from trainer.sample import BatchSampler, Stream

from .cache import Entry

log = logging.getLogger(__name__)
ADMIT_SECONDS = 0.005  # prefill work admitted per step boundary before the next step
# The engine's thread lets go of the GIL for every torch op and needs it back for the Python between them;
# meanwhile another thread of the worker (Celery's consumer and task threads, the state writers, recording)
# may take it and keep it for up to Python's switch interval, 5 ms by default, many times per step. In a
# process with an engine it is this at most (bench/speed/queue_load.py --side-by-side, one A/B on a loaded
# 2-core host: the queue's throughput +11 % / +9 % at 128 / 256 jobs; the runs' noise is as large, see
# docs/benchmarks.md).
GIL_SWITCH_SECONDS = 0.0005
OS_THREAD_NAME = "gen-engine"  # the engine thread's name in the OS (top -H, /proc/<pid>/task/*/comm)


def name_os_thread(name: str) -> None:
    """Name the calling thread in the OS (Linux: at most 15 bytes), where `top -H` and /proc show it and
    bench/speed/queue_load.py finds the engine thread's scheduler times; elsewhere nothing."""
    if sys.platform != "linux":
        return
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # 15: PR_SET_NAME
    except (OSError, AttributeError):
        pass


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class EngineRequest:
    entry: Entry
    prompt: str
    params: SamplingParams
    future: Future = field(default_factory=Future)
    stream: Stream | None = None
    batch_peak: int = 0  # the largest batch this request was stepped in (proof of batching)
    submitted: float = field(default_factory=time.perf_counter)
    # A blended voice: the voices' cache entries, weights and names. The request's `entry` is the first
    # voice; requests for the same blend share a batch.
    voices: tuple[Entry, ...] = ()
    weights: tuple[float, ...] = ()
    names: tuple[str, ...] = ()
    owner: int | None = None  # the server it counts against: the engine shares its time fairly between owners

    @property
    def batch_key(self) -> tuple:
        """(owner, model): one server's flood never shares a step with another server's request."""
        if not self.voices:
            return self.owner, self.entry.checkpoint_id
        return self.owner, ("blend", *(x for e, w in zip(self.voices, self.weights) for x in (e.checkpoint_id, w)))

    abandoned: bool = False  # nobody waits for the answer any more (Engine.abandon)

    @property
    def partial(self) -> str:
        """The completion so far (read from another thread: a str attribute, swapped atomically)."""
        return self.stream.text if self.stream is not None else ""


@dataclass
class _Call:
    """Torch work handed to the engine's thread (a checkpoint load): run between two steps."""

    fn: Callable[[], object]
    future: Future = field(default_factory=Future)


class Abandoned(Exception):
    """The request's stream was stopped unfinished: its caller gave up on it (Engine.abandon)."""


@dataclass
class _Batch:
    sampler: BatchSampler
    jobs: dict[int, EngineRequest] = field(default_factory=dict)  # id(stream) -> job
    single_stream: object | None = None  # the model that steps the batch while it holds one stream
    stepped: int = 0  # the engine's step count when it last stepped this batch (round robin within an owner)


class FairShare:
    """Which batch steps next: the one whose owner (server) has had the least engine time lately, each
    owner's time decaying with a half-life of `half_life` seconds (least attained service). A server asking
    for little is stepped at once, whatever another server's flood holds; a server alone gets every step;
    the decay keeps a heavy server from being starved for long by a stream of light ones."""

    def __init__(self, half_life: float = 5.0, clock=time.perf_counter):
        self.half_life, self.clock = half_life, clock
        self._used: dict[int | None, tuple[float, float]] = {}  # owner -> (seconds used, as of when)

    def used(self, owner: int | None, now: float | None = None) -> float:
        seconds, at = self._used.get(owner, (0.0, 0.0))
        now = self.clock() if now is None else now
        return seconds * 0.5 ** ((now - at) / self.half_life)

    def charge(self, owner: int | None, seconds: float) -> None:
        now = self.clock()
        self._used[owner] = (self.used(owner, now) + seconds, now)

    def pick(self, batches: dict[tuple, _Batch]) -> tuple:
        """The key of the batch to step: least-served owner first, then its least recently stepped batch."""
        now = self.clock()
        return min(batches, key=lambda key: (self.used(key[0], now), batches[key].stepped))

    def forget_idle(self, owners: set) -> None:
        """Drop owners with nothing in the engine and little time left to remember."""
        for owner in [o for o in self._used if o not in owners and self.used(o) < 1e-3]:
            del self._used[owner]


def single_stream_model(model, mode: str = "auto", steps: int = 32):
    """The int8 model for batch-1 steps of `model`, or None: never with mode "off" or where it does not apply
    (not an fp32 LSTM char model with a full head, not on CPU); with "auto" only if it steps faster here
    (timed now, interleaved with the float model: the int8 kernels win on big models and lose on tiny ones)."""
    from trainer.quantize import quantize_for_serving

    if mode == "off":
        return None
    try:
        quantized = quantize_for_serving(model)
    except ValueError:
        return None
    if mode == "on":
        return quantized

    @torch.inference_mode()
    def clock(m) -> float:
        state, idx = m.init_state(1), torch.zeros(1, dtype=torch.long)
        started = time.perf_counter()
        for _ in range(steps):
            _, state = m.step(idx, state)
        return time.perf_counter() - started

    times = {"fp32": [], "int8": []}
    for _ in range(4):  # the first round warms both up; the minimum of the rest resists a noisy machine
        times["fp32"].append(clock(model))
        times["int8"].append(clock(quantized))
    fp32, int8 = min(times["fp32"][1:]), min(times["int8"][1:])
    log.info("single-stream step: fp32 %.0f us, int8 %.0f us: %s", fp32 / steps * 1e6, int8 / steps * 1e6,
             "int8" if int8 < 0.9 * fp32 else "fp32")
    return quantized if int8 < 0.9 * fp32 else None


class Engine:
    def __init__(self, device: str | torch.device = "cpu", threads: int = 0, int8: str = "off"):
        """`device`: a torch device or "auto" (CUDA when present), resolved by the engine's own thread."""
        self.threads = threads
        self._device_name, self._int8 = device, int8
        self._inbox: queue.SimpleQueue[EngineRequest | _Call] = queue.SimpleQueue()
        self._batches: dict[tuple, _Batch] = {}
        self._pending: dict[int | None, deque[EngineRequest]] = {}  # owner -> requests not yet in a batch
        self.fair = FairShare()
        self.steps = 0  # batched steps taken
        self.abandoned = 0  # streams stopped unfinished because their caller gave up
        self.max_batch = 0
        sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_SECONDS))
        self._thread = threading.Thread(target=self._run, name="generation-engine", daemon=True)
        self._started = threading.Event()
        self._failed: Exception | None = None
        self._thread.start()
        self._started.wait()  # the device is known once the thread has picked it
        if self._failed is not None:
            raise self._failed

    def call(self, fn: Callable[[], object]):
        """fn() run on the engine's thread between two steps (torch work: a checkpoint load); its result, or
        what it raised. Waits while the engine finishes its current step."""
        if threading.get_ident() == self._thread.ident:
            return fn()
        work = _Call(fn)
        self._inbox.put(work)
        return work.future.result()

    def load(self, checkpoint_id: int, data: bytes, name: str, precision: str):
        """(The checkpoint of these bytes with its model built on this engine's device, on its thread; the bytes
        the model holds). Raises what building it raised (a corrupt or forged file: CheckpointError)."""
        from trainer.checkpoint import from_bytes

        from .cache import for_serving

        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        return self.call(lambda: for_serving(from_bytes(data, name=name, device=self.device, dtype=dtype)))

    def forget(self, checkpoint_id: int) -> None:
        """The cache evicted it (its entry held the model: nothing to do here; see engine_process.py)."""

    def submit(self, entry: Entry, prompt: str, params: SamplingParams, *, voices: tuple[Entry, ...] = (),
               weights: tuple[float, ...] = (), names: tuple[str, ...] = (), owner: int | None = None) -> EngineRequest:
        """Queue a request for `entry`'s model, or for the blend of `voices` (entries the caller holds for
        the request's whole life) with `weights`, on behalf of `owner` (a server id, or None)."""
        job = EngineRequest(entry, prompt, params, voices=tuple(voices), weights=tuple(weights), names=tuple(names),
                            owner=owner)
        self._inbox.put(job)
        return job

    def abandon(self, job: EngineRequest) -> None:
        """Stop computing `job`, whose caller gave up on it (its deadline passed): it goes through the inbox
        again and leaves its batch at the next step boundary; its future fails with Abandoned."""
        job.abandoned = True
        self._inbox.put(job)

    # -- the engine thread ----------------------------------------------------------------------------

    def _setup(self) -> bool:
        """On the engine's thread: its intra-op threads and its device (a bad name: the constructor raises)."""
        name_os_thread(OS_THREAD_NAME)
        try:
            if self.threads:
                torch.set_num_threads(self.threads)
            self.device = pick_device(str(self._device_name))
            self.int8 = self._int8 if self.device.type == "cpu" else "off"
            return True
        except Exception as e:  # noqa: BLE001
            self._failed = e
            return False
        finally:
            self._started.set()

    def _run(self) -> None:
        if not self._setup():
            return
        while True:
            if not self._batches and not self._pending:  # idle: sleep until a request arrives
                self._arrive(self._inbox.get())
            while True:  # whoever arrived during the last step waits its turn to join
                try:
                    self._arrive(self._inbox.get_nowait())
                except queue.Empty:
                    break
            self._admit()
            if self._batches:
                key = self.fair.pick(self._batches)
                started = time.perf_counter()
                self._step(key)
                self.fair.charge(key[0], time.perf_counter() - started)
                if not self.steps % 1000:
                    self.fair.forget_idle({k[0] for k in self._batches} | set(self._pending))

    def _arrive(self, job: EngineRequest | _Call) -> None:
        """A new request waits with its owner's others; an abandoned one leaves (or never joins); a call runs."""
        if isinstance(job, _Call):
            try:
                job.future.set_result(job.fn())
            except BaseException as e:  # noqa: BLE001 - the caller gets it
                job.future.set_exception(e)
            return
        if job.abandoned:
            waiting = self._pending.get(job.owner)
            if waiting is not None and any(j is job for j in waiting):
                self._pending[job.owner] = deque(j for j in waiting if j is not job)
                if not self._pending[job.owner]:
                    del self._pending[job.owner]
            self._leave(job)
            return
        self._pending.setdefault(job.owner, deque()).append(job)

    def _admit(self) -> None:
        """Waiting requests join their batches, least-served owner first, for at most ADMIT_SECONDS per step
        boundary (at least one): a prompt's prefill is real work, and a hundred arriving together must not
        hold another server's next step. The prefill is charged to the owner whose request it is."""
        deadline = time.perf_counter() + ADMIT_SECONDS
        while self._pending:
            owner = min(self._pending, key=self.fair.used)
            waiting = self._pending[owner]
            job = waiting.popleft()
            if not waiting:
                del self._pending[owner]
            started = time.perf_counter()
            self._join(job)
            self.fair.charge(owner, time.perf_counter() - started)
            if time.perf_counter() > deadline:
                return

    def _join(self, job: EngineRequest) -> None:
        if job.abandoned:
            self._leave(job)
            return
        checkpoint_id = job.batch_key
        batch = self._batches.get(checkpoint_id)
        try:
            if batch is None and job.voices:
                from trainer.blend import blend

                model, tokenizer = blend([e.checkpoint for e in job.voices], list(job.weights), list(job.names))
                batch = _Batch(BatchSampler(model, tokenizer, self.device))
            elif batch is None:
                ckpt = job.entry.checkpoint
                batch = _Batch(BatchSampler(ckpt.model, ckpt.tokenizer, self.device),
                               single_stream=self._single(job.entry))
            job.stream = batch.sampler.add(job.prompt, job.params)
        except Exception as e:  # noqa: BLE001 - a bad request fails alone
            job.future.set_exception(e)
            return
        self._batches[checkpoint_id] = batch
        batch.jobs[id(job.stream)] = job
        size = len(batch.sampler)
        self.max_batch = max(self.max_batch, size)
        for other in batch.jobs.values():  # a batch only grows when somebody joins
            other.batch_peak = max(other.batch_peak, size)

    def _single(self, entry: Entry):
        """The entry's single-stream model, decided once per cache entry (here: only this thread steps)."""
        if not entry.single_stream_decided:
            try:
                entry.single_stream = single_stream_model(entry.checkpoint.model, self.int8)
                if entry.single_stream is not None:
                    # counted against the cache's memory cap from its next acquire or release on (a plain int
                    # written once by this thread; the cache sums it under its own lock)
                    entry.n_bytes += entry.single_stream.added_bytes()
            except Exception:  # noqa: BLE001 - an optimisation: serve in float rather than fail
                log.exception("int8 single-stream model of checkpoint %s failed; serving fp32", entry.checkpoint_id)
            entry.single_stream_decided = True
        return entry.single_stream

    def _step(self, checkpoint_id: tuple) -> None:
        batch = self._batches[checkpoint_id]
        batch.stepped = self.steps
        alone = batch.single_stream if batch.single_stream is not None and len(batch.sampler) == 1 else None
        try:
            finished = batch.sampler.step(model=alone)
        except Exception as e:
            log.exception("generation step failed for checkpoint %s", checkpoint_id)
            for job in batch.jobs.values():
                job.future.set_exception(e)
            del self._batches[checkpoint_id]
            return
        self.steps += 1
        for stream in finished:
            batch.jobs.pop(id(stream)).future.set_result(stream)
        if not batch.jobs:
            del self._batches[checkpoint_id]  # the sampler goes; the model stays in the cache

    def _leave(self, job: EngineRequest) -> None:
        """An abandoned job out of its batch (or never into one)."""
        if job.future.done():  # finished, or failed, before the engine saw it abandoned
            return
        if job.stream is None:
            job.future.set_exception(Abandoned("abandoned before it started"))
            return
        batch = self._batches[job.batch_key]
        batch.sampler.drop([job.stream])
        del batch.jobs[id(job.stream)]
        if not batch.jobs:
            del self._batches[job.batch_key]
        self.abandoned += 1
        log.warning("stopped an abandoned stream after %d tokens", len(job.stream.tokens))
        job.future.set_exception(Abandoned(f"stopped after {len(job.stream.tokens)} tokens"))
