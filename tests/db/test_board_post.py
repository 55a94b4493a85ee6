"""The weekly board post's claims (db/board.py) on SQLite and PostgreSQL: a post is due once its week has
ended, two dispatchers claiming it post it once (the second finds it taken), a claim given back is due again,
and a stopped or moved post is not claimed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import db
from db.board import claim_post, due_posts, release_post, set_post_channel, stop_post, week_bounds

GUILD, CHANNEL = 5, 50
SET_UP = datetime(2026, 3, 4, 12, tzinfo=UTC)  # a Wednesday
NEXT_MONDAY = datetime(2026, 3, 9, 0, 1, tzinfo=UTC)


def test_a_post_is_due_after_its_week_and_claimed_once(engine):
    with db.session_scope(engine) as session:
        set_post_channel(session, GUILD, CHANNEL, SET_UP)
    with db.session_scope(engine) as session:
        assert due_posts(session, SET_UP + timedelta(days=4)) == []  # Sunday: the week is not over
        assert due_posts(session, NEXT_MONDAY) == [(GUILD, CHANNEL)]
    week = week_bounds(1, NEXT_MONDAY)[0]
    assert week == datetime(2026, 3, 2, tzinfo=UTC)
    first, second = db.get_sessionmaker(engine)(), db.get_sessionmaker(engine)()
    try:
        before = claim_post(first, GUILD, CHANNEL, week)
        first.commit()
        assert before == week - timedelta(weeks=1) and claim_post(second, GUILD, CHANNEL, week) is None
        second.rollback()
    finally:
        first.close()
        second.close()
    with db.session_scope(engine) as session:
        assert due_posts(session, NEXT_MONDAY) == []
        release_post(session, GUILD, week, before)  # Discord was away: due again at the next tick
    with db.session_scope(engine) as session:
        assert due_posts(session, NEXT_MONDAY) == [(GUILD, CHANNEL)]
        assert claim_post(session, GUILD, CHANNEL + 1, week) is None  # moved meanwhile: not this channel's
        stop_post(session, GUILD, CHANNEL)
    with db.session_scope(engine) as session:
        assert due_posts(session, NEXT_MONDAY) == [] and claim_post(session, GUILD, CHANNEL, week) is None
