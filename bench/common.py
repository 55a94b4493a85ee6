"""What the benchmarks share: the repository root, the results folder, corpora found by name on the configured
corpus path, the environment of a bench that runs the real services and its `celery worker`s, and a plain
markdown table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from core.settings import load_settings
from core.text import DecodedCorpus
from trainer.corpus import find_corpus
from trainer.datasets import load_named_corpus

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

def corpus_dirs() -> list[Path]:
    """The folders searched for corpora by name: IMPROBABLE_CORPUS_PATH, or the settings' default folders."""
    return load_settings().corpus_dirs


def corpus_file(name: str) -> Path:
    """The text file (or multi-document folder) of a corpus name on the corpus path."""
    return find_corpus(name, corpus_dirs())


def load_corpus(name: str) -> DecodedCorpus:
    """A corpus by name (or path): one on the corpus path, a selection (trainer.corpus.SELECTIONS), or one a
    package ships."""
    return load_named_corpus(name, corpus_dirs())


def service_environment(work: Path, redis_url: str, database_url: str | None, **settings: object) -> dict[str, str]:
    """The IMPROBABLE_* variables of a bench that runs the real services, set in os.environ too (this process
    and the `celery worker`s it starts agree): the broker at `redis_url`, its database flushed; the database
    at `database_url` (None: a SQLite file in `work`); data and storage in `work`; and each of `settings` as
    IMPROBABLE_<NAME>."""
    env = {"IMPROBABLE_BROKER_URL": redis_url, "IMPROBABLE_DATA_DIR": str(work),
           "IMPROBABLE_DATABASE_URL": database_url or f"sqlite:///{work / 'improbable.db'}",
           "IMPROBABLE_STORAGE_URL": str(work / "storage"),
           **{f"IMPROBABLE_{name.upper()}": str(value) for name, value in settings.items()}}
    os.environ.update(env)
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    return env


def start_worker(env: dict[str, str], *, name: str, queues: str, pool: str, concurrency: int, log_path: Path,
                 log_level: str = "WARNING") -> subprocess.Popen:
    """A `celery worker` of worker.app called `name`@localhost, consuming `queues` (comma-separated) with
    `pool` and `concurrency`, with os.environ and `env` (see service_environment); its output goes to
    `log_path`."""
    cmd = [str(Path(sys.executable).with_name("celery")), "-A", "worker.app", "worker", "-Q", queues,
           "--pool", pool, "-c", str(concurrency), "-n", f"{name}@localhost", "--without-gossip",
           "--without-mingle", "-l", log_level]
    log = open(log_path, "wb")  # noqa: SIM115 - open as long as the process runs
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)


def print_table(title: str, rows: list[dict]) -> None:
    if not rows:
        return
    keys = list(dict.fromkeys(k for row in rows for k in row))
    widths = [max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys]
    print(f"\n## {title}\n")
    print("| " + " | ".join(k.ljust(w) for k, w in zip(keys, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(r.get(k, "")).ljust(w) for k, w in zip(keys, widths)) + " |")
