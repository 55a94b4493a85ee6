"""One settings object for every service. Environment variables use the IMPROBABLE_ prefix."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    """Where the embedded defaults keep their SQLite file, storage and runs (XDG data dir)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "improbable"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IMPROBABLE_", env_file=".env", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir, description="Local state: SQLite, storage, runs.")
    corpus_path: str = Field("", description="Folders searched for corpora by name, separated by ':'.")
    database_url: str = Field("", description="SQLAlchemy URL; empty means a SQLite file in data_dir.")
    storage_url: str = Field("", description="fsspec URL for blobs; empty means data_dir/storage.")
    broker_url: str = Field("", description="Celery broker (Redis); empty means tasks run in-process.")
    result_backend: str = Field("", description="Celery result backend; defaults to the broker URL.")
    # workers (worker/)
    visibility_timeout: int = Field(7200, description="Seconds before Redis redelivers an unacknowledged job "
                                    "(after a worker died); keep it above the longest job.")
    broker_connect_timeout: float = Field(3.0, description="Seconds to reach the broker before failing.")
    device: str = Field("auto", description="Generation device: auto (CUDA when present), cpu, cuda, cuda:N.")
    torch_threads: int = Field(0, description="Intra-op threads for generation and training; 0 = PyTorch's.")
    model_cache_mb: int = Field(2048, description="Memory cap for checkpoints kept loaded by a worker.")
    generate_timeout: float = Field(120.0, description="Seconds a generate job may take before it fails.")
    max_generate_tokens: int = Field(2000, description="Upper bound on max_tokens of one generate job.")
    partial_interval: float = Field(0.5, description="Seconds between partial-text updates of a generate job.")
    train_report_seconds: float = Field(3.0, description="Seconds between progress writes of a training run.")
    train_lease_seconds: float = Field(120.0, description="A running run whose progress is older than this is "
                                       "taken to be orphaned (its trainer died) and is resumed.")
    train_max_minutes: float = Field(120.0, description="Upper bound on a training run's time budget.")
    discord_token: str = Field("", validation_alias=AliasChoices("IMPROBABLE_DISCORD_TOKEN", "DISCORD_TOKEN"),
                               description="Bot token; scheduled posts use it for the REST API.")
    discord_api_base: str = Field("https://discord.com/api/v10",
                                  validation_alias=AliasChoices("IMPROBABLE_DISCORD_API_BASE", "DISCORD_API_BASE"),
                                  description="Discord REST base URL (a local fake in tests).")

    @property
    def corpus_dirs(self) -> list[Path]:
        return [Path(p).expanduser() for p in self.corpus_path.split(os.pathsep) if p]

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'improbable.db'}"

    @property
    def effective_storage_url(self) -> str:
        return self.storage_url or str(self.data_dir / "storage")

    @property
    def runs_dir(self) -> Path:
        """Local working folders of training runs (checkpoints are also copied to storage)."""
        return self.data_dir / "runs"


@lru_cache
def get_settings() -> Settings:
    return Settings()
