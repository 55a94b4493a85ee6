"""Votes and the weekly board (service/board.py), with the votes' part of /privacy and retention, on a real
migrated SQLite file and the real PostgreSQL (the improbable ranking reads JSON inside `params`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

import db
import service.board as board
import service.privacy
from db.generations import record_generation
from db.models import Reaction, Schedule, SchedulePost
from db.personas import get_persona
from db.retention import purge_guild, sweep
from service.errors import NeedsPermission, UserError
from service.policy import Actor
from tests.db.conftest import _pg_migrated, _sqlite_template, migrated_url, pg_admin, pg_url  # noqa: F401
from tests.environment import configured

GUILD, OTHER_GUILD = 5511, 5522
ALICE, BOB, CAROL = 881_000_000_000_001, 881_000_000_000_002, 881_000_000_000_003
NOW = datetime(2030, 1, 9, 12, 0, tzinfo=UTC)  # a Wednesday: the week began on Monday 2030-01-07
_message_ids = iter(range(9_000_000_000, 9_100_000_000))


@pytest.fixture
def env(migrated_url, tmp_path):  # noqa: F811
    with configured({"IMPROBABLE_DATABASE_URL": migrated_url, "IMPROBABLE_STORAGE_URL": str(tmp_path / "storage"),
                     "IMPROBABLE_BROKER_URL": ""}):
        yield migrated_url


def _text(output: str, *, least: float | None = 0.5, at: datetime = NOW, guild: int = GUILD, posted: bool = True,
          slug: str = "alice") -> tuple[int, int | None]:
    """A generated text of `guild` at `at` whose least probable token had probability `least`: (id, message)."""
    message = next(_message_ids) if posted else None
    with db.session_scope() as session:
        gen = record_generation(session, get_persona(session, slug, None), prompt="p", output=output,
                                params={"probability": {"mean": 0.6, "min": least}}, user_id=CAROL, guild_id=guild,
                                channel_id=42, message_id=message)
        gen.created_at = at
        return gen.id, message


def _vote(message: int, user: int, kind: str, added: bool = True, guild: int = GUILD) -> bool:
    return board.record_vote(guild, message, user, kind, added)


def test_votes_count_once_per_member_and_kind_and_go_when_removed(env):
    gen, message = _text("one")
    assert _vote(message, ALICE, "up") and _vote(message, ALICE, "up")  # a repeated event changes nothing
    assert _vote(message, BOB, "up") and _vote(message, CAROL, "down")
    [line] = board.best(GUILD, now=NOW).liked
    assert (line.generation_id, line.up, line.down, line.score) == (gen, 2, 1, 1)
    assert _vote(message, BOB, "up", added=False)
    assert board.best(GUILD, now=NOW).liked == []  # net 0 is not liked
    assert not _vote(123, ALICE, "up")  # a message showing no generated text
    assert not _vote(message, ALICE, "up", guild=OTHER_GUILD)  # another server's message id: not counted there
    with db.session_scope() as session:
        assert session.query(Reaction).count() == 2


def test_most_liked_in_order_ties_to_the_earlier_text_within_the_week(env):
    early, m_early = _text("early", at=NOW - timedelta(days=1))
    late, m_late = _text("late", at=NOW)
    top, m_top = _text("top", at=NOW + timedelta(hours=1))
    last_week, m_last = _text("last week", at=NOW - timedelta(days=5))
    for message, voters in ((m_early, (ALICE, BOB)), (m_late, (ALICE, CAROL)), (m_top, (ALICE, BOB, CAROL)),
                            (m_last, (ALICE, BOB, CAROL))):
        for user in voters:
            _vote(message, user, "up")
    assert [line.generation_id for line in board.best(GUILD, now=NOW).liked] == [top, early, late]
    [previous] = board.best(GUILD, 1, now=NOW).liked
    assert previous.generation_id == last_week and previous.text == "last week"
    assert board.best(OTHER_GUILD, now=NOW).liked == []


def test_most_improbable_lowest_posted_probability_first(env):
    mid, _ = _text("mid", least=0.01)
    low, _ = _text("low", least=0.0001, at=NOW + timedelta(minutes=5))
    tie, _ = _text("tie", least=0.0001, at=NOW + timedelta(minutes=1))
    _text("never posted", least=0.000001, posted=False)
    _text("no probability", least=None)
    _text("other server", least=0.0000001, guild=OTHER_GUILD)
    lines = board.best(GUILD, now=NOW).improbable
    assert [line.generation_id for line in lines][:3] == [tie, low, mid]
    assert lines[0].probability == pytest.approx(0.0001) and lines[0].message_id is not None


def test_a_scheduled_post_is_found_by_its_message(env):
    gen, _ = _text("scheduled", posted=False, least=0.00001)
    with db.session_scope() as session:
        schedule = Schedule(guild_id=GUILD, channel_id=42, persona_id=get_persona(session, "alice", None).id,
                            interval_seconds=3600)
        session.add(schedule)
        session.flush()
        session.add(SchedulePost(schedule_id=schedule.id, slot=NOW, message_id=777, generation_id=gen))
    assert _vote(777, ALICE, "up")
    board_now = board.best(GUILD, now=NOW)
    assert [(x.generation_id, x.message_id) for x in board_now.liked] == [(gen, 777)]
    assert [x.generation_id for x in board_now.improbable] == [gen]


def test_a_deleted_text_is_off_the_board_and_takes_its_votes(env):
    gen, message = _text("to delete", least=0.001)
    _vote(message, ALICE, "up")
    with db.session_scope() as session:
        session.get(db.Generation, gen).deleted_at = NOW
    assert board.best(GUILD, now=NOW) == board.Board(*board.week_bounds(0, NOW), [], [])
    assert not _vote(message, BOB, "up")  # no new votes on a deleted text
    sweep(NOW, retention_days=10_000, grace_days=10_000)  # the sweep drops a deleted text's votes
    with db.session_scope() as session:
        assert session.query(Reaction).count() == 0
    gen2, message2 = _text("retention")
    _vote(message2, ALICE, "up")
    with db.session_scope() as session:
        session.delete(session.get(db.Generation, gen2))
    with db.session_scope() as session:
        assert session.query(Reaction).count() == 0  # the row's votes go with it (ON DELETE CASCADE)


def test_privacy_shows_exports_and_deletes_a_members_votes(env):
    gen, message = _text("voted on")
    _vote(message, ALICE, "up")
    _vote(message, ALICE, "down")
    _vote(message, BOB, "up")
    assert service.privacy.summary(ALICE).reactions == 2
    exported = service.privacy.export(ALICE)["reactions"]
    assert sorted((r["generation_id"], r["kind"], r["guild_id"]) for r in exported) == [(gen, "down", GUILD),
                                                                                        (gen, "up", GUILD)]
    assert service.privacy.delete_user_data(ALICE).reactions == 2
    assert service.privacy.summary(ALICE).reactions == 0 and service.privacy.export(ALICE)["reactions"] == []
    assert service.privacy.summary(BOB).reactions == 1


def test_a_server_purge_removes_its_votes(env):
    _, message = _text("purged")
    _, other = _text("kept", guild=OTHER_GUILD)
    _vote(message, ALICE, "up")
    _vote(other, ALICE, "up", guild=OTHER_GUILD)
    purge_guild(GUILD)
    with db.session_scope() as session:
        assert [r.guild_id for r in session.query(Reaction)] == [OTHER_GUILD]


def test_vote_emoji_chosen_by_managers_only(env):
    assert board.vote_emoji(GUILD) == board.VoteEmoji("👍", "👎")
    with pytest.raises(NeedsPermission):
        board.set_vote_emoji(Actor(ALICE, GUILD), up="⭐")
    assert board.set_vote_emoji(Actor(ALICE, GUILD, can_manage=True), up="⭐") == board.VoteEmoji("⭐", "👎")
    with pytest.raises(UserError):
        board.set_vote_emoji(Actor(ALICE, GUILD, can_manage=True), down="⭐")
    assert board.vote_emoji(GUILD) == board.VoteEmoji("⭐", "👎")  # the refused change saved nothing
    assert board.set_vote_emoji(Actor(ALICE, GUILD, can_manage=True), reset=True) == board.VoteEmoji()


def test_week_bounds_and_range():
    start, end = board.week_bounds(0, NOW)
    assert start == datetime(2030, 1, 7, tzinfo=UTC) and end == datetime(2030, 1, 14, tzinfo=UTC)
    assert board.week_bounds(2, NOW)[0] == datetime(2029, 12, 24, tzinfo=UTC)
    with pytest.raises(UserError):
        board.best(GUILD, -1)
