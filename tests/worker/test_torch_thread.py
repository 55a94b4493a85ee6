"""The engine's thread is the only thread of a generate worker's runtime that calls torch, checkpoint loads
included: a torch op on any other thread would start a second intra-op pool on the same cores."""

from __future__ import annotations

import threading

from core.contracts import GenerateRequest
from worker.serve.runtime import Runtime

from .support import generate_request


class TorchCalls:
    """A profile hook (threading.setprofile: every thread started while it is set) noting, per thread name,
    the torch functions and tensor methods that thread called from Python."""

    def __init__(self):
        self.by_thread: dict[str, set[str]] = {}

    def hook(self, frame, event, arg) -> None:
        if event == "c_call" and self.is_torch(arg):
            name = getattr(arg, "__qualname__", None) or repr(arg)
            self.by_thread.setdefault(threading.current_thread().name, set()).add(name)

    @staticmethod
    def is_torch(fn) -> bool:
        owner = getattr(fn, "__self__", None)
        return (getattr(fn, "__module__", None) or "").startswith("torch") or (
            owner is not None and type(owner).__module__.startswith("torch"))


def test_checkpoint_loads_and_steps_run_on_the_engine_thread_only(services, checkpoint_id):
    calls, results = TorchCalls(), []
    threading.setprofile(calls.hook)
    try:
        runtime = Runtime()  # this process configured as the package's workers are (no broker: serve() waits)
        jobs = [threading.Thread(target=lambda i=i: results.append(runtime.serve(
                    GenerateRequest.model_validate(generate_request(checkpoint_id, seed=i, max_tokens=30)),
                    record=False)), name=f"job-{i}") for i in range(3)]
        for job in jobs:  # three request threads ask for the same unloaded checkpoint at once
            job.start()
        for job in jobs:
            job.join(timeout=120)
    finally:
        threading.setprofile(None)
    assert sorted(r.tokens for r in results) == [30, 30, 30] and runtime.cache.loads == 1
    engine_calls = calls.by_thread.get("generation-engine", set())
    assert {"_VariableFunctionsClass.frombuffer", "_VariableFunctionsClass.lstm_cell"} <= engine_calls  # load, steps
    assert set(calls.by_thread) == {"generation-engine"}, {k: sorted(v)[:8] for k, v in calls.by_thread.items()}
