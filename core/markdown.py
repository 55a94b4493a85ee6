"""Discord markdown escaping of untrusted text, without discord.py: the bot (bot/formatting.py) and the
worker's scheduled posts (worker/schedules.py) both show generated text with this one function; and cutting
text to fit a message (`truncate`, `cut_point`), at a sentence or a word and never inside an escape.

Generated text may contain markdown that would swallow the rest of the message (``` fences, ||spoilers||,
headers, masked links `[x](url)`) and mentions (@everyone, <@&role>). `escape` neutralises both; every send
also carries allowed_mentions with nothing to parse, so even text that slips through never pings anybody.

The markdown rule is discord.py's `utils.escape_markdown(text, ignore_links=False)` (MIT licence), kept
here because core/ may not import Discord.

Standard library only.
"""

from __future__ import annotations

import re

# The characters and line starts Discord reads as markdown: _ \ ~ | * ` anywhere, a quote (> or >>>) or a
# header (# to ###) or a list dash at a line start, and a masked link [text](url).
_MARKDOWN = re.compile(r"(?P<markdown>[_\\~|\*`]|^>(?:>>)?\s|\[.+\]\(.+\)|^#{1,3}|^\s*-)", re.MULTILINE)
_MENTION = re.compile(r"@(everyone|here|[!&]?\d{15,21})")
_ANGLE = re.compile(r"<(?=[@#:]|a:|t:|id:|/)")  # <@user> <#channel> <:emoji:> <t:time> </command:id>
_NUMBERED = re.compile(r"^(\s*\d+)\.(?=\s)", re.MULTILINE)  # "1. " would become a list


def escape_markdown(text: str) -> str:
    """Every markdown character and line start preceded by a backslash (links included)."""
    return _MARKDOWN.sub(lambda m: "\\" + m["markdown"], text)


def escape(text: str) -> str:
    """Text shown literally by Discord: markdown, mentions, timestamps and emoji escaped."""
    text = escape_markdown(text)
    text = _NUMBERED.sub(r"\1\\.", text)
    text = _ANGLE.sub(r"\\<", text)
    return _MENTION.sub("@\u200b\\1", text)


# -- cutting text to fit a message --------------------------------------------------------------------------

ELLIPSIS = "…"
_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"')\]]*\s+|\n\s*\n|\n")


def cut_point(text: str, limit: int) -> int:
    """The best index ≤ limit to cut at: after a sentence, else at a space, else hard (never inside an
    escape sequence `\\x`)."""
    if len(text) <= limit:
        return len(text)
    best = 0
    for m in _SENTENCE_END.finditer(text, 0, limit + 1):
        if m.end() <= limit:
            best = m.end()
    if best < limit // 3:  # a sentence boundary too early wastes the message: use a space instead
        space = text.rfind(" ", 0, limit)
        best = max(best, space + 1 if space > limit // 3 else 0)
    if best == 0:
        best = limit
    while best > 1 and _ends_in_escape(text[:best]):
        best -= 1
    return best


def _ends_in_escape(s: str) -> bool:
    n = len(s) - len(s.rstrip("\\"))
    return n % 2 == 1


def truncate(text: str, limit: int) -> str:
    """At most `limit` characters, cut at a sentence (or word) boundary and ending in an ellipsis."""
    if len(text) <= limit:
        return text
    return text[:cut_point(text, limit - 1)].rstrip() + ELLIPSIS
