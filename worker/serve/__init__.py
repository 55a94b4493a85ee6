"""Serving generate jobs: `Runtime` (runtime.py) owns a process's engine (engine.py: batched stepping),
checkpoint cache (cache.py), recorder (recording.py: one `generations` row per request), delivery
(delivery.py: states written to the result backend from the engine's side) and leases (leases.py: a dead
worker's jobs re-published). The `improbable.generate` task's instance holds the process's one Runtime
(worker/tasks.py)."""
