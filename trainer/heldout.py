"""The held-out split, made on the text: validation text shares no WINDOW-character window with training text.

1. Repeats go first (core.dedup): exact-duplicate paragraphs and long lines, across all the documents, so a
   paragraph pasted twice cannot land on both sides.
2. Whole units go to one side: a unit is a paragraph (a blank-line break ends it), or a run of lines of a
   paragraph longer than a block. Units are grouped into blocks of about `block_chars`; "spread" holds out
   every k-th block of each document (k = 1 / val_fraction, the middle one of each k first), or with enough
   documents every k-th whole document; "tail" holds out the last val_fraction of the units.
3. Any held-out unit that still shares a window with the training stream (a near-duplicate paragraph, a quote
   repeated with one word changed) is dropped, and again until none does: windows across the separators
   between held-out pieces count too. Window hashes are computed with torch, a few passes over the text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from core.dedup import WINDOW, Repeats, paragraphs
from core.text import DOCUMENT_SEPARATOR

MIN_DOCUMENTS_FOR_WHOLE = 10  # fewer documents than this are split into blocks, each document on its own
SPLITS = ("spread", "tail")


@dataclass
class TextSplit:
    train: list[str]  # contiguous pieces of training text, to be joined by DOCUMENT_SEPARATOR
    val: list[str]  # contiguous pieces of held-out text, likewise
    duplicate_chars: int = 0  # dropped as exact repeats before splitting
    overlap_chars: int = 0  # held-out text dropped for sharing a window with training text
    notes: list[str] = field(default_factory=list)

    @property
    def train_text(self) -> str:
        return DOCUMENT_SEPARATOR.join(self.train)

    @property
    def val_text(self) -> str:
        return DOCUMENT_SEPARATOR.join(self.val)


def _units(doc: str, block_chars: int) -> list[str]:
    """A document's paragraphs, a paragraph longer than a block cut into runs of whole lines."""
    units = []
    for p in paragraphs(doc):
        if len(p) <= block_chars:
            units.append(p)
            continue
        run = ""
        for line in p.splitlines(keepends=True):
            if run and len(run) + len(line) > block_chars:
                units.append(run)
                run = ""
            run += line
        if run:
            units.append(run)
    return [u for u in units if u]


def _blocks(units: list[str], target: float) -> list[list[str]]:
    blocks, current, size = [], [], 0
    for u in units:
        current.append(u)
        size += len(u)
        if size >= target:
            blocks.append(current)
            current, size = [], 0
    if current:
        blocks.append(current)
    return blocks


