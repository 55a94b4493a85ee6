"""Message formatting: escaping, the 2,000-character limit, progress text."""

from __future__ import annotations

import re

import pytest

from bot.formatting import (
    MESSAGE_LIMIT,
    escape,
    fit,
    progress_bar,
    relative_time,
    render_generation,
    split_message,
    training_progress,
    truncate,
)


@pytest.mark.parametrize("raw", ["@everyone", "@here", "<@123456789012345678>", "<@!123456789012345678>",
                                 "<@&123456789012345678>", "hi @everyone and @here"])
def test_mentions_are_neutralised(raw):
    out = escape(raw)
    assert not re.search(r"(?<!\u200b)@(everyone|here)\b", out.replace("@\u200b", "@\u200b"))
    assert "@everyone" not in out and "@here" not in out
    assert not re.search(r"(?<!\\)<@[!&]?\d", out)


@pytest.mark.parametrize("raw", ["**bold**", "__u__", "~~s~~", "||spoiler||", "`code`", "```\nfence\n```",
                                 "> quote", "# header", "- item", "1. first", "[link](https://x.y)",
                                 "<t:1700000000:R>", "<#123456789012345678>", "<:emoji:123456789012345678>",
                                 "back\\slash"])
def test_markdown_is_escaped(raw):
    out = escape(raw)
    assert out != raw
    # every markdown character is preceded by a backslash (an escaped backslash counts)
    unescaped = re.sub(r"\\.", "", out)
    assert not re.search(r"[*_~|`\\]", unescaped)
    assert not re.search(r"(?m)^\s*(#|>|-|\d+\.\s)", out)
    assert "<t:" not in unescaped and "<#" not in unescaped and "<:" not in unescaped


def test_plain_text_is_unchanged():
    assert escape("Alice was beginning to get very tired.") == "Alice was beginning to get very tired."


def test_split_on_sentences_within_the_limit():
    sentences = [f"Sentence number {i} is here." for i in range(300)]
    text = " ".join(sentences)
    chunks = split_message(text)
    assert len(chunks) > 1 and all(len(c) <= MESSAGE_LIMIT for c in chunks)
    assert all(c.endswith(".") for c in chunks)
    assert " ".join(chunks) == text


def test_split_without_sentences_cuts_at_spaces_then_hard():
    words = "word " * 1000
    assert all(len(c) <= 2000 and not c.endswith("wor") for c in split_message(words))
    blob = "x" * 5000
    chunks = split_message(blob)
    assert [len(c) for c in chunks] == [2000, 2000, 1000] and "".join(chunks) == blob


def test_split_never_separates_an_escape():
    text = escape("*" * 3000)  # "\*" pairs
    for chunk in split_message(text):
        assert not chunk.endswith("\\") or chunk.endswith("\\\\")
        assert len(chunk) <= 2000


def test_split_short_text_is_one_chunk():
    assert split_message("") == [""]
    assert split_message("Hi.") == ["Hi."]


def test_truncate_ends_at_a_sentence_with_an_ellipsis():
    text = "One sentence. " * 50
    out = truncate(text, 100)
    assert len(out) <= 100 and out.endswith("sentence.…")


def test_fit_attaches_the_full_text_when_too_long():
    body = "A sentence here. " * 300
    rendered = fit("**header**", body, full_text="RAW " + body)
    assert len(rendered.content) <= 2000 and rendered.content.startswith("**header**\n")
    assert rendered.file is not None and rendered.file[1].decode().startswith("RAW ")
    assert "attached" in rendered.content
    assert fit("h", "short").file is None


def test_render_generation_escapes_prompt_and_completion():
    r = render_generation("Trump", "@everyone **build**", " the wall <@&123456789012345678>",
                          {"temperature": 0.8, "seed": 7})
    assert r.content.startswith("**Trump** · temperature 0.8 · seed 7\n")
    assert "@\u200beveryone" in r.content and "\\*\\*build\\*\\*" in r.content
    assert "\\<@&123456789012345678>" in r.content or "@\u200b&" in r.content
    partial = render_generation("Trump", "", "so far", {"seed": 1}, partial=True)
    assert partial.content.endswith("so far ▌")


def test_render_long_generation_fits_with_attachment():
    r = render_generation("Alice", "Alice was", " and then. " * 400, {"seed": 1})
    assert len(r.content) <= 2000 and r.file is not None
    assert r.file[1].decode() == "Alice was" + " and then. " * 400


@pytest.mark.parametrize("prompt, completion, joined, shown", [
    ("this movie was", "so bad", "this movie was so bad", "**this movie was** so bad"),  # never "was**so**"
    ("this movie was", "so bad", None, "**this movie was** so bad"),  # no join given: a space between words
    ("Hello", ", world", "Hello, world", "**Hello**, world"),
    ("don", "'t", "don't", "**don**'t"),
    ("Alice was", " tired", "Alice was tired", "**Alice was** tired"),  # a char model writes its own spaces
    ("Alice ", "was", "Alice was", "**Alice** was"),  # the prompt's trailing space goes outside the bold
    ("  ", "text", None, "text"),
])
def test_prompt_and_completion_are_joined_as_the_model_joins_them(prompt, completion, joined, shown):
    r = render_generation("Movie reviews", prompt, completion, {}, joined=joined)
    assert r.content.split("\n", 1)[1] == shown


