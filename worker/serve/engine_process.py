"""The generation engine in a process of its own (IMPROBABLE_GENERATE_ENGINE=process), fed through a pipe.

In a generate worker the engine's thread shares one GIL with a dozen threads that take it hundreds of times a
second (Celery's consumer and task threads, delivery, the state writers, recording, leases), and it gives the
GIL up at every torch op, about 55 a step: measured around each round of bench/speed/queue_load.py, it was off
the CPU, waiting, 15 % of the time, about half of the whole queue's gap to the engine alone. Here the same
`Engine` runs in a child process (spawned, never forked: CUDA starts there) whose only other threads read this
pipe and send the partial texts back, so the worker's own threads never hold the engine's GIL.

    worker process (Runtime, delivery, Celery)            engine process (_EngineServer)
      EngineProcess.load(id, bytes)  ── load ──────▶  Engine.load: the model, built on the engine thread
      EngineProcess.submit(...)      ── submit ────▶  Engine.submit → batched steps
      job.partial                    ◀─ partial ───  every PARTIAL_PUSH seconds, texts that grew
      job.future                     ◀─ done/failed  the finished stream (a FinishedStream) or its exception
      cache eviction → forget(id)    ── forget ────▶  the model dropped

The worker process keeps the tokenizer of each checkpoint (read from the header, no tensor) for the answer;
models live only in the engine's process. If that process dies the worker exits (os._exit): its jobs are
re-published by another worker's lease reaper, as for any dead worker (worker/serve/leases.py), and the
process supervisor (Docker, systemd) starts it again. Between the two processes only the worker's own pipe
carries pickles: never a file or a message from outside.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

log = logging.getLogger(__name__)
PARTIAL_PUSH = 0.1  # seconds between two sends of the partial texts that grew (delivery reads them every 0.5 s)
DIED_EXIT_CODE = 70  # the worker's exit status when its engine's process died


@dataclass
class FinishedStream:
    """What a finished `trainer.sample.Stream` tells its answer (runtime.finish, worker/probability.py)."""

    prompt: str
    text: str
    tokens: list[int]
    seed: int
    finish_reason: str | None
    unknown: list
    probabilities: list[float]
    picks: list

    @classmethod
    def of(cls, stream) -> FinishedStream:
        return cls(stream.prompt, stream.text, list(stream.tokens), stream.seed, stream.finish_reason,
                   list(stream.unknown), [float(p) for p in stream.probabilities], list(stream.picks))


@dataclass
class RemoteRequest:
    """A request in the engine's process, as the worker's side follows it (the fields of EngineRequest that
    delivery and the runtime read)."""

    rid: int
    entry: object  # the worker's cache.Entry of the request's model: its n_bytes follow the engine's copy
    future: Future = field(default_factory=Future)
    partial: str = ""
    batch_peak: int = 0
    submitted: float = field(default_factory=time.perf_counter)


# -- the engine's process -----------------------------------------------------------------------------------

class _EngineServer:
    """In the engine's process: one Engine, the models loaded into it (by checkpoint id), its running requests
    (by the worker's request id), and the one pipe to the worker."""

    def __init__(self, conn, engine):
        self.conn, self.engine = conn, engine
        self.entries: dict[int, object] = {}  # checkpoint id -> cache.Entry of the model built here
        self.running: dict[int, object] = {}  # request id -> EngineRequest
        self._sent: dict[int, str] = {}  # request id -> the partial text last sent
        self._send_lock = threading.Lock()

    def send(self, message) -> None:
        with self._send_lock:
            self.conn.send(message)

    def serve(self) -> None:
        """Read the worker's messages until it is gone, then return (and the process ends)."""
        threading.Thread(target=self._push_partials, name="engine-partials", daemon=True).start()
        handlers = {"load": self._load, "forget": self._forget, "submit": self._submit, "abandon": self._abandon}
        while True:
            try:
                kind, *args = self.conn.recv()
            except EOFError:  # the worker is gone: so is its engine
                return
            handlers[kind](*args)

    def _load(self, checkpoint_id: int, data: bytes, name: str, precision: str) -> None:
        from .cache import Entry

        try:
            checkpoint, n_bytes = self.engine.load(checkpoint_id, data, name, precision)
        except Exception as e:  # noqa: BLE001 - a forged or corrupt checkpoint: its loader gets the error
            self.send(("load_failed", checkpoint_id, e))
            return
        self.entries[checkpoint_id] = Entry(checkpoint_id, checkpoint, None, n_bytes)
        self.send(("loaded", checkpoint_id, n_bytes))

    def _forget(self, checkpoint_id: int) -> None:
        self.entries.pop(checkpoint_id, None)

    def _submit(self, rid: int, voice_ids: list[int], prompt: str, params: dict, weights: list, names: list,
                owner) -> None:
        from core.contracts import SamplingParams

        try:
            voices = [self.entries[cid] for cid in voice_ids]
        except KeyError as e:
            self.send(("failed", rid, RuntimeError(f"checkpoint {e} is not loaded in the engine's process")))
            return
        job = self.engine.submit(voices[0], prompt, SamplingParams.model_validate(params),
                                 voices=tuple(voices) if len(voice_ids) > 1 or weights else (),
                                 weights=tuple(weights), names=tuple(names), owner=owner)
        self.running[rid] = job
        job.future.add_done_callback(lambda future: self._finished(rid, job, voices[0], future))

    def _abandon(self, rid: int) -> None:
        if rid in self.running:
            self.engine.abandon(self.running[rid])

    def _finished(self, rid: int, job, entry, future: Future) -> None:
        """A stream ended: its text (and the bytes its model now holds, an int8 copy included) or its error."""
        self.running.pop(rid, None)
        error = future.exception()
        if error is None:
            self.send(("done", rid, FinishedStream.of(future.result()), job.batch_peak, entry.n_bytes))
            return
        try:
            self.send(("failed", rid, error))
        except Exception:  # noqa: BLE001 - an exception that does not pickle: its type and message do
            self.send(("failed", rid, RuntimeError(f"{type(error).__name__}: {error}")))

    def _push_partials(self) -> None:
        """Every PARTIAL_PUSH seconds, the partial texts that grew since they were last sent."""
        while True:
            time.sleep(PARTIAL_PUSH)
            grown, running = {}, dict(self.running)
            for rid, job in running.items():
                text = job.partial
                if text != self._sent.get(rid):
                    grown[rid] = self._sent[rid] = text
            for rid in [rid for rid in self._sent if rid not in running]:  # finished meanwhile
                self._sent.pop(rid, None)
            if grown:
                self.send(("partial", grown))


def _serve(conn, device: str, threads: int, int8: str) -> None:
    """The engine process's main function: start the Engine (or say why it cannot), then serve the worker."""
    from .engine import Engine

    try:
        engine = Engine(device, threads, int8=int8)
    except Exception as e:  # noqa: BLE001 - a bad device name: the worker says so
        conn.send(("failed_start", e))
        return
    conn.send(("ready", str(engine.device)))
    _EngineServer(conn, engine).serve()


# -- the worker's side --------------------------------------------------------------------------------------

class EngineProcess:
    """The Engine's interface (load, submit, abandon, forget, device) for an engine in a child process."""

    def __init__(self, device: str = "auto", threads: int = 0, int8: str = "off"):
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, str(device), threads, int8),
                                       name="generation-engine", daemon=True)
        self.process.start()
        child.close()
        try:
            kind, detail = self._conn.recv()
        except EOFError:
            self.process.join(5)
            raise RuntimeError(f"the generation engine's process did not start (exit code {self.process.exitcode}); "
                               "see the worker's log") from None
        if kind == "failed_start":
            self.process.join(5)
            raise detail
        import torch

        self.device = torch.device(detail)
        self._ids = itertools.count()
        self._requests: dict[int, RemoteRequest] = {}
        self._loads: dict[int, Future] = {}
        self._send_lock = threading.Lock()
        self._exiting = False
        atexit.register(self._exit)  # runs before multiprocessing's own, which stops the engine's process
        threading.Thread(target=self._read, name="engine-pipe", daemon=True).start()

    def _exit(self) -> None:
        self._exiting = True

    def _send(self, message) -> None:
        with self._send_lock:
            self._conn.send(message)

    def load(self, checkpoint_id: int, data: bytes, name: str, precision: str):
        """(The checkpoint without its model: header and tokenizer, for the answer; the bytes its model holds in
        the engine's process, where it is built). Raises what building it raised (a corrupt or forged file:
        trainer.checkpoint.CheckpointError)."""
        from trainer.checkpoint import without_model

        header = without_model(data, name)  # checked before the bytes go anywhere
        done = self._loads[checkpoint_id] = Future()
        self._send(("load", checkpoint_id, data, name, precision))
        return header, done.result()

    def forget(self, checkpoint_id: int) -> None:
        """The cache evicted it: the engine's process drops its model."""
        self._send(("forget", checkpoint_id, None))

    def submit(self, entry, prompt: str, params, *, voices=(), weights=(), names=(), owner=None) -> RemoteRequest:
        rid = next(self._ids)
        job = self._requests[rid] = RemoteRequest(rid, entry)
        voice_ids = [v.checkpoint_id for v in voices] or [entry.checkpoint_id]
        self._send(("submit", rid, voice_ids, prompt, params.model_dump(mode="json"), list(weights), list(names),
                    owner))
        return job

    def abandon(self, job: RemoteRequest) -> None:
        self._send(("abandon", job.rid))

    def _read(self) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                if not self._exiting:  # (at the worker's own exit the engine's process goes with it)
                    self._died()
                return
            kind, rid = message[0], message[1]  # (a partial message carries {request id: text} instead)
            if kind == "partial":
                for request_id, text in message[1].items():
                    job = self._requests.get(request_id)
                    if job is not None:
                        job.partial = text
            elif kind == "done":
                job = self._requests.pop(rid)
                job.batch_peak = message[3]
                # an int8 single-stream copy made in the engine's process counts against the worker's cache cap
                # (a plain int, summed by the cache under its lock, as the thread engine's own entries do)
                job.entry.n_bytes = max(job.entry.n_bytes, message[4])
                job.future.set_result(message[2])
            elif kind == "failed":
                self._requests.pop(rid).future.set_exception(message[2])
            elif kind == "loaded":
                self._loads.pop(rid).set_result(message[2])
            elif kind == "load_failed":
                self._loads.pop(rid).set_exception(message[2])

    def _died(self) -> None:
        """The engine's process is gone (killed, out of memory): so is every model and running stream. The
        worker exits so that its jobs are taken over by another worker's reaper, as if it had died itself."""
        self.process.join(1)
        log.critical("the generation engine's process died (exit code %s): the worker exits; its jobs are "
                     "re-published by another worker", self.process.exitcode)
        logging.shutdown()
        os._exit(DIED_EXIT_CODE)
