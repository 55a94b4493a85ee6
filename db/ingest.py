"""Corpus ingestion: uploaded bytes -> validated corpus row (one per upload) + a shared UTF-8 blob, or IngestError.

Validation is the shared decoder (core.text.decode_corpus, torch-free) plus a file-name check and
the guild's upload cap. The stored text is what the decoder returns (NFC, LF newlines, Project Gutenberg
boilerplate removed), and the blob is addressed by the sha256 of that stored text: the same text uploaded
twice, in any encoding, is stored once. Each upload still keeps its own row (its file name, uploader, server
and time), so nothing about one server's upload shows in another. The raw upload's hash is kept as
raw_sha256.

An upload of several files (`more=`) becomes one multi-document corpus: each file is decoded on its own
and they are joined with core.text.join_documents; the documents' lengths and names are kept in the row's
`stats` ("documents", "document_names"), so training can keep them apart (DecodedCorpus.documents) without a
schema change.

Nothing partial is ever left behind: a rejection happens before any write, the row is only committed after
its blob is stored, and a blob this call created is removed again if the commit fails (unless a row committed
meanwhile uses it).
"""

from __future__ import annotations

import hashlib
import posixpath
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.dedup import check_distinct
from core.text import DOCUMENT_SEPARATOR, CorpusError, DecodedCorpus, decode_corpus, join_documents
from db.models import DEFAULT_MAX_UPLOAD_BYTES, Corpus, GuildSettings
from db.session import get_sessionmaker
from db.storage import Storage, corpus_key, open_storage

TEXT_EXTENSIONS = (".txt", ".text", ".md", ".markdown", ".rst", ".csv", ".tsv")
MAX_FILENAME_CHARS = 255
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


class IngestError(CorpusError):
    """An upload that cannot become a corpus: the decoder's refusal (core.text.CorpusError: `.code` for
    programs, `.message` for the uploader), or one of ingestion's own. Codes: the decoder's (empty, too_small,
    binary, compressed, html, too_large, line_too_long, encoding) plus bad_filename and repetitive."""


@dataclass(frozen=True)
class IngestResult:
    corpus: Corpus  # this upload's own row
    created: bool  # a new blob was stored (False: an identical text's blob is shared; never shown to uploaders)
    warnings: tuple[str, ...] = ()


def check_filename(filename: str) -> str:
    """The upload's base name, or IngestError if it does not name a plain-text file."""
    # A NUL would fail the row's INSERT on PostgreSQL (psycopg.DataError), a lone surrogate cannot be
    # stored as UTF-8, and bidi overrides make "txt.exe" read as "exe.txt": refuse them all up front.
    bad = next((c for c in filename or "" if unicodedata.category(c) in ("Cc", "Cs") or c in BIDI_CONTROLS), None)
    if bad is not None:
        raise IngestError("bad_filename", f"The file name contains an invisible control character "
                                          f"(U+{ord(bad):04X}); rename the file and upload it again.")
    name = posixpath.basename((filename or "").replace("\\", "/")).strip()
    if not name:
        raise IngestError("bad_filename", "The upload has no file name; upload a .txt file.")
    ext = posixpath.splitext(name)[1].lower()
    if ext not in TEXT_EXTENSIONS:
        shown = f"`{ext}` files" if ext else "files without an extension"
        raise IngestError("bad_filename", f"{shown} are not accepted: upload plain text as one of "
                                          f"{', '.join(TEXT_EXTENSIONS)}.")
    return name[-MAX_FILENAME_CHARS:]


def upload_limit(session: Session, guild: int | None) -> int:
    """The guild's max_upload_bytes, or the default for guilds without settings (and DMs)."""
    if guild is not None:
        limit = session.scalar(select(GuildSettings.max_upload_bytes).where(GuildSettings.guild_id == guild))
        if limit is not None:
            return limit
    return DEFAULT_MAX_UPLOAD_BYTES


def _decode_all(files: list[tuple[bytes, str]], limit: int) -> tuple[DecodedCorpus, str, list[str]]:
    """Decode every file (each checked on its own, all together within `limit` bytes) and join them:
    the corpus, the name to show for it, and the names of its documents."""
    names = []
    for _, filename in files:
        try:
            names.append(check_filename(filename))
        except IngestError as e:
            if len(files) == 1:
                raise
            raise IngestError(e.code, f"{filename}: {e.message}") from e
    total = sum(len(data) for data, _ in files)
    if len(files) > 1 and total > limit:  # one file: the decoder says it in its own words
        raise IngestError("too_large", f"The files are {total / 1e6:.1f} MB together; the limit here is "
                                       f"{limit / 1e6:.1f} MB.")
    documents = []
    for (data, _), name in zip(files, names, strict=True):
        try:
            documents.append(decode_corpus(bytes(data), max_bytes=limit))
        except CorpusError as e:
            # with several files, say which one: the uploader has to fix that one
            raise IngestError(e.code, f"{name}: {e.message}" if len(files) > 1 else e.message) from e
    shown = names[0] if len(names) == 1 else f"{names[0][:200]} (+{len(names) - 1} more)"
    return join_documents(documents), shown, names