def test_notes_are_small_lines_under_the_header():
    r = render_generation("Alice", "A", " b", {"improbability": 0.02, "seed": 9},
                          note="improbability target lowered from 0.1 to 0.02\nwords this persona never saw")
    lines = r.content.splitlines()
    assert lines[0] == "**Alice** · improbability 0.02 · seed 9"
    assert lines[1] == "-# improbability target lowered from 0.1 to 0.02" and lines[2].startswith("-# words")


def test_improbability_shows_instead_of_temperature():
    r = render_generation("Alice", "", "x", {"temperature": 0.8, "improbability": 0.05, "seed": 3})
    assert "improbability 0.05" in r.content and "temperature" not in r.content


def test_progress_bar_and_timestamps():
    assert progress_bar(0.5, width=10) == "`█████░░░░░` 50%"
    assert progress_bar(None, width=4) == "`░░░░` 0%"
    assert progress_bar(2.0, width=4) == "`████` 100%"
    assert relative_time(1700000000.7) == "<t:1700000000:R>"


def test_training_progress_message():
    text = training_progress("Poet", "running", {"step": 50, "total": 200, "loss": 2.3456, "val_loss": 2.5,
                                                 "tokens_per_s": 12345.6, "eta": 60, "fraction": 0.25}, now=1000.0)
    assert "**Training `Poet`** · running" in text and "25%" in text and "step 50/200" in text
    assert "loss 2.346" in text and "validation 2.500" in text and "12,346 tokens/s" in text
    assert "<t:1060:R>" in text
    queued = training_progress("Poet", "queued", {}, now=0, queue_position=3)
    assert "position 3 in the queue" in queued
    failed = training_progress("Poet", "failed", {}, now=0, error="**boom** @everyone")
    assert "\\*\\*boom" in failed and "@everyone" not in failed


def test_guild_policy_text():
    from bot.guild import describe_policy
    from service.policy import Policy

    assert "none (Manage Server only)" in describe_policy(Policy())
    assert "<@&42>" in describe_policy(Policy(trainer_role_id=42))


# -- the service's refusals and reports (service.errors, service.controls) -------------------------------

def test_refusals_render_their_fields_as_discord_markup_and_as_plain_words():
    from datetime import UTC, datetime, timedelta

    from bot.formatting import user_error
    from service.errors import CannotPost, NotOwner, TrainCooldown, UnknownPersona

    unknown = UnknownPersona("alcie", ["alice", "all"])
    assert user_error(unknown) == "There is no persona called `alcie`. Did you mean `alice` or `all`?"
    assert unknown.message == "There is no persona called alcie. Did you mean alice or all?"
    owner = NotOwner(123456789012345678)
    assert "<@123456789012345678>" in user_error(owner) and "<@" not in owner.message
    post = CannotPost(42)
    assert user_error(post).startswith("I cannot post in <#42>: give me the **View Channel** and **Send Messages**")
    assert "**" not in post.message and "#channel-42" in post.message
    ready = datetime.now(UTC) + timedelta(minutes=10)
    assert user_error(TrainCooldown(ready)) == f"You can start another training run <t:{int(ready.timestamp())}:R>."
    assert TrainCooldown(ready).message in ("You can start another training run in 10 min.",
                                            "You can start another training run in 9 min.")


def test_a_refusal_quoting_user_text_stays_intact():
    from bot.formatting import code, user_error
    from service.errors import NotAValue, UserError

    assert user_error(NotAValue("1 {h}", "an interval", ("30m",))) == \
        "`1 {h}` is not an interval: write something like `30m`."
    assert code("a`b") == "`` a`b ``"
    assert user_error(UserError("{reason}", reason="no {fields} here")) == "no {fields} here"


def test_generation_info_lists_how_the_text_was_made():
    from bot.formatting import generation_info
    from service.controls import GenerationInfo

    info = GenerationInfo("Alice", "alice", 7, [("max_tokens", 500), ("temperature", 0.8), ("improbability", 0.01)],
                          seed=42, tokens=120, latency_ms=900, mean_probability=0.61, min_probability=0.0012,
                          target=0.01, picks=[("rabbit", 0.0123), (" ", 0.5)], more_picks=3)
    text = generation_info(info)
    assert text.splitlines()[0] == "**Alice** (`alice`), checkpoint 7"
    assert "Sampling: max_tokens `500`, temperature `0.8`, improbability `0.01`" in text
    assert "Seed `42` · tokens 120 · latency 900 ms" in text
    assert "mean 0.61, minimum 0.0012" in text
    assert "realised: `rabbit` 0.0123, `' '` 0.5 (+3 more)" in text
    assert "(deleted)" not in text
    bare = generation_info(GenerationInfo("Alice", "alice", None, target=0.1, deleted=True))
    assert "checkpoint n/a" in bare and "no picks recorded" in bare and bare.endswith("(deleted)")


def test_schedules_say_how_often():
    from bot.formatting import describe_every

    assert describe_every(3600, None) == "every 1h"
    assert describe_every(5400, None) == "every 90m"
    assert describe_every(None, "0 9 * * *") == "cron `0 9 * * *` (UTC)"
    assert describe_every(None, "0 9 * * *", markup=False) == "cron 0 9 * * * (UTC)"
