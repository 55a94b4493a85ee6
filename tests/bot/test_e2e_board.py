"""End to end through the real bot, a real worker and Redis against the fake Discord: reactions on the bot's texts
are votes (added, removed; a reaction on a member's message, or the bot's own, is no vote), `/best` lists the
week's most liked and most improbable lines in order with links to them, a server's own vote emoji, and a
member's votes in `/privacy export` and gone after `/privacy delete`."""

from __future__ import annotations

import json
import re

import pytest

from bot.board import fit_board
from service.board import Board, BoardLine, VoteEmoji, week_bounds
from tests.environment import wait_until

from .fake_discord import custom_ids, opt
from .test_e2e import TIMEOUT, ephemeral_reply, final_text

pytestmark = pytest.mark.slow


def _rows(e2e, query):
    import db

    engine = db.make_engine(e2e.database_url)
    try:
        with db.session_scope(engine) as session:
            return query(session)
    finally:
        engine.dispose()


def _votes(e2e, gid: int) -> list[tuple[int, str]]:
    from db.models import Reaction

    return _rows(e2e, lambda s: sorted((r.user_id, r.kind) for r in s.query(Reaction).filter_by(generation_id=gid)))


def _generate(e2e, prompt: str) -> tuple[dict, int]:
    """A result as alice, once its row names its message (what a reaction is matched by)."""
    import db

    fake = e2e.fake
    msg = final_text(fake, fake.slash("generate", [opt("persona", "alice"), opt("prompt", prompt), opt("length", 20)],
                                      user=fake.alice))
    gid = int(custom_ids(msg)[0].split(":")[2])
    wait_until(lambda: _rows(e2e, lambda s: s.get(db.Generation, gid).message_id) == int(msg["id"]), TIMEOUT,
               "the result's message recorded")
    return msg, gid


def _best(e2e, week: int | None = None) -> str:
    fake = e2e.fake
    ix = fake.slash("best", [opt("week", week)] if week is not None else [], user=fake.bob)
    return final_text(fake, ix, contains="Most improbable")["content"]


def _section(content: str, title: str) -> list[str]:
    """The numbered lines under a board's heading."""
    part = content.split(f"**{title}**", 1)[1].split("\n\n", 1)[0]
    return [line for line in part.splitlines()[1:] if re.match(r"\d+\. ", line)]


def _message_of(line: str) -> int:
    return int(re.search(r"/channels/\d+/\d+/(\d+)\)", line)[1])


def test_reactions_are_votes_and_best_lists_them(e2e):
    fake = e2e.fake
    top, top_gid = _generate(e2e, "Votes first")
    second, second_gid = _generate(e2e, "Votes second")
    ignored, ignored_gid = _generate(e2e, "Votes ignored")
    for user in (fake.alice, fake.bob, fake.carol):
        fake.react(top, "👍", user=user)
    fake.react(top, "👎", user=fake.owner)
    fake.react(second, "👍🏽", user=fake.alice)  # a skin tone is the same vote
    fake.react(second, "👍", user=fake.bob)
    fake.react(ignored, "👍", user=fake.bot_user)  # the bot's own reaction
    fake.react(ignored, "🎉", user=fake.alice)  # not a vote emoji
    member_message = fake.say("a member's own line", user=fake.carol)
    fake.react(member_message, "👍", user=fake.bob)  # not a generated text
    fake.unreact(second, "👍", user=fake.bob)
    fake.react(ignored, "👎", user=fake.carol)  # votes are handled in the order of their events: after this
    wait_until(lambda: _votes(e2e, ignored_gid) == [(fake.carol.id, "down")], TIMEOUT, "the last vote")
    assert _votes(e2e, second_gid) == [(fake.alice.id, "up")] and len(_votes(e2e, top_gid)) == 4
    fake.unreact(ignored, "👎", user=fake.carol)
    wait_until(lambda: _votes(e2e, ignored_gid) == [], TIMEOUT, "the removed vote")
    from db.models import Reaction

    assert not _rows(e2e, lambda s: s.query(Reaction).filter_by(user_id=fake.app_id).count())

    content = _best(e2e)
    liked = _section(content, "Most liked")
    assert [_message_of(line) for line in liked][:2] == [int(top["id"]), int(second["id"])], content
    assert liked[0].startswith("1. +2 · alice: “") and liked[1].startswith("2. +1 · alice: “")
    assert f"https://discord.com/channels/{fake.guild_id}/{fake.channel_id}/{top['id']}" in liked[0]
    assert int(ignored["id"]) not in [_message_of(line) for line in liked]

    # the most improbable: this week's posted texts of the server, lowest least-probability first
    import db

    def expected(session):
        start, end = week_bounds()
        gens = [g for g in session.query(db.Generation).filter_by(guild_id=fake.guild_id)
                if start <= g.created_at < end and g.message_id and g.deleted_at is None
                and (g.params.get("probability") or {}).get("min") is not None]
        return [(g.message_id, g.params["probability"]["min"]) for g in gens]

    improbable = _section(content, "Most improbable")
    assert all(re.match(r"\d+\. p = [0-9.e-]+ · ", line) for line in improbable)
    shown_p = [float(re.match(r"\d+\. p = ([0-9.e-]+) · ", line).group(1)) for line in improbable]
    assert 1 <= len(improbable) <= 5 and shown_p == sorted(shown_p), content
    # every result message whose text is clearly less likely than the last one listed is listed (scheduled
    # posts, found through their own rows, may be listed too)
    listed = [_message_of(line) for line in improbable]
    missing = [m for m, p in _rows(e2e, expected) if p < max(shown_p) * 0.98 and m not in listed]
    assert not missing, (missing, content)
    assert "No texts posted that week." in _best(e2e, week=3)


