"""The in-flight rows of bot/streaming.py race: a fast reply's outcome is shown (forget_in_flight) while its
message id is still being recorded (placed_in_flight, run in the background). The interleaving is driven in
order on SQLite and PostgreSQL: the row is forgotten, by another session on another connection, right before
the message-id write reaches the database (after any load of the row). Neither side may raise."""

from __future__ import annotations

import warnings

import pytest
from sqlalchemy import event, func, select

import db
import service.generation
from db.session import get_engine
from service.generation import PreparedGeneration
from tests.environment import configured

TASK = "fast-reply"
REQUEST = PreparedGeneration(payload={"persona": "alice", "prompt": "Quick", "params": {}}, display_name="Alice",
                             shown_prompt="Quick", family="char-rnn")


@pytest.fixture
def configured_db(migrated_url):
    with configured({"IMPROBABLE_DATABASE_URL": migrated_url}):
        yield get_engine()


def _rows() -> int:
    with db.session_scope() as session:
        return session.scalar(select(func.count()).select_from(db.InflightGeneration))


def before_the_write(engine, verb: str, meanwhile) -> list[str]:
    """Run `meanwhile()` once, on its own connection, just before the first `verb` statement on the in-flight
    table is sent; returns the statements sent (to show where the interleaving happened)."""
    sent: list[str] = []

    def hook(conn, cursor, statement, parameters, context, executemany) -> None:
        sent.append(statement.split(None, 1)[0].upper())
        if not hook.fired and statement.lstrip().upper().startswith(verb) and "inflight_generations" in statement:
            hook.fired = True
            meanwhile()

    hook.fired = False
    event.listen(engine, "before_cursor_execute", hook)
    return sent


def test_a_reply_forgotten_while_its_message_id_is_recorded(configured_db):
    service.generation.remember_in_flight(TASK, REQUEST, channel_id=5, reply_to=6, user_id=7, guild_id=8)
    sent = before_the_write(configured_db, "UPDATE", lambda: service.generation.forget_in_flight(TASK))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # SQLAlchemy warns of rows it expected and did not match
        service.generation.placed_in_flight(TASK, 1234)
    assert "UPDATE" in sent and _rows() == 0  # the write came after the forget, and matched nothing


def test_a_reply_forgotten_twice_at_once(configured_db):
    service.generation.remember_in_flight(TASK, REQUEST, channel_id=5, interaction_token="t", user_id=7)
    sent = before_the_write(configured_db, "DELETE", lambda: service.generation.forget_in_flight(TASK))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        service.generation.forget_in_flight(TASK)  # a resumed job and its first bot both finishing it
    assert sent.count("DELETE") == 2 and _rows() == 0


def test_a_row_remembered_again_after_it_was_forgotten(configured_db):
    service.generation.remember_in_flight(TASK, REQUEST, channel_id=5, reply_to=6, user_id=7)
    before_the_write(configured_db, "UPDATE", lambda: service.generation.forget_in_flight(TASK))
    service.generation.remember_in_flight(TASK, REQUEST, channel_id=9, reply_to=6, user_id=7)
    [row] = service.generation.in_flight_generations()
    assert row.task_id == TASK and row.channel_id == 9  # written again, never an error