def _even_pieces(text: str, k: int) -> list[str]:
    step = -(-len(text) // k)
    return [text[i:i + step] for i in range(0, len(text), step)]


def _assign(docs: list[list[str]], val_fraction: float, mode: str, block_chars: int):
    """(training pieces as lists of units, held-out pieces as lists of units)."""
    if val_fraction <= 0:
        return [d for d in docs if d], []
    if mode == "tail":
        total = sum(len(u) for d in docs for u in d)
        cut, seen, train, val = total * (1 - val_fraction), 0, [], []
        for d in docs:
            t, v = [], []
            for u in d:
                (t if seen < cut else v).append(u)
                seen += len(u)
            train += [t] if t else []
            val += [v] if v else []
        return train, val
    k = max(2, round(1 / val_fraction))
    if len(docs) >= max(MIN_DOCUMENTS_FOR_WHOLE, k):
        return ([d for i, d in enumerate(docs) if i % k != k // 2 and d],
                [d for i, d in enumerate(docs) if i % k == k // 2 and d])
    train, val = [], []
    for units in docs:
        length = sum(len(u) for u in units)
        if not length:
            continue
        if len(units) < k:  # too few paragraphs for a held-out one of its own: cut it evenly instead
            units = _even_pieces("".join(units), k)
        run: list[str] = []
        for i, block in enumerate(_blocks(units, min(block_chars, length / k))):
            if i % k == k // 2:
                val.append(block)
                train += [run] if run else []  # a held-out gap becomes a document break
                run = []
            else:
                run += block
        train += [run] if run else []
    return train, val


_PRIME = 1099511628211


def _int64(x: int) -> int:
    x %= 1 << 64
    return x - (1 << 64) if x >= 1 << 63 else x


def window_hashes(text: str, window: int = WINDOW) -> torch.Tensor:
    """A 64-bit polynomial hash (wrapping arithmetic) of every `window`-character window of `text`: equal
    windows, equal hashes; unequal ones collide with negligible probability. Hashes of windows of 2m come
    from those of m (h[i] * P^m + h[i + m]), so it is a few passes over the text rather than `window`."""
    if len(text) < window:
        return torch.empty(0, dtype=torch.long)
    h = torch.frombuffer(bytearray(text.encode("utf-32-le")), dtype=torch.int32).long()
    n = len(h) - window + 1
    out, done, length = None, 0, 1  # out: hashes of the first `done` characters of each window
    while True:
        if window & length:  # append this power-of-two piece to what is done: out * P^length + h[i + done]
            piece = h[done:done + n]
            out = piece.clone() if out is None else out.mul_(_int64(pow(_PRIME, length, 1 << 64))).add_(piece)
            done += length
        if length * 2 > window:
            return out
        h = h[:-length] * _int64(pow(_PRIME, length, 1 << 64)) + h[length:]
        length *= 2


def shared_windows(train_text: str, val_text: str, window: int = WINDOW, chunk: int = 1 << 20) -> torch.Tensor:
    """Sorted start positions in `val_text` of windows that also occur in `train_text`."""
    val_h = window_hashes(val_text, window)
    if not len(val_h):
        return torch.empty(0, dtype=torch.long)
    unique = torch.unique(val_h)  # sorted
    hit = torch.zeros(len(unique), dtype=torch.bool)
    for start in range(0, max(len(train_text) - window + 1, 0), chunk):
        h = window_hashes(train_text[start:start + chunk + window - 1], window)
        idx = torch.searchsorted(unique, h).clamp(max=len(unique) - 1)
        found = unique[idx] == h
        hit[idx[found]] = True
    return torch.nonzero(torch.isin(val_h, unique[hit])).flatten()


def _drop_overlaps(train_text: str, val: list[list[str]]) -> tuple[list[list[str]], int]:
    """Held-out units without any that share a window with the training text; repeated until none does."""
    dropped = 0
    while True:
        text = DOCUMENT_SEPARATOR.join("".join(p) for p in val)
        hits = shared_windows(train_text, text)
        if not len(hits):
            return val, dropped
        starts, spans, offset = [], [], 0  # each unit's [start, end) in `text`
        for i, piece in enumerate(val):
            for j, unit in enumerate(piece):
                starts.append((i, j))
                spans.append((offset, offset + len(unit)))
                offset += len(unit)
            offset += len(DOCUMENT_SEPARATOR)
        begin = torch.tensor([s for s, _ in spans])
        end = torch.tensor([e for _, e in spans])
        # a unit goes when a shared window [h, h + WINDOW) touches it (a window over a separator: both neighbours)
        first = torch.searchsorted(end, hits, right=True)
        last = torch.searchsorted(begin, hits + WINDOW - 1, right=True) - 1
        doomed = set()
        for a, b in zip(first.tolist(), last.tolist()):
            doomed.update(range(a, max(a, b) + 1))
        doomed.discard(len(spans))
        dropped += sum(spans[u][1] - spans[u][0] for u in doomed)
        pieces: list[list[str]] = []
        for u, (i, j) in enumerate(starts):  # consecutive survivors of one piece stay one piece
            if u in doomed:
                continue
            if u and (u - 1) not in doomed and starts[u - 1][0] == i and pieces:
                pieces[-1].append(val[i][j])
            else:
                pieces.append([val[i][j]])
        val = pieces


def split_text(documents: list[str], val_fraction: float, mode: str = "spread",
               block_chars: int = 4096) -> TextSplit:
    """(training pieces, held-out pieces) of `documents`, repeats dropped, no window shared across the split."""
    if mode not in SPLITS:
        raise ValueError(f"unknown split {mode!r}; choose one of {', '.join(SPLITS)}")
    repeats = Repeats()
    docs = [_units("".join(repeats.keep(p) for p in paragraphs(d)), block_chars) for d in documents]
    train, val = _assign(docs, val_fraction, mode, block_chars)
    train_pieces = ["".join(p) for p in train]
    val, overlap = _drop_overlaps(DOCUMENT_SEPARATOR.join(train_pieces), val) if val else (val, 0)
    return TextSplit(train_pieces, ["".join(p) for p in val], repeats.dropped_chars, overlap)
