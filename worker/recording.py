"""Generation rows, written many per transaction by one thread.

Requests stepped in one batch finish together; 32 of them recording their row each through its own
session cost ~200 ms of commits and ORM work on 2 cores (measured), added to every answer. Here each
request hands its row to the recorder thread and waits for its id; the thread writes whatever has
arrived in one INSERT ... RETURNING (one commit) and resolves the waiters. The rows come from
db.queries.generation_row, like db.queries.record_generation's.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future

from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError

from db import Generation, get_engine

log = logging.getLogger(__name__)
MAX_ROWS = 256  # per transaction


class Recorder:
    def __init__(self):
        self._inbox: queue.SimpleQueue[tuple[dict, Future]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="generation-recorder", daemon=True)
        self._thread.start()

    def record(self, row: dict, timeout: float = 30.0) -> int | None:
        """Insert a `generations` row (column → value) and return its id (None: its persona is gone)."""
        done: Future = Future()
        self._inbox.put((row, done))
        return done.result(timeout)

    def _run(self) -> None:
        while True:
            batch = [self._inbox.get()]
            while len(batch) < MAX_ROWS:
                try:
                    batch.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            try:
                ids = self._insert([row for row, _ in batch])
            except IntegrityError:  # e.g. a persona deleted meanwhile: write the rows one by one
                ids = [self._insert_one(row) for row, _ in batch]
            except Exception as e:  # noqa: BLE001 - the database is down: every waiter gets the error
                for _, done in batch:
                    done.set_exception(e)
                continue
            for (_, done), row_id in zip(batch, ids):
                done.set_result(row_id)

    def _insert(self, rows: list[dict]) -> list[int]:
        statement = insert(Generation).returning(Generation.id, sort_by_parameter_order=True)
        with get_engine().begin() as conn:
            return list(conn.execute(statement, rows).scalars())

    def _insert_one(self, row: dict) -> int | None:
        try:
            return self._insert([row])[0]
        except IntegrityError as e:
            log.warning("generation not recorded: %s", e.orig)
            return None
