"""Corpus decoding, validation and lookup (trainer/corpus.py): real bytes in, exact text or error codes out."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import random
import sys
import zipfile
from pathlib import Path

import pytest

from core.text import CorpusError, DecodedCorpus, decode_corpus
from trainer.corpus import CorpusEntry, find_corpus, fit_batch_shape, list_corpora, load_corpus

CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"
needs_corpora = pytest.mark.skipif(not CORPORA.is_dir(), reason=f"shared corpora not found at {CORPORA}")


def decode(data: bytes, **limits) -> DecodedCorpus:
    limits.setdefault("min_chars", 1)  # most cases are tiny on purpose; rule 7 has its own tests
    return decode_corpus(data, **limits)


def error(data: bytes, **limits) -> CorpusError:
    with pytest.raises(CorpusError) as info:
        decode(data, **limits)
    return info.value


# -----------------------------------------------------------------------------
# decoding: encodings and normalisation

FAMILY = "\U0001F468\u200d\U0001F469\u200d\U0001F467"  # man ZWJ woman ZWJ girl: 5 code points

DECODES = [
    # (id, raw bytes, expected text, encoding)
    ("utf-8", "café naïve 東京\n".encode(), "café naïve 東京\n", "utf-8"),
    ("utf-8-bom", b"\xef\xbb\xbf" + "café\n".encode(), "café\n", "utf-8-sig"),
    ("utf-16-le", b"\xff\xfe" + "café 🎉\n".encode("utf-16-le"), "café 🎉\n", "utf-16-le"),
    ("utf-16-be", b"\xfe\xff" + "café 🎉\n".encode("utf-16-be"), "café 🎉\n", "utf-16-be"),
    ("cp1252", b"caf\xe9 \x93quoted\x94 \x80 5\n", "café “quoted” € 5\n", "cp1252"),
    ("cp1252-after-bom", b"\xef\xbb\xbfcaf\xe9\n", "café\n", "cp1252"),
    ("nfc", "cafe\u0301 n\u0303\n".encode(), "café ñ\n", "utf-8"),
    ("crlf", b"one\r\ntwo\r\n", "one\ntwo\n", "utf-8"),
    ("cr", b"one\rtwo\r", "one\ntwo\n", "utf-8"),
    ("mixed-newlines", b"a\r\n\rb\nc", "a\n\nb\nc", "utf-8"),
    ("emoji-rtl-zwj", f"{FAMILY} שלום مرحبا a\u200db 👍🏽\n".encode(), f"{FAMILY} שלום مرحبا a\u200db 👍🏽\n", "utf-8"),
    ("utf-16-astral-nfc", b"\xff\xfe" + "e\u0301 𝄞\r\n".encode("utf-16-le"), "é 𝄞\n", "utf-16-le"),
    ("few-control-chars-removed", b"text with a \x1b escape and a \x0b tab\n", "text with a  escape and a  tab\n",
     "utf-8"),
    ("br-tags-inside-lines", b"Great film.<br /><br />Loved it.\nAwful <i>movie</i>.\n",
     "Great film.<br /><br />Loved it.\nAwful <i>movie</i>.\n", "utf-8"),
]


@pytest.mark.parametrize("raw, text, encoding", [c[1:] for c in DECODES], ids=[c[0] for c in DECODES])
def test_decodes(raw, text, encoding):
    corpus = decode(raw)
    assert corpus.text == text
    assert corpus.encoding == encoding
    assert corpus.n_chars == len(text)
    assert corpus.n_bytes == len(raw)
    assert corpus.sha256 == hashlib.sha256(raw).hexdigest()


def test_cp1252_fallback_warns_and_utf8_does_not():
    assert decode(b"caf\xe9 au lait\n").warnings == ("Decoded as cp1252 (not valid UTF-8).",)
    assert decode("café au lait\n".encode()).warnings == ()


# issue 12: legacy encodings through charset-normalizer, never mojibake
PROSE = "It was the best of times. \u201cQuoted,\u201d she said \u2014 caf\u00e9 na\u00efve, tr\u00e8s bien. " * 20


def test_shift_jis_is_decoded_as_japanese_not_cp1252_mojibake():
    text = "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。\n" * 10
    corpus = decode(text.encode("shift_jis"))
    assert corpus.text == text and corpus.encoding == "cp932"


def test_western_legacy_text_is_cp1252_so_e_grave_stays_e_grave():
    corpus = decode(PROSE.encode("cp1252"))
    assert (corpus.text, corpus.encoding) == (PROSE, "cp1252")  # the detector alone names cp1250: "è" -> "č"


def test_utf8_with_a_few_stray_bytes_keeps_its_curly_quotes():
    good = PROSE.encode()
    raw = good[:300] + b"\x93" + good[300:] + b"\xff\xfe"
    corpus = decode(raw)
    assert corpus.text == PROSE and corpus.encoding == "utf-8" and "â€" not in corpus.text
    assert corpus.warnings == ("Removed 3 bytes that were not valid UTF-8 (the first at byte 300).",)


def test_mixed_utf8_and_cp1252_is_refused():
    err = error(PROSE.encode() + PROSE.encode("cp1252"))
    assert err.code == "encoding" and "different encodings" in err.message


def test_utf16_with_nul_characters_is_refused():
    err = error(b"\xff\xfe" + ("abc\x00def " * 50).encode("utf-16-le"))
    assert err.code == "binary" and "U+0000" in err.message


@pytest.mark.parametrize("raw", ["\u202e\u200f\u2066\u2069\n".encode() * 100,
                                 "\u200b \ue000 \u200d\n".encode() * 100, ("\u202e\u2066a" * 300).encode()],
                         ids=["bidi-only", "zero-width-private", "mostly-bidi"])
def test_invisible_only_text_is_refused(raw):
    assert error(raw).code == "no_text"


def test_rtl_text_with_direction_marks_is_kept():
    text = "\u200fשלום עולם, مرحبا بالعالم\n" * 20
    assert decode(text.encode()).text == text


def test_odd_unicode_counts_code_points():
    corpus = decode(f"{FAMILY}\nשלום\n".encode())
    assert corpus.n_chars == 5 + 1 + 4 + 1
    assert corpus.n_lines == 2
    assert corpus.n_words == 2
    assert corpus.n_unique_chars == 4 + 1 + 4  # man, woman, girl, ZWJ; newline; 4 Hebrew letters
    assert corpus.n_unique_words == 1  # emoji are not words; Hebrew is


def test_nfc_composes_before_counting():
    corpus = decode("e\u0301e\u0301 é\n".encode())
    assert corpus.text == "éé é\n"
    assert corpus.n_unique_chars == 3  # é, space, newline
    assert corpus.n_unique_words == 2


def test_stats_on_a_known_text():
    raw = b"The cat sat.\r\nThe dog, the CAT!\r\nDon't don't DON\xe2\x80\x99T"
    corpus = decode(raw)
    assert corpus.text == "The cat sat.\nThe dog, the CAT!\nDon't don't DON’T"
    assert corpus.stats() == {
        "encoding": "utf-8",
        "sha256": hashlib.sha256(raw).hexdigest(),
        "n_bytes": 52,  # the curly apostrophe is 3 bytes, each CRLF 2
        "n_chars": 48,
        "n_lines": 3,
        "n_words": 10,
        "n_unique_chars": 23,  # T h e space c a t s . newline d o g , C A ! D n ' O N ’
        "n_unique_words": 5,  # the cat sat dog don't: lower-cased, punctuation split off, ’ read as '
    }
    json.dumps(corpus.stats())


def test_combining_marks_stay_inside_words():
    corpus = decode("हिन्दी हिन्दी भाषा\n".encode())
    assert corpus.n_words == 3
    assert corpus.n_unique_words == 2


def test_trailing_newline_does_not_count_as_a_line():
    assert decode(b"a\nb\n").n_lines == 2
    assert decode(b"a\nb").n_lines == 2
    assert decode(b"a\n\n").n_lines == 2


def test_sha256_is_of_the_raw_bytes():
    lf, crlf = decode(b"same text\n"), decode(b"same text\r\n")
    assert lf.text == crlf.text
    assert lf.sha256 != crlf.sha256
    assert crlf.sha256 == hashlib.sha256(b"same text\r\n").hexdigest()


# -----------------------------------------------------------------------------
# Project Gutenberg boilerplate

PG_NEW = """The Project Gutenberg eBook of Test Book

