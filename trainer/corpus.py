"""Corpus lookup by name, loading (single texts and folders of documents) and batch shapes.

Decoding and validation are torch-free and live in core.text (the database layer and the service use them
too); the names are re-exported here so trainer code keeps importing them from trainer.corpus. Standard
library only: the bot and the database layer never import torch.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from core.text import (
    DEFAULT_MAX_BYTES,
    CorpusError,
    DecodedCorpus,
    decode_corpus,
    join_documents,
    plural,
    too_large,
)

CORPUS_PATH_ENV = "IMPROBABLE_CORPUS_PATH"

@dataclass(frozen=True)
class CorpusEntry:
    name: str
    path: Path
    n_bytes: int


# -----------------------------------------------------------------------------
# lookup by name

_NAME = re.compile(r"^\w[\w.-]*$")  # no separators, no leading dot: a name never escapes its folder
_FOLDER_FILES = ("train.txt", "input.txt")  # then <name>.txt, then the only other .txt
_NOT_TRAINING_TEXT = ("valid.txt", "test.txt")


def _search_path(search_path: Sequence[Path] | None) -> list[Path]:
    if search_path is None:  # read at call time, so tests and the CLI can set it late
        search_path = [Path(p).expanduser() for p in os.environ.get(CORPUS_PATH_ENV, "").split(os.pathsep) if p]
    return [Path(d) for d in search_path]


def _documents_in_folder(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.txt") if p.is_file() and not p.name.endswith(".labels.txt")
                  and p.name not in _NOT_TRAINING_TEXT)


def _text_in_folder(folder: Path) -> Path:
    """The training text of a corpus folder: train.txt, input.txt, <folder>.txt or its only .txt file; a folder
    of several .txt files is a multi-document corpus and resolves to the folder itself. CorpusError('not_found')
    says why there is none."""
    for filename in (*_FOLDER_FILES, f"{folder.name}.txt"):
        if (folder / filename).is_file():
            return folder / filename
    candidates = _documents_in_folder(folder)
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        return folder
    present = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
    raise CorpusError("not_found", f"The folder {folder} has no text file (it has {present}).")


def _entries(dirs: list[Path]) -> dict[str, Path]:
    """Every resolvable corpus name -> its text file; earlier folders win."""
    found: dict[str, Path] = {}
    for d in dirs:
        if not d.is_dir():
            continue
        # files before folders, the order find_corpus tries them in
        for p in sorted(d.iterdir(), key=lambda p: (not p.is_file(), p.name)):
            name = p.stem if p.is_file() else p.name
            if name in found or name.startswith("."):
                continue
            if p.is_file() and p.suffix == ".txt" and not p.name.endswith(".labels.txt"):
                found[name] = p
            elif p.is_dir():
                try:
                    found[name] = _text_in_folder(p)
                except (CorpusError, OSError):
                    pass  # a folder without a usable text is simply not a corpus
    return found


def _available(names: Sequence[str]) -> str:
    return f"Available corpora: {', '.join(sorted(names))}." if names else "No corpora are available."


def find_corpus(name_or_path: str | Path, search_path: Sequence[Path] | None = None) -> Path:
    """Resolve a file path, a corpus folder, or a corpus name looked up in the search path."""
    path, name = Path(name_or_path).expanduser(), str(name_or_path)
    if path.is_file():
        return path
    if not _NAME.match(name):  # it is a path, not a name
        if path.is_dir():
            return _text_in_folder(path)
        raise CorpusError("not_found", f"There is no file at {name}.")

    dirs = _search_path(search_path)
    empty_folder: CorpusError | None = None
    for d in dirs:
        if (d / f"{name}.txt").is_file():
            return d / f"{name}.txt"
        if (d / name).is_dir():
            try:
                return _text_in_folder(d / name)
            except CorpusError as e:
                empty_folder = empty_folder or e  # a later folder in the path may still have it
    entries = _entries(dirs)
    by_lower = {n.lower(): p for n, p in entries.items()}
    if name.lower() in by_lower:  # "Trump" finds trump
        return by_lower[name.lower()]
    if empty_folder:
        raise CorpusError("not_found", f"{empty_folder} {_available(entries)}")
    if not dirs:
        raise CorpusError("not_found", f"There is no corpus called {name!r}: no corpus folders are configured "
                                       f"(set {CORPUS_PATH_ENV}).")
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=3)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    raise CorpusError("not_found", f"There is no corpus called {name!r}.{hint} {_available(entries)}")


def list_corpora(search_path: Sequence[Path] | None = None) -> list[CorpusEntry]:
    """Every corpus name that find_corpus resolves in the search path, sorted by name."""
    return [CorpusEntry(name, path, _corpus_bytes(path))
            for name, path in sorted(_entries(_search_path(search_path)).items())]


def _corpus_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in _documents_in_folder(path)) if path.is_dir() else path.stat().st_size


# Corpora made of chosen documents of another corpus on the path: name -> (that corpus, its file names).
# austen: the public-domain stand-in of the harry-potter recipe (three novels of the base corpus).
SELECTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "austen": ("base", ("105-persuasion.txt", "121-northanger-abbey.txt", "1342-pride-and-prejudice.txt")),
}


def load_corpus(name_or_path: str | Path, search_path: Sequence[Path] | None = None,
                **limits: int) -> DecodedCorpus:
    """find_corpus + decode_corpus; limits are decode_corpus's keyword arguments. A folder of several
    .txt files loads as one multi-document corpus (max_bytes then applies to the whole folder); a name of
    SELECTIONS loads its documents of the corpus it selects from."""
    selection = SELECTIONS.get(str(name_or_path))
    if selection is not None:
        source, files = selection
        folder = find_corpus(source, search_path)
        return join_documents([_decode_document(folder / file, limits) for file in files])
    path = find_corpus(name_or_path, search_path)
    max_bytes = limits.get("max_bytes", DEFAULT_MAX_BYTES)
    n_bytes = _corpus_bytes(path)
    if n_bytes > max_bytes:  # refuse before reading a huge file into memory
        raise too_large(n_bytes, max_bytes)
    if path.is_dir():
        return join_documents([_decode_document(p, limits) for p in _documents_in_folder(path)])
    return decode_corpus(path.read_bytes(), **limits)


def _decode_document(path: Path, limits: dict) -> DecodedCorpus:
    try:
        return decode_corpus(path.read_bytes(), **limits)
    except CorpusError as e:
        raise CorpusError(e.code, f"{path.name}: {e.message}") from None


# -----------------------------------------------------------------------------
# batch shape

def fit_batch_shape(n_tokens: int, batch_size: int, seq_len: int,
                    min_seq_len: int = 8) -> tuple[int, int, str | None]:
    """Shrink (batch_size, seq_len) until batch_size streams of seq_len + 1 tokens fit in the corpus.

    Training cuts the tokens into batch_size parallel streams read in seq_len chunks, and each chunk
    needs seq_len + 1 tokens (inputs plus the next-token targets). Batch size goes first because it
    only costs speed; a shorter sequence costs the model context.
    """
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be positive, got {batch_size} and {seq_len}")
    if n_tokens >= batch_size * (seq_len + 1):
        return batch_size, seq_len, None
    have = f"Corpus has {plural(n_tokens, 'token')}"
    if n_tokens >= seq_len + 1:
        fitted = n_tokens // (seq_len + 1)
        return fitted, seq_len, f"{have}: batch size reduced from {batch_size} to {fitted} to fit."
    shortest = min(seq_len, min_seq_len)
    if n_tokens < shortest + 1:
        raise CorpusError("too_small", f"The corpus has {plural(n_tokens, 'token')}; at least {shortest + 1} "
                                       f"are needed (one sequence of {shortest} plus the next token).")
    fitted_seq = n_tokens - 1
    batch_note = f"batch size reduced from {batch_size} to 1 and " if batch_size > 1 else ""
    return 1, fitted_seq, f"{have}: {batch_note}sequence length reduced from {seq_len} to {fitted_seq} to fit."
