"""Repetition in a text, torch-free: exact-duplicate paragraphs and long lines dropped (what training and its
held-out split see), and how much distinct text is left and how well it compresses (what an upload needs
before a model can learn a voice from it, and be measured on text it has not seen).

The database layer checks an upload with `check_distinct` before storing it; the trainer drops the same
repeats before splitting (trainer/heldout.py), so both count the same text.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

from core.text import CorpusError

WINDOW = 50  # characters: held-out text shares no window this long with training text; a line this long is content
# Prose, poetry, speeches, reviews and tables compress with zlib to 30-47 % of their size (alice 35 %, trump's
# speeches 32 %, shakespeare 39 %, 6 KB of alice 46 %); one line repeated with a counter, 7 %.
MIN_COMPRESSED_RATIO = 0.15
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")


def paragraphs(text: str) -> list[str]:
    """`text` cut after each blank-line break (the break stays with the paragraph before it):
    "".join(paragraphs(text)) == text."""
    parts, start = [], 0
    for m in _PARAGRAPH_BREAK.finditer(text):
        parts.append(text[start:m.end()])
        start = m.end()
    if start < len(text):
        parts.append(text[start:])
    return parts


class Repeats:
    """What has been seen so far: a paragraph whose text (stripped) was seen before is a repeat, and so is a
    line of at least WINDOW characters seen before. Short lines ("ROMEO:", "CHAPTER I.") repeat in clean text."""

    def __init__(self):
        self.paragraphs: set[str] = set()
        self.lines: set[str] = set()
        self.dropped_chars = 0

    def keep(self, paragraph: str) -> str:
        """The paragraph without what was seen before ("" when all of it was)."""
        key = paragraph.strip()
        if key and key in self.paragraphs:
            self.dropped_chars += len(paragraph)
            return ""
        self.paragraphs.add(key)
        kept = []
        for line in paragraph.splitlines(keepends=True):
            stripped = line.strip()
            if len(stripped) >= WINDOW:
                if stripped in self.lines:
                    self.dropped_chars += len(line)
                    continue
                self.lines.add(stripped)
            kept.append(line)
        return "".join(kept)


def dedupe(text: str, repeats: Repeats | None = None) -> str:
    """`text` without its exact-duplicate paragraphs and long lines (the first of each kept)."""
    repeats = repeats if repeats is not None else Repeats()
    return "".join(repeats.keep(p) for p in paragraphs(text))


@dataclass(frozen=True)
class Distinct:
    n_bytes: int  # UTF-8 bytes of the text as uploaded
    distinct_bytes: int  # after dropping repeated paragraphs and lines
    compressed_ratio: float  # zlib's size of the distinct text over its size


def measure(text: str) -> Distinct:
    distinct = dedupe(text).encode("utf-8")
    ratio = len(zlib.compress(distinct, 6)) / len(distinct) if distinct else 0.0
    return Distinct(len(text.encode("utf-8")), len(distinct), ratio)


def _kb(n: int) -> str:
    return f"{n / 1000:.1f} KB"


def check_distinct(text: str, min_bytes: int) -> Distinct:
    """The text's Distinct, or CorpusError ("repetitive") with the numbers when it has less than `min_bytes` of
    distinct text or its distinct text repeats itself (compresses below MIN_COMPRESSED_RATIO)."""
    found = measure(text)
    if found.distinct_bytes < min_bytes:
        raise CorpusError("repetitive", f"After dropping repeated paragraphs and lines, the text has "
                                        f"{_kb(found.distinct_bytes)} of distinct text (of {_kb(found.n_bytes)}); at "
                                        f"least {_kb(min_bytes)} is needed to learn a voice and to measure it on text "
                                        "it has not seen. Upload more, different text.")
    if found.compressed_ratio < MIN_COMPRESSED_RATIO:
        raise CorpusError("repetitive", f"The text repeats itself: its {_kb(found.distinct_bytes)} of distinct lines "
                                        f"compress to {found.compressed_ratio:.0%} of their size, where prose "
                                        f"compresses to 30-47 % (the least accepted is {MIN_COMPRESSED_RATIO:.0%}); "
                                        "a model would learn the repetition, not a voice. Upload varied text.")
    return found