def ingest(data: bytes, filename: str, uploader: int | None = None, guild: int | None = None, *,
           session: Session | None = None, storage: Storage | None = None,
           max_bytes: int | None = None, more: Sequence[tuple[bytes, str]] = (),
           min_distinct_bytes: int = 0) -> IngestResult:
    """Validate, store and record an upload. Every upload is its own row (file name, uploader, server, time),
    so no server ever sees another's; identical texts share one blob. Commits the session (pending work of a
    caller-supplied session is committed with it); uses its own session if none is given.
    `more`: further (data, filename) files of the same upload, the documents after the first.
    `min_distinct_bytes`: an upload to train on needs this much distinct text (core.dedup: repeated paragraphs
    and lines dropped, and not one line repeated with small changes); less is refused ("repetitive").

    Raises IngestError for anything the uploader should fix; storage or database failures propagate.
    """
    if session is None:
        with get_sessionmaker()() as own:
            return ingest(data, filename, uploader, guild, session=own, storage=storage, max_bytes=max_bytes,
                          more=more, min_distinct_bytes=min_distinct_bytes)
    files = [(data, filename), *more]
    for blob, _ in files:
        if not isinstance(blob, bytes | bytearray | memoryview):
            raise TypeError(f"ingest() needs the uploaded bytes, not {type(blob).__name__}")
    limit = max_bytes if max_bytes is not None else upload_limit(session, guild)
    decoded, name, names = _decode_all(files, limit)
    if min_distinct_bytes:
        try:
            check_distinct(decoded.text, min_distinct_bytes)
        except CorpusError as e:
            raise IngestError(e.code, e.message) from None

    text = decoded.text.encode("utf-8")
    sha = hashlib.sha256(text).hexdigest()
    storage = storage or open_storage()
    key = corpus_key(sha)
    corpus = Corpus(
        sha256=sha, raw_sha256=decoded.sha256, storage_key=key, filename=name, encoding=decoded.encoding,
        n_bytes=decoded.n_bytes, n_chars=decoded.n_chars, n_lines=decoded.n_lines, n_words=decoded.n_words,
        n_unique_chars=decoded.n_unique_chars, n_unique_words=decoded.n_unique_words,
        stats={**decoded.stats(), "sha256": sha, "raw_sha256": decoded.sha256,
               "warnings": list(decoded.warnings),
               **({"documents": list(decoded.documents), "document_names": names} if decoded.documents else {})},
        uploaded_by=uploader, guild_id=guild)
    blob_was_there = storage.exists(key)
    try:
        if not blob_was_there:
            storage.put(key, text)
        session.add(corpus)
        session.commit()
    except BaseException:
        session.rollback()
        if not blob_was_there and not blob_in_use(session, key):
            storage.delete(key)
        raise
    # a persona deleted meanwhile may have removed the shared blob between our check and our commit
    _ensure_blob(storage, key, text)
    return IngestResult(corpus, not blob_was_there, decoded.warnings)


def blob_in_use(session: Session, key: str) -> bool:
    """Whether a committed corpus row (any upload, any server) still stores its text at `key`."""
    return session.scalar(select(Corpus.id).where(Corpus.storage_key == key).limit(1)) is not None


def _ensure_blob(storage: Storage, key: str, text: bytes) -> None:
    """Repair a missing blob for an existing row (e.g. storage restored from an older backup)."""
    if not storage.exists(key):
        storage.put(key, text)


def read_corpus_text(corpus: Corpus, storage: Storage | None = None) -> str:
    """The stored UTF-8 text of a corpus."""
    return (storage or open_storage()).get(corpus.storage_key).decode("utf-8")


def read_corpus(corpus: Corpus, storage: Storage | None = None) -> DecodedCorpus:
    """The stored corpus with its document boundaries (an upload of several files: `stats["documents"]`),
    addressed by the stored text's sha256. Lengths that do not fit the text (a row edited by hand) are
    ignored rather than trusted: the text is then one document."""
    text = read_corpus_text(corpus, storage)
    lengths = tuple(int(n) for n in (corpus.stats or {}).get("documents") or ())
    if len(lengths) < 2 or sum(lengths) + len(DOCUMENT_SEPARATOR) * (len(lengths) - 1) != len(text):
        lengths = ()
    return DecodedCorpus(text=text, encoding=corpus.encoding, sha256=corpus.sha256, n_bytes=corpus.n_bytes,
                         n_chars=corpus.n_chars, n_lines=corpus.n_lines, n_words=corpus.n_words,
                         n_unique_chars=corpus.n_unique_chars, n_unique_words=corpus.n_unique_words,
                         warnings=tuple((corpus.stats or {}).get("warnings") or ()), documents=lengths)
