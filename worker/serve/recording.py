"""Generation rows, written many per transaction by one thread, each exactly once.

Requests stepped in one batch finish together; 32 of them recording their row each through its own
session cost ~200 ms of commits and ORM work on 2 cores (measured), added to every answer. Here each
request hands its row to the recorder thread and waits for its id; the thread writes whatever has
arrived in one INSERT ... RETURNING (one commit) and resolves the waiters. The rows come from
db.generations.generation_row.

Exactly once: every row carries its job's request id (`generations.request_id`, unique). The insert is
insert-or-ignore (ON CONFLICT DO NOTHING, on SQLite and PostgreSQL), so a job that runs twice (redelivered,
or re-published by the lease reaper of worker/leases.py) gets the first run's row back, marked as a duplicate,
instead of writing a second one.

One bad row never fails its batch: any database error other than a lost connection (a constraint, a value
PostgreSQL refuses) makes the batch fall back to one insert per row, and only the bad row goes unrecorded.
A lost connection (PostgreSQL restarting) is retried with backoff for up to `outage` seconds
(core.contracts.Liveness.recording_outage).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass

from sqlalchemy import insert, select
from sqlalchemy.exc import InterfaceError, OperationalError, StatementError

from db import Generation, get_engine

log = logging.getLogger(__name__)
MAX_ROWS = 256  # per transaction
CONNECTION_ERRORS = (OperationalError, InterfaceError)


@dataclass(frozen=True)
class Recorded:
    id: int | None  # None: not recorded (its persona is gone, or the database refused the row)
    duplicate: bool = False  # the row was written earlier by another run of the same request


class Recorder:
    def __init__(self, engine=None, outage: float = 30.0):
        self._engine = engine  # None: the configured database (db.get_engine())
        self.outage = outage  # seconds a database outage is waited out before the jobs waiting on it fail
        self._inbox: queue.SimpleQueue[tuple[dict, Future]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="generation-recorder", daemon=True)
        self._thread.start()

    def record(self, row: dict, timeout: float | None = None) -> Recorded:
        """Insert a `generations` row (column → value) unless its request_id is recorded already."""
        return self.submit(row).result(self.outage + 30 if timeout is None else timeout)

    def submit(self, row: dict) -> Future:
        """`record` without waiting: a Future of the Recorded (or of the database's error)."""
        done: Future = Future()
        self._inbox.put(({**row, "request_id": row.get("request_id") or uuid.uuid4().hex}, done))
        return done

    def _run(self) -> None:
        while True:
            batch = [self._inbox.get()]
            while len(batch) < MAX_ROWS:
                try:
                    batch.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            try:
                results = self._insert_retrying([row for row, _ in batch])
            except CONNECTION_ERRORS as e:  # the database stayed away: every waiter gets the error
                for _, done in batch:
                    done.set_exception(e)
                continue
            except StatementError:  # IntegrityError, DataError, ...: find the bad row, write the others
                results = [self._insert_one(row) for row, _ in batch]
            except Exception as e:  # noqa: BLE001 - a bug must reach the jobs, not kill this thread
                for _, done in batch:
                    done.set_exception(e)
                continue
            for (_, done), result in zip(batch, results):
                if isinstance(result, BaseException):
                    done.set_exception(result)
                else:
                    done.set_result(result)

    def _insert_retrying(self, rows: list[dict]) -> list[Recorded]:
        deadline, pause = time.monotonic() + self.outage, 0.5
        while True:
            try:
                return self._insert(rows)
            except CONNECTION_ERRORS as e:
                if time.monotonic() + pause > deadline:
                    raise
                log.warning("recording generations: database unreachable (%s); retrying in %.1f s",
                            type(e.orig or e).__name__, pause)
                time.sleep(pause)
                pause = min(pause * 2, 5.0)

    def _insert(self, rows: list[dict]) -> list[Recorded]:
        with (self._engine or get_engine()).begin() as conn:
            dialect = conn.dialect.name
            if dialect == "postgresql":
                from sqlalchemy.dialects.postgresql import insert as dialect_insert
            elif dialect == "sqlite":
                from sqlalchemy.dialects.sqlite import insert as dialect_insert
            else:  # no insert-or-ignore: a duplicate raises IntegrityError and is found row by row
                dialect_insert = insert
            statement = dialect_insert(Generation)
            if dialect in ("postgresql", "sqlite"):
                statement = statement.on_conflict_do_nothing(index_elements=["request_id"])
            statement = statement.returning(Generation.request_id, Generation.id)
            inserted = dict(conn.execute(statement, rows).all())
            missing = [row["request_id"] for row in rows if row["request_id"] not in inserted]
            earlier = dict(conn.execute(select(Generation.request_id, Generation.id)
                                        .where(Generation.request_id.in_(missing))).all()) if missing else {}
        results, seen = [], set()
        for key in (row["request_id"] for row in rows):
            # two runs of one request in one batch: the first row is the one written, the second is skipped
            fresh = key in inserted and key not in seen
            seen.add(key)
            results.append(Recorded(inserted[key]) if fresh else
                           Recorded(inserted.get(key, earlier.get(key)), duplicate=True))
        return results

    def _insert_one(self, row: dict) -> Recorded | BaseException:
        try:
            return self._insert_retrying([row])[0]
        except CONNECTION_ERRORS as e:
            return e
        except StatementError as e:
            log.warning("generation %s not recorded: %s", row.get("request_id"), e.orig or e)
            return Recorded(None)
