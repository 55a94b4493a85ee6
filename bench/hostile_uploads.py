"""Hostile uploads: malformed, mis-encoded, binary and oddly named files, each sent through the real ingest
path (db.ingest.ingest: file-name check, the guild's upload cap, core.text.decode_corpus, row + blob), issue 12.

    .venv/bin/python bench/hostile_uploads.py [--database-url URL] [--only NAME ...]

Runs against a temporary, migrated SQLite database and local storage (or --database-url, e.g. a scratch
PostgreSQL schema, whose rows are left there). The guild's cap is set to CAP bytes in guild_settings, so
"just over the cap" goes through the same upload_limit() lookup as a Discord upload.

Per case: outcome (accepted, or refused with its IngestError code, or CRASH with the exception type),
what was expected, and the debris check: a refused upload must leave no corpus row and no stored blob. An
accepted upload must store exactly the expected text when the case names one, so mojibake counts as
"accepted wrongly". The table is printed and written to bench/results/hostile_uploads.json;
tests/test_hostile_uploads.py asserts 0 accepted wrongly, 0 crashes and 0 debris.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import io
import json
import lzma
import random
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select

import db
from db.ingest import IngestError, ingest
from db.models import Corpus, GuildSettings
from db.session import get_sessionmaker, make_engine
from db.storage import Storage

RESULTS = ROOT / "bench" / "results" / "hostile_uploads.json"
CAP = 1_000_000  # the guild's upload cap for every case
GUILD = 4242
ACCEPT = "accepted"

PROSE = ("It was the best of times, it was the worst of times. \u201cQuoted,\u201d she said \u2014 caf\u00e9 "
         "na\u00efve, tr\u00e8s bien, \u00e0 bient\u00f4t.\n") * 12
FRENCH = "Le c\u0153ur a ses raisons que la raison ne conna\u00eet point. \u00c9t\u00e9, p\u00e8re, f\u00eate.\n" * 8
RUSSIAN = "Все счастливые семьи похожи друг на друга, каждая несчастливая семья несчастлива по-своему.\n" * 5
JAPANESE = "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。\n" * 10
CHINESE = "我们的祖国是花园，花园的花朵真鲜艳。和暖的阳光照耀着我们，每个人脸上都笑开颜。\n" * 8
ASCII = ("The quick brown fox jumps over the lazy dog. " * 3 + "\n") * 10


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    expected: frozenset[str] = frozenset({ACCEPT})  # ACCEPT and/or refusal codes
    text: str | None = None  # when accepted: exactly this text must be stored (no mojibake)
    filename: str = "upload.txt"


def refuse(*codes: str) -> frozenset[str]:
    return frozenset(codes)


def _zip(data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("book.txt", data)
    return buffer.getvalue()


def cases() -> list[Case]:
    prose, rng = PROSE.encode(), random.Random(12)
    legacy_or_refused = frozenset({ACCEPT, "encoding"})  # a correct decoding, or an honest "cannot tell"
    return [
        # -- encodings that must be read correctly, or refused: never stored as mojibake
        Case("utf-8", prose, text=PROSE),
        Case("utf-8-bom", b"\xef\xbb\xbf" + prose, text=PROSE),
        Case("utf-16-le-bom", b"\xff\xfe" + PROSE.encode("utf-16-le"), text=PROSE),
        Case("utf-16-be-bom", b"\xfe\xff" + PROSE.encode("utf-16-be"), text=PROSE),
        Case("cp1252-curly-quotes", PROSE.encode("cp1252"), text=PROSE),
        Case("cp1252-french-grave-accents", FRENCH.encode("cp1252"), text=FRENCH),
        Case("utf-8-bom-then-cp1252", b"\xef\xbb\xbf" + PROSE.encode("cp1252"), text=PROSE),
        Case("cp1251-russian", RUSSIAN.encode("cp1251"), legacy_or_refused, RUSSIAN),
        Case("koi8-r-russian", RUSSIAN.encode("koi8_r"), legacy_or_refused, RUSSIAN),
        Case("shift-jis-japanese", JAPANESE.encode("shift_jis"), legacy_or_refused, JAPANESE),
        Case("euc-jp-japanese", JAPANESE.encode("euc_jp"), legacy_or_refused, JAPANESE),
        Case("gbk-chinese", CHINESE.encode("gbk"), legacy_or_refused, CHINESE),
        Case("mixed-utf8-and-cp1252", prose + PROSE.encode("cp1252"), refuse("encoding")),
        Case("mixed-utf8-and-shift-jis", JAPANESE.encode() + JAPANESE.encode("shift_jis"), refuse("encoding")),
        Case("mixed-cp1252-and-shift-jis", PROSE.encode("cp1252") + JAPANESE.encode("shift_jis"),
             refuse("encoding")),
        Case("utf-8-with-3-stray-bytes", prose[:200] + b"\x93" + prose[200:700] + b"\xff\xfe" + prose[700:],
             text=PROSE),
        Case("utf-8-truncated-last-char", prose + "\u00e9".encode()[:1], text=PROSE),
        Case("utf-16-truncated-odd-length", b"\xff\xfe" + PROSE.encode("utf-16-le") + b"x", refuse("encoding")),
        Case("utf-16-lone-surrogate", b"\xff\xfe" + PROSE.encode("utf-16-le") + b"\x00\xd8",
             refuse("encoding")),
        Case("utf-16-without-bom", PROSE.encode("utf-16-le"), refuse("binary")),
        Case("utf-16-with-nul-chars", b"\xff\xfe" + (PROSE + "\x00").encode("utf-16-le"), refuse("binary")),
        Case("utf-32-bom", b"\xff\xfe\x00\x00" + PROSE.encode("utf-32-le"), refuse("encoding")),
        Case("utf-32-without-bom", PROSE.encode("utf-32-le"), refuse("binary")),
        Case("utf-8-bom-only", b"\xef\xbb\xbf", refuse("empty")),
        Case("utf-16-bom-only", b"\xff\xfe", refuse("empty")),
        Case("random-bytes", rng.randbytes(4000), refuse("encoding", "binary")),
        Case("all-0xff-bytes", b"\xff" * 1000, refuse("encoding", "binary", "no_text", "empty")),
        Case("high-bytes-no-nul", bytes(rng.randrange(0x80, 0x100) for _ in range(3000)),
             refuse("encoding", "binary", "no_text")),
        # -- binary formats
        Case("gzip", gzip.compress(prose), refuse("compressed")),
        Case("zip", _zip(prose), refuse("compressed")),
        Case("docx-is-zip", _zip(prose), refuse("compressed"), filename="renamed-docx.txt"),
        Case("bzip2", bz2.compress(prose), refuse("compressed")),
        Case("xz", lzma.compress(prose), refuse("compressed")),
        Case("pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n" + prose,
             refuse("binary")),
        Case("png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + rng.randbytes(500), refuse("binary")),
        Case("jpeg", b"\xff\xd8\xff\xe0\x00\x10JFIF" + rng.randbytes(500), refuse("binary")),
        Case("elf-program", b"\x7fELF\x02\x01\x01" + rng.randbytes(500), refuse("binary")),
        Case("windows-program", b"MZ\x90\x00\x03" + rng.randbytes(500), refuse("binary")),
        Case("old-office-doc", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + rng.randbytes(500), refuse("binary")),
        Case("sqlite-database", b"SQLite format 3\x00" + rng.randbytes(500), refuse("binary")),
        Case("tar-archive", b"book.txt" + b"\x00" * 92 + b"0000644\x00" + prose, refuse("binary")),
        Case("rtf", b"{\\rtf1\\ansi " + prose + b"}", refuse("binary")),
        Case("html-page", b"<!DOCTYPE html>\n<html><body>\n<p>" + prose + b"</p></body></html>", refuse("html")),
        Case("html-fragment-lines", b"".join(b"<p>line %d of markup</p>\n" % i for i in range(40)),
             refuse("html")),
        # -- size and shape
        Case("empty", b"", refuse("empty")),
        Case("one-byte", b"a", refuse("too_small")),
        Case("too-small", b"x" * 150, refuse("too_small")),
        Case("only-spaces", b" " * 5000, refuse("empty")),
        Case("only-newlines-and-tabs", b"\n\t\r\n " * 1000, refuse("empty")),
        Case("only-unicode-spaces", "\u00a0\u2003\u3000\n".encode() * 300, refuse("empty")),
        Case("just-over-the-cap", ASCII.encode() * (CAP // len(ASCII) + 1), refuse("too_large")),
        Case("at-the-cap", (ASCII.encode() * (CAP // len(ASCII) + 1))[:CAP]),
        Case("huge-line", b"word " * 20_001, refuse("line_too_long")),
        Case("gutenberg-boilerplate-only", b"*** START OF THE PROJECT GUTENBERG EBOOK X ***\n\n"
                                           b"*** END OF THE PROJECT GUTENBERG EBOOK X ***\n", refuse("empty")),
        # -- control, NUL and invisible characters
        Case("nul-laden", b"abc\x00def " * 200, refuse("binary")),
        Case("one-nul-in-text", prose[:500] + b"\x00" + prose[500:], refuse("binary")),
        Case("only-control-chars", bytes(range(1, 9)) * 300, refuse("binary")),
        Case("half-control-chars", b"ab\x01\x02\x03" * 300, refuse("binary")),
        Case("few-escape-sequences", prose + b"\x1b[31m red \x1b[0m\n",
             text=PROSE + "[31m red [0m\n"),
        Case("only-bidi-controls", "\u202e\u202d\u2066\u2067\u2069\u200f\u200e\n".encode() * 100, refuse("no_text")),
        Case("only-zero-width", "\u200b\u200c\u200d\ufeff \n".encode() * 100, refuse("no_text")),
        Case("only-private-use", "\ue000\ue001\uf8ff ".encode() * 100, refuse("no_text")),
        Case("bidi-override-flood", ("\u202e\u2066a" * 300).encode(), refuse("no_text")),
        Case("rtl-text-with-marks", ("\u200fשלום עולם, مرحبا بالعالم\n" * 20).encode(),
             text="\u200fשלום עולם, مرحبا بالعالم\n" * 20),
        Case("emoji-only", ("😀🎉👍🏽👨\u200d👩\u200d👧 " * 60).encode(), text="😀🎉👍🏽👨\u200d👩\u200d👧 " * 60),
        Case("zalgo-combining-flood", ("Z" + "\u0336\u0337\u0338" * 30 + " ") .encode() * 40),
        # -- file names
        Case("name-with-nul", prose, refuse("bad_filename"), filename="story\x00.txt"),
        Case("name-with-newline", prose, refuse("bad_filename"), filename="story\n.txt"),
        Case("name-with-bidi-override", prose, refuse("bad_filename"), filename="story\u202etxt.exe"),
        Case("name-with-lone-surrogate", prose, refuse("bad_filename"), filename="story\udc80.txt"),
        Case("name-dot-dot", prose, refuse("bad_filename"), filename=".."),
        Case("name-path-traversal", prose + b"traversal\n", filename="../../etc/passwd.txt"),
        Case("name-windows-path", prose + b"windows\n", filename="C:\\Users\\me\\book.txt"),
        Case("name-empty", prose, refuse("bad_filename"), filename=""),
        Case("name-only-extension", prose, refuse("bad_filename"), filename=".txt"),
        Case("name-executable", prose, refuse("bad_filename"), filename="book.exe"),
        Case("name-very-long", prose + b"long name\n", filename="a" * 10_000 + ".txt"),
    ]


@dataclass
class Outcome:
    case: str
    outcome: str
    expected: list[str]
    message: str
    debris: bool
    wrong: bool  # accepted though not allowed, or accepted with a different text (mojibake)
    crash: bool
    seconds: float


def _counts(session, storage: Storage) -> tuple[int, int]:
    return session.scalar(select(func.count()).select_from(Corpus)), len(storage.keys())


def run_case(case: Case, sessionmaker, storage: Storage) -> Outcome:
    with sessionmaker() as session:
        rows_before, blobs_before = _counts(session, storage)
    start, message, stored = time.perf_counter(), "", None
    with sessionmaker() as session:
        try:
            result = ingest(case.data, case.filename, uploader=1, guild=GUILD, session=session, storage=storage)
            outcome = ACCEPT
            stored = storage.get(result.corpus.storage_key).decode("utf-8")
            message = f"{result.corpus.encoding}, {result.corpus.n_chars:,} chars, name {result.corpus.filename[:40]!r}"
            if result.warnings:
                message += "; " + " ".join(result.warnings)
        except IngestError as e:
            outcome, message = e.code, e.message
        except Exception as e:  # noqa: BLE001 - the point: anything but IngestError is a crash
            outcome, message = "CRASH", f"{type(e).__name__}: {e}"[:300]
            session.rollback()
    seconds = time.perf_counter() - start
    with sessionmaker() as session:
        rows_after, blobs_after = _counts(session, storage)
    refused = outcome not in (ACCEPT, "CRASH")
    debris = (refused or outcome == "CRASH") and (rows_after, blobs_after) != (rows_before, blobs_before)
    wrong = outcome == ACCEPT and (ACCEPT not in case.expected or (case.text is not None and stored != case.text))
    return Outcome(case.name, outcome, sorted(case.expected), message, debris, wrong, outcome == "CRASH", seconds)


def run(database_url: str | None = None, only: list[str] | None = None) -> list[Outcome]:
    selected = [c for c in cases() if not only or c.name in only]
    with tempfile.TemporaryDirectory(prefix="hostile-uploads-") as tmp:
        url = database_url or f"sqlite:///{tmp}/hostile.db"
        db.upgrade(url, seed=False)
        engine = make_engine(url)
        sessionmaker = get_sessionmaker(engine)
        with sessionmaker() as session:
            if session.get(GuildSettings, GUILD) is None:
                session.add(GuildSettings(guild_id=GUILD, max_upload_bytes=CAP))
                session.commit()
        storage = Storage(f"{tmp}/storage")
        try:
            return [run_case(case, sessionmaker, storage) for case in selected]
        finally:
            engine.dispose()


def summary(outcomes: list[Outcome]) -> dict:
    return {
        "cases": len(outcomes),
        "accepted": sum(o.outcome == ACCEPT for o in outcomes),
        "refused": sum(o.outcome not in (ACCEPT, "CRASH") for o in outcomes),
        "accepted_wrongly": sum(o.wrong for o in outcomes),
        "refused_unexpectedly": sum(o.outcome not in o.expected and not o.crash and not o.wrong for o in outcomes),
        "crashes": sum(o.crash for o in outcomes),
        "debris": sum(o.debris for o in outcomes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="ingest into this migrated database instead of a temporary SQLite")
    parser.add_argument("--only", nargs="*", help="case names to run")
    args = parser.parse_args()
    outcomes = run(args.database_url, args.only)
    print(f"{'case':34} {'outcome':14} {'expected':28} {'debris':6}  message")
    for o in outcomes:
        flag = " CRASH" if o.crash else " WRONG" if o.wrong else " unexpected" if o.outcome not in o.expected else ""
        print(f"{o.case:34} {o.outcome:14} {'|'.join(o.expected):28} {'YES' if o.debris else 'no':6}  "
              f"{o.message[:110]!r}{flag}")
    totals = summary(outcomes)
    print(json.dumps(totals))
    if not args.only and not args.database_url:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps({"summary": totals, "cap_bytes": CAP,
                                       "cases": [o.__dict__ for o in outcomes]}, indent=1, ensure_ascii=False) + "\n")
        print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