This eBook is for the use of anyone anywhere in the United States.

*** START OF THE PROJECT GUTENBERG EBOOK TEST BOOK ***



CHAPTER I.

Body line one.
Body line two.



*** END OF THE PROJECT GUTENBERG EBOOK TEST BOOK ***

Updated editions will replace the previous one.
"""

PG_OLD = """Project Gutenberg's Test Book, by Someone\r
\r
*** START OF THIS PROJECT GUTENBERG EBOOK TEST BOOK ***\r
\r
Body line one.\r
\r
End of the Project Gutenberg EBook of Test Book, by Someone\r
\r
*** END OF THIS PROJECT GUTENBERG EBOOK TEST BOOK ***\r
\r
***** This file should be named 11.txt or 11.zip *****\r
"""


@pytest.mark.parametrize("raw, text, warning", [
    (PG_NEW, "CHAPTER I.\n\nBody line one.\nBody line two.\n", "Removed Project Gutenberg header and footer."),
    (PG_OLD, "Body line one.\n", "Removed Project Gutenberg header and footer."),
    ("licence\n*** start of the project gutenberg ebook x ***\nBody.\n", "Body.\n",
     "Removed Project Gutenberg header."),
    ("Body.\n***END OF THE PROJECT GUTENBERG EBOOK X***\nlicence\n", "Body.\n", "Removed Project Gutenberg footer."),
], ids=["current", "old-crlf", "header-only", "footer-only"])
def test_gutenberg_boilerplate_is_removed(raw, text, warning):
    corpus = decode(raw.encode())
    assert corpus.text == text
    assert corpus.warnings == (warning,)


def test_text_that_only_mentions_gutenberg_is_untouched():
    raw = "I read it on Project Gutenberg.\n*** a line of stars ***\n"
    corpus = decode(raw.encode())
    assert corpus.text == raw
    assert corpus.warnings == ()


def test_gutenberg_with_nothing_inside_is_empty():
    raw = b"*** START OF THE PROJECT GUTENBERG EBOOK X ***\n\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\n"
    assert error(raw).code == "empty"


# -----------------------------------------------------------------------------
# errors

def _zip(payload: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("book.txt", payload)
    return buffer.getvalue()


TEXT = b"It was a bright cold day in April, and the clocks were striking thirteen.\n" * 4
HTML_BY_DENSITY = b"".join(b"<p class=\"x\">paragraph %d</p>\nplain line\n" % i for i in range(5))

ERRORS = [
    # (id, raw bytes, limits, code, words the message must contain)
    ("empty", b"", {}, "empty", "empty"),
    ("whitespace-only", b"  \n\t \r\n", {}, "empty", "only whitespace"),
    ("bom-only", b"\xef\xbb\xbf", {}, "empty", "only whitespace"),
    ("nul-bytes", b"abc\x00def " * 50, {}, "binary", "NUL bytes"),
    ("mostly-control", bytes(range(1, 32)) * 20, {}, "binary", "control characters"),
    ("gzip", gzip.compress(TEXT), {}, "compressed",
     "This looks like a gzip archive, not text: decompress it and upload the .txt inside."),
    ("zip", _zip(TEXT), {}, "compressed", "zip archive"),
    ("bzip2", bz2.compress(TEXT), {}, "compressed", "bzip2 archive"),
    ("xz", lzma.compress(TEXT), {}, "compressed", "xz archive"),
    ("7z", b"7z\xbc\xaf\x27\x1c\x00\x04" + TEXT, {}, "compressed", "7-Zip archive"),
    ("pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + TEXT, {}, "binary", "PDF document"),
    ("png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + TEXT, {}, "binary", "PNG image"),
    ("jpeg", b"\xff\xd8\xff\xe0\x00\x10JFIF" + TEXT, {}, "binary", "JPEG image"),
    ("gif", b"GIF89a" + TEXT, {}, "binary", "GIF image"),
    ("rtf", b"{\\rtf1\\ansi " + TEXT + b"}", {}, "binary", "RTF document"),
    ("html-doctype", b"\n  <!DOCTYPE html>\n<html><body>" + TEXT + b"</body></html>", {}, "html", "HTML page"),
    ("html-tag", b"<HTML>\n<head><title>x</title></head>\n" + TEXT, {}, "html", "HTML page"),
    ("html-by-tag-density", HTML_BY_DENSITY, {}, "html", "save it as plain text"),
    ("too-large-bytes", b"x" * 101, {"max_bytes": 100}, "too_large",
     "The file is 101 bytes; the limit is 100 bytes."),
    ("too-large-kb", b"x" * 61_200, {"max_bytes": 50_000}, "too_large", "The file is 61.2 KB; the limit is 50.0 KB."),
    ("too-large-before-magic", gzip.compress(TEXT), {"max_bytes": 10}, "too_large", "the limit is 10 bytes"),
    ("line-too-long", b"short\n" * 11 + b"y" * 300 + b"\nshort\n", {"max_line_chars": 250}, "line_too_long",
     "Line 12 is 300 characters long; the limit is 250"),
    ("line-too-long-crlf", b"a\r\n" + b"y" * 251, {"max_line_chars": 250}, "line_too_long", "Line 2 is 251"),
    ("too-small", b"x" * 57, {"min_chars": 200}, "too_small",
     "The text has 57 characters; at least 200 are needed to train."),
    ("too-small-after-normalising", b"ab\r\n" * 50, {"min_chars": 200}, "too_small", "The text has 150 characters"),
    ("utf-16-odd-length", b"\xff\xfe" + "abc".encode("utf-16-le") + b"d", {}, "encoding", "not valid UTF-16"),
    ("utf-16-lone-surrogate", b"\xff\xfe\x00\xd8a\x00", {}, "encoding", "not valid UTF-16"),
    ("utf-32", b"\xff\xfe\x00\x00" + "abc".encode("utf-32-le"), {}, "encoding", "UTF-32"),
]


@pytest.mark.parametrize("raw, limits, code, words", [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_rejects(raw, limits, code, words):
    err = error(raw, **limits)
    assert err.code == code
    assert words in str(err)


def test_corpus_error_is_a_value_error_with_a_readable_message():
    err = CorpusError("empty", "The file is empty.")
    assert isinstance(err, ValueError)
    assert (err.code, str(err)) == ("empty", "The file is empty.")


def test_default_min_chars_is_200():
    assert error(b"x" * 199, min_chars=200).code == "too_small"
    assert decode_corpus(b"x" * 199 + b"\n").n_chars == 200
    with pytest.raises(CorpusError, match="at least 200"):
        decode_corpus(b"x" * 199)


def test_line_limit_is_inclusive():
    assert decode(b"y" * 250, max_line_chars=250).n_chars == 250


@pytest.mark.parametrize("start", [b"BZh9 is my password", b"GIF8 and more", b"PK is a footballer", b"%PD", b"7z"])
def test_text_that_merely_starts_like_a_format_is_text(start):
    assert decode(start + b"\n" + TEXT).encoding == "utf-8"


def test_a_few_tags_do_not_make_html():
    raw = b"<b>Title</b>\n" + TEXT  # 1 tag line in 5
    assert decode(raw).text.startswith("<b>Title</b>\n")


def test_never_crashes_on_random_bytes():
    rng = random.Random(0)
    for _ in range(300):
        raw = rng.randbytes(rng.choice([1, 2, 3, 7, 64, 500, 4000]))
        try:
            decode(raw)
        except CorpusError as err:
            assert err.code in {"empty", "too_small", "binary", "compressed", "html", "too_large",
                                "line_too_long", "encoding", "no_text"}


# -----------------------------------------------------------------------------
# lookup by name

REAL = {
    "alice": "alice/alice.txt",
    "base": "base",  # a folder of 42 books: a multi-document corpus
    "imdb": "imdb/train.txt",
    "shakespeare": "shakespeare/input.txt",
    "trump": "trump/speeches.txt",
}


@needs_corpora
@pytest.mark.parametrize("name, relative", REAL.items())
def test_finds_the_real_corpora(name, relative):
    assert find_corpus(name, [CORPORA]) == CORPORA / relative


@needs_corpora
def test_finds_through_the_environment_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("IMPROBABLE_CORPUS_PATH", os.pathsep.join([str(tmp_path / "missing"), str(CORPORA)]))
    assert find_corpus("shakespeare") == CORPORA / "shakespeare" / "input.txt"
    assert [e.name for e in list_corpora()] == sorted(REAL)


def test_without_a_search_path_names_are_not_found(monkeypatch):
    monkeypatch.delenv("IMPROBABLE_CORPUS_PATH", raising=False)
    with pytest.raises(CorpusError, match="IMPROBABLE_CORPUS_PATH") as info:
        find_corpus("shakespeare")
    assert info.value.code == "not_found"


@needs_corpora
def test_lists_the_real_corpora():
    entries = list_corpora([CORPORA])
    sizes = {name: sum(p.stat().st_size for p in (CORPORA / rel).glob("*.txt")) if (CORPORA / rel).is_dir()
             else (CORPORA / rel).stat().st_size for name, rel in REAL.items()}
    assert entries == [CorpusEntry(name, CORPORA / rel, sizes[name]) for name, rel in REAL.items()]
    assert "harry_potter" not in [e.name for e in entries]


@needs_corpora
def test_harry_potter_has_no_text():
    with pytest.raises(CorpusError) as info:
        find_corpus("harry_potter", [CORPORA])
    assert info.value.code == "not_found"
    assert "harry_potter has no text file (it has NOTES.md)" in str(info.value)
    assert "Available corpora: alice, base, imdb, shakespeare, trump." in str(info.value)


@needs_corpora
def test_unknown_name_suggests_close_matches():
    with pytest.raises(CorpusError) as info:
        find_corpus("shakespere", [CORPORA])
    assert info.value.code == "not_found"
    assert str(info.value) == ("There is no corpus called 'shakespere'. Did you mean shakespeare? "
                               "Available corpora: alice, base, imdb, shakespeare, trump.")


@needs_corpora
def test_names_are_case_insensitive_as_a_fallback():
    assert find_corpus("Trump", [CORPORA]) == CORPORA / "trump" / "speeches.txt"


@needs_corpora
def test_direct_paths():
    alice = CORPORA / "alice" / "alice.txt"
    assert find_corpus(alice) == alice
    assert find_corpus(str(alice), []) == alice
    assert find_corpus(str(CORPORA / "imdb")) == CORPORA / "imdb" / "train.txt"  # a corpus folder
    with pytest.raises(CorpusError) as info:
        find_corpus(str(CORPORA / "nope.txt"), [CORPORA])
    assert info.value.code == "not_found"


def _write(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    return root


def test_folder_rules(tmp_path):
    root = _write(tmp_path, {
        "flat.txt": "a",
        "flat/train.txt": "shadowed by flat.txt",
        "both/input.txt": "b", "both/train.txt": "train wins",
        "named/named.txt": "c", "named/other.txt": "d",
        "single/book.txt": "e", "single/valid.txt": "", "single/test.txt": "", "single/book.labels.txt": "",
        "several/a.txt": "", "several/b.txt": "",
        "notext/NOTES.md": "",
        "labels.labels.txt": "",
        ".hidden/train.txt": "",
    })
    assert find_corpus("flat", [root]) == root / "flat.txt"
    assert find_corpus("both", [root]) == root / "both" / "train.txt"
    assert find_corpus("named", [root]) == root / "named" / "named.txt"
    assert find_corpus("single", [root]) == root / "single" / "book.txt"
    assert find_corpus("several", [root]) == root / "several"  # a multi-document corpus
    assert [e.name for e in list_corpora([root])] == ["both", "flat", "named", "several", "single"]
    assert list_corpora([root])[1] == CorpusEntry("flat", root / "flat.txt", 1)


def test_earlier_folders_win(tmp_path):
    first = _write(tmp_path / "first", {"x.txt": "first", "empty/NOTES.md": ""})
    second = _write(tmp_path / "second", {"x/train.txt": "second", "empty/train.txt": "found later"})
    assert find_corpus("x", [first, second]) == first / "x.txt"
    assert find_corpus("empty", [first, second]) == second / "empty" / "train.txt"
    assert [(e.name, e.path) for e in list_corpora([first, second])] == [
        ("empty", second / "empty" / "train.txt"), ("x", first / "x.txt")]


def test_names_cannot_escape_the_search_path(tmp_path, monkeypatch):
    _write(tmp_path, {"secret/train.txt": "no", "corpora/ok.txt": "yes"})
    # ".." is a path, resolved from the working directory: pin it, since a parent folder holding several .txt
    # files is a (multi-document) corpus, and CI's checkout may sit beside some
    (tmp_path / "elsewhere" / "cwd").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "elsewhere" / "cwd")
    for name in ["..", "../secret", ".hidden"]:
        with pytest.raises(CorpusError) as info:
            find_corpus(name, [tmp_path / "corpora"])
        assert info.value.code == "not_found"


# -----------------------------------------------------------------------------
# load_corpus

@needs_corpora
def test_loads_a_real_corpus_matching_its_readme():
    corpus = load_corpus("alice", [CORPORA])
    assert corpus.sha256 == "f17aa0bf7466424a8b357b688678666bad7a0148963ef349016a3098faa6bd1e"
    assert (corpus.n_bytes, corpus.n_chars, corpus.n_lines) == (151_095, 144_600, 3_380)
    assert corpus.encoding == "utf-8"
    assert corpus.warnings == ()
    assert corpus.text.startswith("[Illustration]\n\n\n\n\nAlice’s Adventures in Wonderland\n")


@needs_corpora
def test_load_passes_limits_and_checks_size_before_reading():
    with pytest.raises(CorpusError) as info:
        load_corpus("imdb", [CORPORA], max_bytes=1_000_000)
    assert info.value.code == "too_large"
    assert str(info.value).startswith("The file is 25.0 MB; the limit is 1.0 MB.")
    with pytest.raises(CorpusError) as info:
        load_corpus("alice", [CORPORA], min_chars=10**6)
    assert info.value.code == "too_small"


def test_load_a_file_path(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_bytes(b"caf\xe9\r\n" * 60)
    corpus = load_corpus(path)
    assert (corpus.text, corpus.encoding) == ("café\n" * 60, "cp1252")


# -----------------------------------------------------------------------------
# fit_batch_shape

@pytest.mark.parametrize("n_tokens, batch_size, seq_len, expected", [
    (10_000, 64, 100, (64, 100, None)),
    (204, 4, 50, (4, 50, None)),  # exactly 4 x 51
    (203, 4, 50, (3, 50, "Corpus has 203 tokens: batch size reduced from 4 to 3 to fit.")),
    (900, 64, 50, (17, 50, "Corpus has 900 tokens: batch size reduced from 64 to 17 to fit.")),
    (30, 64, 50, (1, 29, "Corpus has 30 tokens: batch size reduced from 64 to 1 and sequence length reduced "
                         + "from 50 to 29 to fit.")),
    (30, 1, 50, (1, 29, "Corpus has 30 tokens: sequence length reduced from 50 to 29 to fit.")),
    (9, 8, 100, (1, 8, "Corpus has 9 tokens: batch size reduced from 8 to 1 and sequence length reduced "
                       + "from 100 to 8 to fit.")),
    (5, 2, 4, (1, 4, "Corpus has 5 tokens: batch size reduced from 2 to 1 to fit.")),
])
def test_fit_batch_shape(n_tokens, batch_size, seq_len, expected):
    assert fit_batch_shape(n_tokens, batch_size, seq_len) == expected


@pytest.mark.parametrize("n_tokens, seq_len, min_seq_len, needed", [(8, 100, 8, 9), (3, 100, 16, 17), (4, 4, 8, 5)])
def test_fit_batch_shape_impossible(n_tokens, seq_len, min_seq_len, needed):
    with pytest.raises(CorpusError) as info:
        fit_batch_shape(n_tokens, 64, seq_len, min_seq_len=min_seq_len)
    assert info.value.code == "too_small"
    assert f"at least {needed} are needed" in str(info.value)


def test_fit_batch_shape_rejects_nonsense():
    with pytest.raises(ValueError):
        fit_batch_shape(100, 0, 10)


def test_does_not_import_torch():
    import subprocess

    code = "import sys, trainer.corpus; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_statistics_counted_piece_by_piece_match_the_whole_text(monkeypatch):
    """decode_corpus counts words, lines and the longest line in ~1M-character pieces (bounded memory): the
    figures must be those of the whole text, wherever the piece boundaries fall."""
    import core.text

    lines = [("word " * (i % 37)).strip() + f" w{i % 101}" for i in range(3000)]
    lines[1777] = "x" * 4000  # the longest line, somewhere in the middle
    text = "\n".join(lines) + "\n"
    whole = core.text.decode_corpus(text.encode(), max_line_chars=10_000)
    monkeypatch.setattr(core.text, "STATS_PIECE_CHARS", 997)  # boundaries everywhere
    pieces = core.text.decode_corpus(text.encode(), max_line_chars=10_000)
    assert (pieces.n_words, pieces.n_lines, pieces.n_unique_words, pieces.n_unique_chars) == \
           (len(text.split()), 3000, whole.n_unique_words, len(set(text)))
    assert (whole.n_words, whole.n_lines) == (pieces.n_words, pieces.n_lines)
    assert len(list(core.text.pieces(text))) > 40
    with pytest.raises(core.text.CorpusError, match="Line 1,778 is 4,000 characters"):
        core.text.decode_corpus(text.encode(), max_line_chars=3999)
