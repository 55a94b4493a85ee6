"""The leaf every package stands on: settings, logs, metric definitions and the contracts (sampling
parameters, the generate request, training progress). Imports nothing of the project's own, and no
torch, Discord, Celery or database.

    settings.py   one settings object for every process (IMPROBABLE_* variables, secrets files)
    logs.py       text or JSON log lines
    metrics.py    the Prometheus metrics, readiness and the /metrics /healthz /readyz endpoint
    contracts.py  SamplingParams (bounds and help), GenerateRequest, RunProgress
"""
