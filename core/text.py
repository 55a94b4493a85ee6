"""Torch-free text rules shared by the trainer, the database layer and the service.

- Corpus decoding and validation (`decode_corpus`, `join_documents`): the raw bytes of an uploaded or
  bundled text become clean training text, or a CorpusError whose message a Discord user can act on.
  trainer.corpus (lookup by name, loading) and db.ingest (uploads) both use it; trainer.corpus
  re-exports these names.
- Statistics (`count_words`, `longest_line`, `unique_words`), counted a piece at a time (`pieces`).
- `originality`: how much of a generated text is new rather than copied from the corpus.

Standard library only.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_MAX_BYTES = 50_000_000
# No configured limit (a server's upload cap, a caller's max_bytes) reaches past this: decoding holds the raw
# bytes and the text (1-4 bytes per character) at once; the bot peaks at ~620 MB taking a 100 MB upload
# (bench/upload_memory.py; statistics are counted piece by piece: see "statistics" below).
HARD_MAX_BYTES = 100_000_000
DEFAULT_MAX_LINE_CHARS = 100_000
DEFAULT_MIN_CHARS = 200
MAX_CONTROL_FRACTION = 0.10  # above this share of control characters a "text" is really binary data
MAX_INVISIBLE_FRACTION = 0.50  # above this share of invisible non-space characters there is no text to learn
_INVISIBLE = {"Cf", "Co", "Cn", "Cs"}  # format (bidi, zero-width), private use, unassigned, surrogates
HTML_LINE_FRACTION = 0.30  # above this share of lines that open with a tag, the text is markup
# Between the documents of a multi-document corpus: a paragraph break the model can learn to read as
# "a new text starts here", made only of characters every corpus has.
DOCUMENT_SEPARATOR = "\n\n\n"


class CorpusError(ValueError):
    """A corpus that cannot be used, with a machine-readable code and a message a Discord user can read."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class DecodedCorpus:
    text: str  # NFC, "\n" newlines, Project Gutenberg boilerplate removed
    encoding: str  # "utf-8", "utf-8-sig", "utf-16-le", "utf-16-be", or the legacy one found ("cp1252", "cp932", ...)
    sha256: str  # of the raw bytes, so the same upload always gets the same address
    n_bytes: int
    n_chars: int  # code points: what the char tokenizer sees
    n_lines: int
    n_words: int  # whitespace-separated
    n_unique_chars: int
    n_unique_words: int  # lower-cased runs of letters, digits and marks (apostrophes kept inside words)
    warnings: tuple[str, ...] = ()
    # A multi-document corpus: the character length of each document in `text`, where the documents are
    # joined by DOCUMENT_SEPARATOR. Empty for a single text. Splits and batching keep documents apart.
    documents: tuple[int, ...] = ()

    def document_texts(self) -> list[str]:
        """The documents, in order (a single text is one document)."""
        if not self.documents:
            return [self.text]
        texts, start = [], 0
        for length in self.documents:
            texts.append(self.text[start:start + length])
            start += length + len(DOCUMENT_SEPARATOR)
        return texts

    def stats(self) -> dict:
        return {
            "encoding": self.encoding,
            "sha256": self.sha256,
            "n_bytes": self.n_bytes,
            "n_chars": self.n_chars,
            "n_lines": self.n_lines,
            "n_words": self.n_words,
            "n_unique_chars": self.n_unique_chars,
            "n_unique_words": self.n_unique_words,
        }



# -----------------------------------------------------------------------------
# decoding

