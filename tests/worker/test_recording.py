"""The generation recorder (worker/recording.py) on real PostgreSQL and SQLite: a request recorded twice is
one row, and one bad row (a NUL character, a persona that is gone) never fails the rows batched with it."""

from __future__ import annotations

import threading
import uuid

import pytest
from sqlalchemy import create_engine, func, select

import db
from db.generations import generation_row
from db.models import Generation, Persona
from worker.serve.recording import Recorder


def _row(persona_id: int, output: str, request_id: str | None = None, **extra) -> dict:
    return {**generation_row(persona_id, prompt="Alice was", output=output, seed=1, request_id=request_id), **extra}


def _record_together(recorder: Recorder, rows: list[dict]) -> list:
    """Hand every row to the recorder at once (from threads), so they share batches."""
    results: list = [None] * len(rows)
    barrier = threading.Barrier(len(rows))

    def one(i: int) -> None:
        barrier.wait()
        results[i] = recorder.record(rows[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(rows))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


@pytest.fixture(params=["postgresql", "sqlite"])
def engine(request, services, tmp_path):
    if request.param == "postgresql":
        yield db.get_engine()
        return
    url = f"sqlite:///{tmp_path / 'recording.db'}"
    db.upgrade(url)
    sqlite = create_engine(url)
    yield sqlite
    sqlite.dispose()


def _persona_id(engine) -> int:
    with engine.connect() as conn:
        return conn.scalar(select(Persona.id).where(Persona.slug == "alice"))


def test_a_request_recorded_twice_is_one_row(engine):
    recorder, persona = Recorder(engine), _persona_id(engine)
    key = uuid.uuid4().hex
    first = recorder.record(_row(persona, "first run", key))
    again = _record_together(recorder, [_row(persona, "second run", key), _row(persona, "third run", key)])
    assert not first.duplicate and first.id is not None
    assert all(r.duplicate and r.id == first.id for r in again)
    with engine.connect() as conn:
        rows = conn.execute(select(Generation.output).where(Generation.request_id == key)).scalars().all()
    assert rows == ["first run"]
    twin = uuid.uuid4().hex  # two runs of one request finishing in the same batch: one row, one "duplicate"
    both = _record_together(recorder, [_row(persona, "twin a", twin), _row(persona, "twin b", twin)])
    assert len({r.id for r in both}) == 1 and sorted(r.duplicate for r in both) == [False, True]


def test_one_bad_row_never_fails_its_batch(engine):
    recorder, persona = Recorder(engine), _persona_id(engine)
    tag = uuid.uuid4().hex[:8]
    good = [_row(persona, f"{tag} good {i}") for i in range(6)]
    nul = {**_row(persona, "x"), "output": f"{tag} has a NUL \x00 here"}  # past generation_row's stripping
    gone = _row(10**6, f"{tag} persona gone")  # foreign key violation (PostgreSQL; SQLite does not check)
    results = _record_together(recorder, [*good, nul, gone])
    assert all(r.id is not None and not r.duplicate for r in results[:6])
    with engine.connect() as conn:
        stored = conn.scalar(select(func.count()).select_from(Generation)
                             .where(Generation.output.like(f"{tag} good %")))
    assert stored == 6
    if engine.dialect.name == "postgresql":
        assert results[6].id is None and results[7].id is None


def test_generation_row_strips_nul():
    row = generation_row(1, prompt="a\x00b", output="c\x00d")
    assert (row["prompt"], row["output"]) == ("ab", "cd")
