"""Corpus ingestion: every malformed upload is rejected with its own code and leaves nothing behind."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import zipfile

import pytest
from sqlalchemy import select

from db.guilds import update_guild_settings
from db.ingest import IngestError, ingest, read_corpus_text
from db.models import Corpus
from db.session import count_rows

GUILD = 123456789012345678  # snowflakes exceed 32 bits
USER = 987654321098765432


def _zip(text: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("speech.txt", text)
    return buf.getvalue()


def _body(n: int = 600) -> bytes:
    return ("All the world's a stage, and all the men and women merely players. " * (n // 60 + 1)).encode()


BODY = _body()
HTML_PAGE = b"<!DOCTYPE html>\n<html><head><title>Speech</title></head>\n<body>\n" + b"<p>" + BODY + b"</p>\n" \
    b"</body></html>\n"
HTML_TAGS = b"\n".join(b"<div class=\"line\">" + line + b"</div>" for line in BODY.split(b". ")) + b"\n"
GUTENBERG_ONLY = (b"The Project Gutenberg eBook of Nothing\n\n"
                  b"*** START OF THE PROJECT GUTENBERG EBOOK NOTHING ***\n\n\n"
                  b"*** END OF THE PROJECT GUTENBERG EBOOK NOTHING ***\n" + b"License text. " * 30)

# (id, data, filename, max_bytes, expected code, a phrase the message must contain)
MALFORMED = [
    ("empty", b"", "a.txt", None, "empty", "empty"),
    ("whitespace-only", b" \n\t\r\n" * 100, "a.txt", None, "empty", "whitespace"),
    ("too-small", b"Hello there, general Kenobi.\n", "a.txt", None, "too_small", "at least"),
    ("nul-bytes", b"abc\x00def\n" * 100, "a.txt", None, "binary", "NUL"),
    ("control-noise", bytes(range(1, 9)) * 200 + b"some text", "a.txt", None, "binary", "control characters"),
    ("gzip-named-txt", gzip.compress(BODY), "speech.txt", None, "compressed", "gzip"),
    ("zip-named-txt", _zip(BODY), "speech.txt", None, "compressed", "zip"),
    ("bzip2-named-txt", bz2.compress(BODY), "speech.txt", None, "compressed", "bzip2"),
    ("xz-named-txt", lzma.compress(BODY), "speech.txt", None, "compressed", "xz"),
    ("pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n" + BODY, "speech.txt", None, "binary", "PDF"),
    ("png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(500), "speech.txt", None, "binary", "PNG"),
    ("jpeg", b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(500), "speech.txt", None, "binary", "JPEG"),
    ("elf", b"\x7fELF\x02\x01\x01" + bytes(500), "speech.txt", None, "binary", "program"),
    ("html-page", HTML_PAGE, "speech.txt", None, "html", "HTML"),
    ("html-tag-lines", HTML_TAGS, "speech.txt", None, "html", "HTML"),
    ("one-giant-line", b"word " * 30_000, "a.txt", None, "line_too_long", "Line 1"),
    ("over-size-cap", BODY * 20, "a.txt", 5_000, "too_large", "limit"),
    ("utf32", "hello world ".encode("utf-32") * 50, "a.txt", None, "encoding", "UTF-32"),
    ("broken-utf16", b"\xff\xfe" + "hi there ".encode("utf-16-le") * 40 + b"\x00\xd8", "a.txt", None,
     "encoding", "UTF-16"),
    ("gutenberg-boilerplate-only", GUTENBERG_ONLY, "book.txt", None, "empty", "Gutenberg"),
    ("exe-extension", BODY, "setup.exe", None, "bad_filename", "`.exe` files"),
    ("docx-extension", _zip(BODY), "speech.docx", None, "bad_filename", "`.docx` files"),
    ("pdf-extension", BODY, "speech.pdf", None, "bad_filename", "`.pdf` files"),
    ("no-extension", BODY, "speech", None, "bad_filename", "without an extension"),
    ("no-filename", BODY, "", None, "bad_filename", "no file name"),
    ("path-only", BODY, "uploads/", None, "bad_filename", "no file name"),
]


@pytest.mark.parametrize(("data", "filename", "max_bytes", "code", "phrase"),
                         [pytest.param(*case[1:], id=case[0]) for case in MALFORMED])
def test_malformed_upload_rejected_and_nothing_remains(session, storage, data, filename, max_bytes, code,
                                                       phrase):
    with pytest.raises(IngestError) as info:
        ingest(data, filename, USER, GUILD, session=session, storage=storage, max_bytes=max_bytes)
    assert info.value.code == code, info.value.message
    assert phrase in info.value.message
    assert str(info.value) == info.value.message
    session.rollback()
    assert count_rows(session, Corpus) == 0
    assert storage.keys() == []


def test_at_least_twenty_malformed_cases():
    assert len(MALFORMED) >= 20
    assert {c[4] for c in MALFORMED} >= {"empty", "too_small", "binary", "compressed", "html", "too_large",
                                          "line_too_long", "encoding", "bad_filename"}


def test_guild_upload_cap_applies(session, storage, alice_text):
    update_guild_settings(session, GUILD, max_upload_bytes=1000)
    session.commit()
    with pytest.raises(IngestError) as info:
        ingest(alice_text.encode(), "alice.txt", USER, GUILD, session=session, storage=storage)
    assert info.value.code == "too_large"
    assert count_rows(session, Corpus) == 0 and storage.keys() == []
    # another guild (default cap) accepts the same upload
    assert ingest(alice_text.encode(), "alice.txt", USER, GUILD + 1, session=session, storage=storage).created


@pytest.mark.parametrize(("encoding", "expected"), [("utf-8", "utf-8"), ("utf-16", "utf-16-le"),
                                                    ("cp1252", "cp1252"), ("utf-8-sig", "utf-8-sig")])
def test_good_upload_makes_one_row_and_one_blob(session, storage, alice_text, encoding, expected):
    text = alice_text.replace("\u2019", "'") if encoding == "cp1252" else alice_text
    text = text + " caf\u00e9 \u201cquoted\u201d\n"  # non-ASCII that cp1252 can encode
    raw = text.encode(encoding)
    result = ingest(raw, "alice.txt", USER, GUILD, session=session, storage=storage)
    assert result.created
    c = result.corpus
    assert c.encoding == expected
    assert c.raw_sha256 == hashlib.sha256(raw).hexdigest()
    stored = storage.get(c.storage_key)
    assert c.sha256 == hashlib.sha256(stored).hexdigest()
    assert c.storage_key == f"corpora/{c.sha256}.txt"
    assert stored.decode("utf-8") == text
    assert (c.n_bytes, c.n_chars) == (len(raw), len(text))
    assert c.n_lines == text.count("\n") and c.n_words == len(text.split())
    assert c.n_unique_chars == len(set(text)) and 100 < c.n_unique_words < c.n_words
    assert c.uploaded_by == USER and c.guild_id == GUILD and c.filename == "alice.txt"
    assert c.stats["n_chars"] == len(text) and c.stats["sha256"] == c.sha256
    assert (encoding == "cp1252") == bool(c.stats["warnings"])
    session.expire_all()
    assert count_rows(session, Corpus) == 1
    assert storage.keys() == [c.storage_key]
    assert read_corpus_text(c, storage) == text


def test_reupload_is_its_own_row_sharing_the_blob(session, storage, alice_text):
    raw = alice_text.encode()
    first = ingest(raw, "alice.txt", USER, GUILD, session=session, storage=storage)
    again = ingest(raw, "copy-of-alice.txt", USER + 1, GUILD + 1, session=session, storage=storage)
    as_utf16 = ingest(alice_text.encode("utf-16"), "alice16.txt", USER, GUILD, session=session,
                      storage=storage)
    assert first.created and not again.created and not as_utf16.created  # the blob was there
    assert len({first.corpus.id, again.corpus.id, as_utf16.corpus.id}) == 3
    assert (again.corpus.filename, again.corpus.guild_id, again.corpus.uploaded_by) == \
        ("copy-of-alice.txt", GUILD + 1, USER + 1)
    assert first.corpus.filename == "alice.txt" and first.corpus.guild_id == GUILD
    assert first.corpus.storage_key == again.corpus.storage_key == as_utf16.corpus.storage_key
    assert count_rows(session, Corpus) == 3
    assert storage.keys() == [first.corpus.storage_key]


def test_reupload_restores_a_missing_blob(session, storage, alice_text):
    c = ingest(alice_text.encode(), "alice.txt", session=session, storage=storage).corpus
    storage.delete(c.storage_key)
    ingest(alice_text.encode(), "alice.txt", session=session, storage=storage)
    assert storage.get(c.storage_key).decode() == alice_text


def test_storage_failure_leaves_no_row(session, storage, alice_text, monkeypatch):
    def boom(key, data):
        raise OSError("bucket unavailable")

    monkeypatch.setattr(storage, "put", boom)
    with pytest.raises(OSError):
        ingest(alice_text.encode(), "alice.txt", session=session, storage=storage)
    assert count_rows(session, Corpus) == 0
    assert storage.keys() == []


def test_commit_failure_removes_the_new_blob(session, storage, alice_text, monkeypatch):
    def boom():
        raise RuntimeError("connection lost")

    monkeypatch.setattr(session, "commit", boom)
    with pytest.raises(RuntimeError):
        ingest(alice_text.encode(), "alice.txt", session=session, storage=storage)
    monkeypatch.undo()
    assert count_rows(session, Corpus) == 0
    assert storage.keys() == []


def test_ingest_into_s3(session, s3_storage, alice_text):
    result = ingest(alice_text.encode(), "alice.md", session=session, storage=s3_storage)
    assert s3_storage.keys() == [result.corpus.storage_key]
    assert s3_storage.get(result.corpus.storage_key).decode() == alice_text
    assert session.scalars(select(Corpus.sha256)).all() == [result.corpus.sha256]


def test_ingest_with_default_session_and_storage(migrated_url, tmp_path, monkeypatch, alice_text):
    from core.settings import get_settings

    monkeypatch.setenv("IMPROBABLE_DATABASE_URL", migrated_url)
    monkeypatch.setenv("IMPROBABLE_STORAGE_URL", str(tmp_path / "store"))
    get_settings.cache_clear()
    try:
        result = ingest(alice_text.encode(), "alice.txt", USER, GUILD)
    finally:
        get_settings.cache_clear()
    assert result.created and result.corpus.id is not None
    assert (tmp_path / "store" / result.corpus.storage_key).is_file()


def test_non_bytes_is_a_type_error(session, storage):
    with pytest.raises(TypeError):
        ingest("a str", "a.txt", session=session, storage=storage)


def test_concurrent_identical_uploads_on_postgresql(pg_url, storage, alice_text):
    """Two uploads of the same text racing: a row each, one blob."""
    import threading

    import db

    engine = db.make_engine(pg_url, pool_size=2)
    maker = db.get_sessionmaker(engine)
    barrier, results, errors = threading.Barrier(2), [], []

    def upload(i: int) -> None:
        try:
            with maker() as session:
                session.connection()
                barrier.wait(timeout=30)
                results.append(ingest(alice_text.encode(), f"alice{i}.txt", i, GUILD, session=session,
                                      storage=storage))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    engine.dispose()
    assert not errors, errors
    assert results[0].corpus.id != results[1].corpus.id
    with db.session_scope(pg_url) as session:
        assert count_rows(session, Corpus) == 2
    assert storage.keys() == [results[0].corpus.storage_key] == [results[1].corpus.storage_key]


def test_several_files_are_one_corpus_of_documents(session, storage, alice_text):
    from db.ingest import read_corpus

    first, second = alice_text[:2500], alice_text[2500:]
    result = ingest(first.encode(), "one.txt", USER, GUILD, session=session, storage=storage,
                    more=[(second.encode("utf-16"), "two.txt")])
    c = result.corpus
    assert result.created and c.filename == "one.txt (+1 more)" and c.stats["document_names"] == ["one.txt", "two.txt"]
    decoded = read_corpus(c, storage)
    assert [d.strip() for d in decoded.document_texts()] == [first.strip(), second.strip()]
    assert decoded.sha256 == c.sha256 == hashlib.sha256(read_corpus_text(c, storage).encode()).hexdigest()
    again = ingest(first.encode(), "a.txt", session=session, storage=storage, more=[(second.encode(), "b.txt")])
    assert again.corpus.id != c.id and again.corpus.storage_key == c.storage_key  # the same documents: one blob
    with pytest.raises(IngestError, match="two.txt: ") as refused:
        ingest(first.encode(), "one.txt", session=session, storage=storage, more=[(b"abc\x00def\n" * 100, "two.txt")])
    assert refused.value.code == "binary" and count_rows(session, Corpus) == 2


def test_document_lengths_that_do_not_fit_are_ignored(session, storage, alice_text):
    from db.ingest import read_corpus

    c = ingest(alice_text[:2000].encode(), "one.txt", session=session, storage=storage,
               more=[(alice_text[2000:4000].encode(), "two.txt")]).corpus
    c.stats = {**c.stats, "documents": [1, 2]}  # edited by hand: not the text's documents
    assert read_corpus(c, storage).document_texts() == [read_corpus_text(c, storage)]
    single = ingest(alice_text[4000:].encode(), "x.txt", session=session, storage=storage).corpus
    assert "documents" not in single.stats and read_corpus(single, storage).documents == ()
