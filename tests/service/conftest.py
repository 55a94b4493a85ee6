"""Fixtures of the service tests: each test's own copy of a real migrated, seeded SQLite file."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import db
from tests.environment import configured


@pytest.fixture(scope="session")
def seeded_template(tmp_path_factory) -> Path:
    """A SQLite file migrated to head and seeded, once a session (a migration per test would cost seconds)."""
    path = tmp_path_factory.mktemp("service-template") / "improbable.db"
    db.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def service_db(tmp_path, seeded_template) -> Iterator[Path]:
    """This process configured with a fresh copy of the template as its database, storage and data in
    tmp_path, and no broker; yields tmp_path."""
    shutil.copyfile(seeded_template, tmp_path / "improbable.db")
    values = {"IMPROBABLE_DATABASE_URL": f"sqlite:///{tmp_path / 'improbable.db'}",
              "IMPROBABLE_STORAGE_URL": str(tmp_path / "storage"), "IMPROBABLE_DATA_DIR": str(tmp_path / "data"),
              "IMPROBABLE_BROKER_URL": ""}
    with configured(values):
        yield tmp_path
