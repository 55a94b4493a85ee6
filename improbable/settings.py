"""One settings object for every service. Environment variables use the IMPROBABLE_ prefix."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field
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

    @property
    def corpus_dirs(self) -> list[Path]:
        return [Path(p).expanduser() for p in self.corpus_path.split(os.pathsep) if p]

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'improbable.db'}"

    @property
    def effective_storage_url(self) -> str:
        return self.storage_url or str(self.data_dir / "storage")


@lru_cache
def get_settings() -> Settings:
    return Settings()
