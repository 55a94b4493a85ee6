"""Checkpoints kept loaded in a generate worker: an LRU keyed by checkpoint id, under a memory cap.

A checkpoint id names immutable bytes (a promoted checkpoint is a new id), so an entry never goes stale:
a request for a newly promoted checkpoint simply loads the new id. Entries in use by running requests
are never evicted; when everything is in use the cap is exceeded rather than failing a request.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from trainer.checkpoint import Checkpoint


@dataclass
class Entry:
    checkpoint_id: int
    checkpoint: Checkpoint
    persona_id: int | None
    n_bytes: int
    users: int = 0
    # the int8 model that steps this checkpoint when it is served alone (worker/engine.py), once decided
    single_stream: object | None = None
    single_stream_decided: bool = False


def model_bytes(model: torch.nn.Module) -> int:
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def for_serving(checkpoint: Checkpoint) -> tuple[Checkpoint, int]:
    """(The checkpoint as the cache keeps it, the bytes its model holds): generation needs only the model, so
    the optimizer moments etc. go. It touches tensors: in a worker, call it on the engine's thread."""
    checkpoint.tensors.clear()
    return checkpoint, model_bytes(checkpoint.model)


class CheckpointCache:
    """`acquire(id)` → a loaded Entry (loading it at most once, however many threads ask); `release` it
    when the request is done. `load(id)` returns (*for_serving(checkpoint), persona_id), is called without
    the lock, and in a worker builds the model on the engine's thread (worker/serve/runtime.py): the cache
    itself never touches a tensor."""

    def __init__(self, load: Callable[[int], tuple[Checkpoint, int, int | None]], max_bytes: int,
                 on_evict: Callable[[Entry], None] = lambda entry: None):
        self._load = load
        self.max_bytes = max_bytes
        self._on_evict = on_evict  # told of each entry evicted (the engine's process drops its model)
        self._entries: OrderedDict[int, Entry] = OrderedDict()
        self._loading: dict[int, threading.Event] = {}
        self._lock = threading.Lock()
        self.loads = 0  # how many times a checkpoint was read from storage (tests, metrics)
        self.hits = 0  # acquires that found their checkpoint loaded (or waited for another thread's load)
        self.evictions = 0

    def acquire(self, checkpoint_id: int) -> Entry:
        while True:
            with self._lock:
                entry = self._entries.get(checkpoint_id)
                if entry is not None:
                    self._entries.move_to_end(checkpoint_id)
                    entry.users += 1
                    self.hits += 1
                    return entry
                waiting = self._loading.get(checkpoint_id)
                if waiting is None:
                    self._loading[checkpoint_id] = threading.Event()
                    break
            waiting.wait()  # another thread is loading it; then take it from the cache
        try:
            checkpoint, n_bytes, persona_id = self._load(checkpoint_id)
        except BaseException:
            with self._lock:
                self._loading.pop(checkpoint_id).set()
            raise
        entry = Entry(checkpoint_id, checkpoint, persona_id, n_bytes, users=1)
        with self._lock:
            self._entries[checkpoint_id] = entry
            self.loads += 1
            self._evict()
            self._loading.pop(checkpoint_id).set()
        return entry

    def release(self, entry: Entry) -> None:
        with self._lock:
            entry.users -= 1
            self._evict()

    def _evict(self) -> None:
        total = sum(e.n_bytes for e in self._entries.values())
        for cid in list(self._entries):
            if total <= self.max_bytes:
                break
            entry = self._entries[cid]
            if entry.users == 0:
                del self._entries[cid]
                total -= entry.n_bytes
                self.evictions += 1
                self._on_evict(entry)

    @property
    def n_bytes(self) -> int:
        """Bytes held by the loaded models (int8 copies included)."""
        with self._lock:
            return sum(e.n_bytes for e in self._entries.values())

    def __contains__(self, checkpoint_id: int) -> bool:
        return checkpoint_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)