# (leading bytes as a regex, code, what it is, what to do instead). Checked before decoding: these formats
# can decode "successfully" as cp1252 and would otherwise train a model on garbage.
_UNPACK = "decompress it and upload the .txt inside"
_PLAIN = "upload a plain .txt file"
_SAVE_AS_TEXT = "save it as plain text (.txt) and upload that"
_MAGIC = [(re.compile(pattern, re.DOTALL), code, what, todo) for pattern, code, what, todo in [
    (rb"\x1f\x8b", "compressed", "a gzip archive", _UNPACK),
    (rb"PK\x03\x04", "compressed", "a zip archive (.docx, .epub and .odt files are zip archives too)",
     "extract the text and upload it as a .txt file"),
    (rb"PK\x05\x06", "compressed", "an empty zip archive", _PLAIN),
    (rb"BZh[1-9](?:1AY&SY|\x17rE8P\x90)", "compressed", "a bzip2 archive", _UNPACK),
    (rb"\xfd7zXZ\x00", "compressed", "an xz archive", _UNPACK),
    (rb"7z\xbc\xaf\x27\x1c", "compressed", "a 7-Zip archive", _UNPACK),
    (rb"Rar!\x1a\x07", "compressed", "a RAR archive", _UNPACK),
    (rb"\x28\xb5\x2f\xfd", "compressed", "a zstd archive", _UNPACK),
    (rb"%PDF", "binary", "a PDF document", "copy or export its text into a .txt file and upload that"),
    (rb"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "binary", "an old Microsoft Office document", _SAVE_AS_TEXT),
    (rb"\{\\rtf", "binary", "an RTF document", _SAVE_AS_TEXT),
    (rb"\x89PNG\r\n\x1a\n", "binary", "a PNG image", _PLAIN),
    (rb"\xff\xd8\xff", "binary", "a JPEG image", _PLAIN),
    (rb"GIF8[79]a", "binary", "a GIF image", _PLAIN),
    (rb"\x7fELF", "binary", "a program (ELF executable)", _PLAIN),
    (rb"MZ\x90\x00", "binary", "a Windows program", _PLAIN),
]]

# UTF-8 with stray bytes is repaired (the stray bytes dropped) only when its correct multi-byte characters
# outnumber the broken ones this many times; below that it is mixed or legacy-encoded text.
MIN_GOOD_PER_BAD_BYTE = 10
MIN_MIXED_CHARS = 20  # non-ASCII characters a part needs before its encoding is judged on its own
# A legacy single-byte decoding would garble the file's valid UTF-8 characters into mojibake ("’" read as
# Mac Icelandic is "‚Äô"): refused when that many valid multi-byte UTF-8 characters carry at least this share
# of the non-ASCII bytes. Legacy text forms valid UTF-8 by chance far less (cp1251 Russian/Ukrainian ~5-7%;
# multi-byte legacy encodings, ~40% in CJK text, are detected as themselves and not judged by this share).
MIXED_UTF8_SHARE = 0.15
LEGACY_PARTS = 8  # a legacy-encoded file is checked in this many windows for mixed encodings
LEGACY_WINDOW_BYTES = 16_384
MAX_MESS = 0.20  # charset-normalizer's "chaos" of a legacy decoding (its own default cut-off; its estimate is noisy)

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")  # Cc, minus \t \n \f \r
_TAG_LINE = re.compile(r"^[ \t]*</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?>", re.MULTILINE)
_NONBLANK_LINE = re.compile(r"^[ \t]*\S", re.MULTILINE)
# a literal "\*\*\*" prefix and no ^ anchor let re skip ahead: ~10x faster than "^\*{3}" on 25 MB
_PG_START = re.compile(r"\*\*\*[ \t]*START OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK\b[^\n]*", re.IGNORECASE)
_PG_END = re.compile(r"\*\*\*[ \t]*END OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK\b", re.IGNORECASE)
# older books also carry a plain "End of the Project Gutenberg EBook of ..." line just before the footer
_PG_END_LINE = re.compile(r"\n[ \t]*End of (?:the )?Project Gutenberg'?s?\b[^\n]*\s*\Z", re.IGNORECASE)


def plural(n: int, word: str) -> str:
    """"1 token", "2,048 tokens"."""
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def _size(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.1f} MB"
    if n >= 1_000:
        return f"{n / 1e3:.1f} KB"
    return plural(n, "byte")


def too_large(n_bytes: int, max_bytes: int) -> CorpusError:
    """The error for a text over the size limit (also raised by trainer.corpus before reading a file)."""
    big, limit = _size(n_bytes), _size(max_bytes)
    if big == limit:  # "50.0 MB; the limit is 50.0 MB" would read as a bug
        big, limit = plural(n_bytes, "byte"), plural(max_bytes, "byte")
    return CorpusError("too_large", f"The file is {big}; the limit is {limit}. Upload a smaller part of it.")


def _check_magic(data: bytes) -> None:
    for magic, code, what, todo in _MAGIC:
        if magic.match(data):
            raise CorpusError(code, f"This looks like {what}, not text: {todo}.")


def _decode(data: bytes) -> tuple[str, str, list[str]]:
    """Return (text, encoding, warnings): BOM first, then UTF-8 (strict, or repaired when only a few stray
    bytes are broken), then the legacy encoding charset-normalizer finds, or CorpusError("encoding")."""
    if data.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        raise CorpusError("encoding", "The file is UTF-32 text, which is not supported: save it as UTF-8.")
    for bom, encoding in ((b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be")):
        if data.startswith(bom):
            try:
                return data[len(bom):].decode(encoding), encoding, []
            except UnicodeDecodeError as e:
                raise CorpusError("encoding", f"The file starts like UTF-16 text but is not valid UTF-16 "
                                              f"(at byte {e.start + len(bom):,}): save it as UTF-8.") from None
    if data.startswith(b"\xef\xbb\xbf"):
        try:
            return data[3:].decode("utf-8"), "utf-8-sig", []
        except UnicodeDecodeError:
            data = data[3:]  # a BOM followed by non-UTF-8 bytes: judged like any other invalid UTF-8
    if b"\x00" in data:
        raise CorpusError("binary", "The file contains NUL bytes, so it is not plain text (if it is UTF-16 "
                                    "text without a byte-order mark, save it as UTF-8).")
    try:
        return data.decode("utf-8"), "utf-8", []
    except UnicodeDecodeError as e:
        first_bad = e.start
    # A UTF-8 text with a few stray bytes (a bad copy-paste, a truncated last character): decoding it all as a
    # legacy encoding would turn every correct curly quote into "â€œ", so drop the stray bytes instead. Only
    # when correct multi-byte characters clearly outnumber the broken ones: half and half is mixed encodings.
    repaired = data.decode("utf-8", "ignore")
    n_bad = data.decode("utf-8", "replace").count("\ufffd") - repaired.count("\ufffd")
    n_good = len(repaired) - len(repaired.encode("ascii", "ignore"))
    if n_good >= MIN_GOOD_PER_BAD_BYTE * n_bad:
        return repaired, "utf-8", [f"Removed {plural(n_bad, 'byte')} that {'was' if n_bad == 1 else 'were'} not "
                                   f"valid UTF-8 (the first at byte {first_bad:,})."]
    found = _legacy_encoding(data)
    if found is not None and (_garbles_utf8(data, repaired, n_good, found[1])
                              or not _same_encoding_throughout(data, found[1])):
        found, n_good = None, max(n_good, MIN_MIXED_CHARS)
    if found is None:
        mixed = (f" Parts of it seem to use different encodings (UTF-8 and another; the first byte that is not "
                 f"UTF-8 is at byte {first_bad:,}), so no single encoding reads all of it."
                 if n_good >= MIN_MIXED_CHARS else "")
        raise CorpusError("encoding", "The file is not UTF-8, and no other text encoding fits it with confidence."
                                      f"{mixed} Open it in a text editor and save it as UTF-8.")
    return found[0], found[1], [f"Decoded as {found[1]} (not valid UTF-8)."]


def _garbles_utf8(data: bytes, valid: str, n_good: int, encoding: str) -> bool:
    """Whether decoding `data` in the single-byte legacy `encoding` would turn a real share of UTF-8 into
    mojibake: `valid` is the data's valid UTF-8 (stray bytes dropped), `n_good` its non-ASCII characters."""
    if n_good < MIN_MIXED_CHARS:
        return False
    high = bytes(range(128, 256))
    if len(high.decode(encoding.replace("-", "_"), "replace")) != len(high):
        return False  # a multi-byte encoding (Shift-JIS, GBK, ...): it does not read UTF-8 byte by byte
    utf8_bytes = len(valid.encode("utf-8")) - len(valid.encode("ascii", "ignore"))
    non_ascii = len(data) - len(data.decode("ascii", "ignore"))
    return utf8_bytes >= MIXED_UTF8_SHARE * non_ascii


def _legacy_encoding(data: bytes) -> tuple[str, str] | None:
    """(text, encoding) of non-UTF-8 bytes by charset-normalizer, or None when nothing fits confidently
    (binary data, mixed encodings). Among equally good candidates cp1252 wins when it reads the bytes the
    same way: the detector often names cp1250 or cp1257 for Western text, which would show "è" as "č"."""
    import charset_normalizer  # imported here: only non-UTF-8 uploads pay for it

    results = list(charset_normalizer.from_bytes(data))
    if not results:
        return None
    best = results[0]
    if best.chaos > MAX_MESS:
        return None
    try:
        as_cp1252 = data.decode("cp1252")
    except UnicodeDecodeError:
        as_cp1252 = None
    tied = [r for r in results if r.chaos <= best.chaos + 0.01 and r.coherence >= best.coherence - 0.01]
    if as_cp1252 is not None and any(r.encoding == "cp1252" or str(r) == as_cp1252 for r in tied):
        return as_cp1252, "cp1252"
    try:
        return data.decode(best.encoding), best.encoding.replace("_", "-")
    except (UnicodeDecodeError, LookupError):
        return None


def _check_visible(text: str) -> None:
    """CorpusError("no_text") for a text made (almost) only of invisible characters: bidi and other format
    controls, private-use or unassigned code points, with whitespace. Counted over distinct characters
    first, so a 50 MB text costs one count per invisible character that occurs, not per code point."""
    invisible = [c for c in set(text) if unicodedata.category(c) in _INVISIBLE]
    if not invisible:
        return
    n_invisible = sum(text.count(c) for c in invisible)
    n_visible = sum(sum(map(len, piece.split())) for piece in pieces(text)) - n_invisible  # split: in C
    if n_visible <= 0 or n_invisible > MAX_INVISIBLE_FRACTION * (n_visible + n_invisible):
        raise CorpusError("no_text", f"The file has no readable text: {n_invisible / len(text):.0%} of its "
                                     "characters are invisible (direction marks, format or private-use "
                                     "characters). Upload a plain .txt file with the text itself.")


def _same_encoding_throughout(data: bytes, encoding: str) -> bool:
    """Whether the whole file reads cleanly in the encoding found for it. The detector samples the file, so a
    file of cp1252 text followed by Shift-JIS text gets one compromise (cp1256, say) that garbles both
    halves: decoded windows spread over the file would show that as "mess" (charset-normalizer's measure of
    implausible character sequences). Windows end at a newline, which is never inside a character here."""
    from charset_normalizer.md import mess_ratio

    codec = encoding.replace("-", "_")
    for i in range(LEGACY_PARTS):
        start = data.find(b"\n", len(data) * i // LEGACY_PARTS) + 1 if i else 0
        window = data[start:start + LEGACY_WINDOW_BYTES]
        if len(window) == LEGACY_WINDOW_BYTES and b"\n" in window:
            window = window[:window.rindex(b"\n") + 1]
        if window and mess_ratio(window.decode(codec, "replace"), MAX_MESS) > MAX_MESS:
            return False
    return True


def _looks_like_html(text: str) -> bool:
    head = text[:4096].lstrip().lower()
    if head.startswith(("<!doctype html", "<html")) or (head.startswith("<?xml") and "<html" in head):
        return True
    tag_lines = len(_TAG_LINE.findall(text))
    return tag_lines >= 3 and tag_lines > HTML_LINE_FRACTION * len(_NONBLANK_LINE.findall(text))


def _strip_gutenberg(text: str) -> tuple[str, str | None]:
    """Drop the Project Gutenberg header and footer; return (text, warning or None)."""
    start = _PG_START.search(text)
    end = _PG_END.search(text, start.end() if start else 0)
    if not start and not end:
        return text, None
    body_start = start.end() if start else 0
    body_end = text.rfind("\n", 0, end.start()) + 1 if end else len(text)  # the whole footer line goes
    body = text[body_start:body_end]
    body = _PG_END_LINE.sub("", body).strip("\n") + "\n"
    removed = " and ".join(part for part, found in (("header", start), ("footer", end)) if found)
    return body, f"Removed Project Gutenberg {removed}."


def decode_corpus(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES,
                  max_line_chars: int = DEFAULT_MAX_LINE_CHARS,
                  min_chars: int = DEFAULT_MIN_CHARS) -> DecodedCorpus:
    """Decode, validate and normalise a corpus. Raises CorpusError for anything unusable; never anything else."""
    data = bytes(data)
    max_bytes = min(max_bytes, HARD_MAX_BYTES)
    # cheap checks on the raw bytes first
    if len(data) > max_bytes:
        raise too_large(len(data), max_bytes)
    if not data:
        raise CorpusError("empty", "The file is empty.")
    _check_magic(data)

    text, encoding, warnings = _decode(data)
    if not text.strip():
        raise CorpusError("empty", "The file contains only whitespace, no text.")
    if "\x00" in text:  # UTF-16 can carry U+0000 past the NUL-byte check; it must never reach a vocabulary
        raise CorpusError("binary", "The text contains NUL characters (U+0000), so it is not plain text: "
                                    "upload a plain .txt file.")
    n_control = len(_CONTROL.findall(text))
    if n_control > MAX_CONTROL_FRACTION * len(text):
        raise CorpusError("binary", f"{n_control / len(text):.0%} of the characters are control characters, so "
                                    "this is binary data, not text: upload a plain .txt file.")
    if n_control:  # a few escape or backspace characters: noise a model would learn and print into Discord
        text = _CONTROL.sub("", text)
        warnings.append(f"Removed {plural(n_control, 'control character')}.")
    _check_visible(text)

    if "\r" in text:  # each replace copies the whole text: only when there is something to replace
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if _looks_like_html(text):
        raise CorpusError("html", "This looks like an HTML page; save it as plain text (in a browser: "
                                  "select all, copy, paste into a .txt file) and upload that.")
    if not unicodedata.is_normalized("NFC", text):  # the check is a scan; normalising is a copy
        text = unicodedata.normalize("NFC", text)
    text, pg_warning = _strip_gutenberg(text)
    if pg_warning:
        warnings.append(pg_warning)
        if not text.strip():
            raise CorpusError("empty", "Nothing is left after removing the Project Gutenberg header and footer.")

    line, n_line = longest_line(text)
    if len(line) > max_line_chars:
        raise CorpusError("line_too_long", f"Line {n_line:,} is {len(line):,} characters long; the limit is "
                                           f"{max_line_chars:,}. Break the text into shorter lines "
                                           "(for example one paragraph per line).")
    if len(text) < min_chars:
        raise CorpusError("too_small", f"The text has {plural(len(text), 'character')}; at least "
                                       f"{min_chars:,} are needed to train.")

    n_words, unique_tokens, unique_chars = count_words(text)
    return DecodedCorpus(
        text=text,
        encoding=encoding,
        sha256=hashlib.sha256(data).hexdigest(),
        n_bytes=len(data),
        n_chars=len(text),
        n_lines=text.count("\n") + (0 if text.endswith("\n") else 1),
        n_words=n_words,
        n_unique_chars=len(unique_chars),
        n_unique_words=unique_words(unique_tokens, unique_chars),
        warnings=tuple(warnings),
    )


def join_documents(documents: Sequence[DecodedCorpus]) -> DecodedCorpus:
    """One corpus made of several decoded documents (a folder, or an upload of several attachments).
    Its address is the sha256 of the documents' own addresses in order, so the same files give the same corpus."""
    if not documents:
        raise CorpusError("empty", "No documents were given.")
    if len(documents) == 1:
        return documents[0]
    texts = [d.text.strip("\n") for d in documents]
    text = DOCUMENT_SEPARATOR.join(texts)
    n_words, unique_tokens, unique_chars = count_words(text)
    encodings = sorted({d.encoding for d in documents})
    return DecodedCorpus(
        text=text,
        encoding=encodings[0] if len(encodings) == 1 else "mixed: " + ", ".join(encodings),
        sha256=hashlib.sha256("".join(d.sha256 for d in documents).encode()).hexdigest(),
        n_bytes=sum(d.n_bytes for d in documents),
        n_chars=len(text),
        n_lines=text.count("\n") + 1,
        n_words=n_words,
        n_unique_chars=len(unique_chars),
        n_unique_words=unique_words(unique_tokens, unique_chars),
        warnings=tuple(w for d in documents for w in d.warnings),
        documents=tuple(len(t) for t in texts),
    )


# -----------------------------------------------------------------------------
# statistics
#
# Words, distinct words and characters, the longest line of a decoded text, counted a piece at a time: a 100 MB
# upload never becomes one list of millions of str objects (`text.split()` of 100 MB of prose is ~1 GB of Python
# objects; bench/upload_memory.py).

STATS_PIECE_CHARS = 1 << 20  # characters per piece (each piece ends at a newline)


def pieces(text: str):
    """`text` in pieces of about STATS_PIECE_CHARS characters, each ending at a newline (or the text's end),
    so no line and no word is cut in two."""
    start = 0
    while start < len(text):
        end = text.find("\n", start + STATS_PIECE_CHARS) + 1 or len(text)
        yield text[start:end]
        start = end


def longest_line(text: str) -> tuple[str, int]:
    """The longest line and its number (1-based)."""
    best, best_number, number = "", 1, 1
    for piece in pieces(text):
        lines = piece.split("\n")
        longest = max(range(len(lines)), key=lambda i: len(lines[i]))
        if len(lines[longest]) > len(best):
            best, best_number = lines[longest], number + longest
        number += len(lines) - 1
    return best, best_number


def count_words(text: str) -> tuple[int, set[str], set[str]]:
    """(number of whitespace-separated tokens, the distinct tokens, the distinct characters)."""
    n_words, unique_tokens, unique_chars = 0, set(), set()
    for piece in pieces(text):  # pieces end at a newline, so no token is cut in two
        tokens = piece.split()
        n_words += len(tokens)
        unique_tokens.update(tokens)
        unique_chars.update(piece)
    return n_words, unique_tokens, unique_chars


def unique_words(unique_tokens: set[str], unique_chars: set[str]) -> int:
    """Distinct words (case-folded, apostrophes inside) among the distinct whitespace tokens."""
    # \w misses combining marks, which would split Hindi or un-composed words apart, so add the marks
    # that actually occur in this text to the word class.
    marks = "".join(sorted(c for c in unique_chars if unicodedata.category(c).startswith("M")))
    w = rf"[\w{re.escape(marks)}]" if marks else r"\w"
    # split only the distinct whitespace tokens: a fraction of the text, so 5x faster on big corpora
    words = " ".join(unique_tokens).lower().replace("’", "'")  # don’t and don't are one word
    return len(set(re.findall(rf"{w}+(?:'{w}+)*", words)))


# -----------------------------------------------------------------------------
# originality

def originality(generated: str, corpus: str, window: int = 20) -> float | None:
    """Share of the generated text's `window`-character windows that do NOT occur verbatim in the
    corpus (1.0 = nothing copied). None when the text is shorter than one window or there is no corpus."""
    windows = [generated[i:i + window] for i in range(0, len(generated) - window + 1)]
    if not windows or not corpus:
        return None
    return 1.0 - sum(1 for w in windows if w in corpus) / len(windows)