def test_a_servers_own_vote_emoji(e2e):
    fake = e2e.fake
    msg, gid = _generate(e2e, "Starred")
    ix = fake.slash("board emoji", [opt("up", "⭐"), opt("down", "not an emoji")], user=fake.owner)
    assert "not an emoji" in ephemeral_reply(fake, ix)["content"]
    ix = fake.slash("board emoji", [opt("up", "⭐")], user=fake.alice)
    assert "Manage Server" in ephemeral_reply(fake, ix)["content"]
    ix = fake.slash("board emoji", [opt("up", "⭐")], user=fake.owner)
    assert "⭐ up, 👎 down" in ephemeral_reply(fake, ix)["content"]
    try:
        fake.react(msg, "👍", user=fake.bob)
        fake.react(msg, "⭐", user=fake.carol)
        wait_until(lambda: _votes(e2e, gid) == [(fake.carol.id, "up")], TIMEOUT, "the star counted")
        assert _votes(e2e, gid) == [(fake.carol.id, "up")]  # 👍 is no vote here now
    finally:
        ix = fake.slash("board emoji", [opt("reset", True)], user=fake.owner)
        assert "👍 up, 👎 down" in ephemeral_reply(fake, ix)["content"]


def test_a_members_votes_are_exported_then_deleted(e2e):
    fake = e2e.fake
    msg, gid = _generate(e2e, "Privacy of votes")
    fake.react(msg, "👍", user=fake.carol)
    fake.react(msg, "👎", user=fake.carol)
    fake.react(msg, "👍", user=fake.bob)
    wait_until(lambda: len(_votes(e2e, gid)) == 3, TIMEOUT, "the votes")

    from db.models import Reaction

    hers = _rows(e2e, lambda s: s.query(Reaction).filter_by(user_id=fake.carol.id).count())  # earlier tests' too
    shown = ephemeral_reply(fake, fake.slash("privacy show", user=fake.carol))["content"]
    assert f" {hers} votes on the bot's texts" in shown and hers >= 2, shown
    reply = ephemeral_reply(fake, fake.slash("privacy export", user=fake.carol))
    files = fake.wait_for(lambda: fake.files.get(int(reply["id"])), TIMEOUT, "the export file")
    exported = json.loads(files[0][1])["reactions"]
    assert sorted((r["generation_id"], r["kind"]) for r in exported if r["generation_id"] == gid) == \
        [(gid, "down"), (gid, "up")]

    confirm = ephemeral_reply(fake, fake.slash("privacy delete", user=fake.carol))
    fake.click(confirm, "improbable:privacy:delete", user=fake.carol)
    fake.wait_for(lambda: "Deleted:" in (fake.message(int(confirm["id"])) or {}).get("content", ""), TIMEOUT,
                  "the deletion")
    assert _votes(e2e, gid) == [(fake.bob.id, "up")]
    assert not _rows(e2e, lambda s: s.query(Reaction).filter_by(user_id=fake.carol.id).count())


def test_the_board_is_escaped_cut_and_fits_one_message():
    start, end = week_bounds()
    text = "**bold** @everyone <@123> [x](http://a.example) " + "long words " * 60
    line = BoardLine(1, "alice", text, start, 1, 2, 3, up=3, down=1, probability=0.00012)
    content = fit_board(Board(start, end, [line] * 5, [line] * 5), 0, VoteEmoji())
    assert len(content) <= 2000 and "\\*\\*bold\\*\\*" in content and "@everyone" not in content
    assert re.search(r"(?<!\\)<@123>", content) is None and "\\<@123>" in content  # no mention
    assert "\\[x](http://a.example)" in content  # no masked link
    assert "1. +2 · alice: “" in content and "p = 0.00012" in content
    assert content.count("[jump](https://discord.com/channels/1/2/3)") == 10
