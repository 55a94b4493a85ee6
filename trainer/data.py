"""Reading order for training and evaluation, as in char-rnn: the token stream is cut into B
contiguous streams read in chunks of T tokens, and the model's state is carried from one chunk to
the next (truncated back-propagation through time). Chunk i of an epoch is a pure function of i,
so the data position saved in a checkpoint is just the step number."""

from __future__ import annotations

import torch


def split_train_val(n_tokens: int, val_fraction: float) -> int:
    """Index where validation starts: the last `val_fraction` of the corpus (nanoGPT's split)."""
    return int(n_tokens * (1.0 - val_fraction))


SPLITS = ("spread", "tail")
BLOCK_TOKENS = {"char": 4096, "word": 1024}  # a few KB of text either way
MIN_DOCUMENTS_FOR_WHOLE = 10  # fewer documents than this are split into blocks, each document on its own


def split_documents(documents: list[torch.Tensor], val_fraction: float, mode: str = "spread",
                    block_tokens: int = 4096,
                    separator: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(train ids, validation ids) from the token ids of each document, documents joined by `separator`.

    - "tail": the last `val_fraction` of the whole stream (nanoGPT's split, kept for comparable benchmarks).
    - "spread": held-out text spread through the corpus, so that one odd section (one speech typed in capitals)
      cannot decide the loss or the best checkpoint. With enough documents, whole documents are held out:
      every k-th document with k = 1 / val_fraction, starting in the middle of the first k. Otherwise every
      k-th block of `block_tokens` tokens of each document is held out, the middle block of each k first.
    Documents and blocks never straddle the split: validation text is never seen in training.
    """
    if mode not in SPLITS:
        raise ValueError(f"unknown split {mode!r}; choose one of {', '.join(SPLITS)}")
    sep = separator if separator is not None else documents[0].new_empty(0)

    def join(parts: list[torch.Tensor]) -> torch.Tensor:
        pieces = []
        for i, part in enumerate(p for p in parts if len(p)):
            if i:
                pieces.append(sep)
            pieces.append(part)
        return torch.cat(pieces) if pieces else documents[0].new_empty(0)

    if val_fraction <= 0:
        return join(documents), documents[0].new_empty(0)
    if mode == "tail":
        ids = join(documents)
        cut = split_train_val(len(ids), val_fraction)
        return ids[:cut], ids[cut:]
    k = max(2, round(1 / val_fraction))
    if len(documents) >= max(MIN_DOCUMENTS_FOR_WHOLE, k):
        held = {i for i in range(len(documents)) if i % k == k // 2}
        return (join([d for i, d in enumerate(documents) if i not in held]),
                join([d for i, d in enumerate(documents) if i in held]))
    train_parts, val_parts = [], []
    for doc in documents:
        blocks = list(doc.split(block_tokens))
        if len(blocks) < k:  # too short for even one held-out block of its own: cut its middle instead
            blocks = list(doc.tensor_split(k)) if len(doc) >= k else [doc]
        held = [b for i, b in enumerate(blocks) if i % k == k // 2]
        # consecutive kept blocks are contiguous text; a held-out gap becomes a document break
        run: list[torch.Tensor] = []
        for i, b in enumerate(blocks):
            if i % k == k // 2:
                if run:
                    train_parts.append(torch.cat(run))
                run = []
            else:
                run.append(b)
        if run:
            train_parts.append(torch.cat(run))
        val_parts.extend(held)
    return join(train_parts), join(val_parts)


def spread_sample(ids: torch.Tensor, max_tokens: int, block_tokens: int = 4096) -> torch.Tensor:
    """At most `max_tokens` of `ids` in whole blocks of `block_tokens` (never less than one block), spread
    evenly through it, each from the middle of its share: a capped evaluation still sees the split's variety."""
    if not max_tokens or len(ids) <= max_tokens:
        return ids
    blocks = ids.split(block_tokens)
    k = min(len(blocks), max(1, max_tokens // block_tokens))
    return torch.cat([blocks[(2 * i + 1) * len(blocks) // (2 * k)] for i in range(k)])


class TokenStreams:
    def __init__(self, tokens: torch.Tensor, batch_size: int, seq_len: int):
        stream_len = (len(tokens) - 1) // batch_size
        if stream_len < 1:
            raise ValueError(f"{len(tokens)} tokens cannot fill {batch_size} streams")
        used = batch_size * stream_len
        self.x = tokens[:used].view(batch_size, stream_len)
        self.y = tokens[1:used + 1].view(batch_size, stream_len)
        self.seq_len = seq_len
        self.n_chunks = max(1, stream_len // seq_len)

    @property
    def n_tokens(self) -> int:
        return self.x.numel()

    def chunk(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Chunk i (wrapping around epochs). Training drops the ragged tail of each stream."""
        start = (i % self.n_chunks) * self.seq_len
        return self.x[:, start:start + self.seq_len], self.y[:, start:start + self.seq_len]

    def all_chunks(self):
        """Every chunk including the ragged tail: evaluation scores every token once."""
        for start in range(0, self.x.size(1), self.seq_len):
            yield self.x[:, start:start + self.seq_len], self.y[:, start:start + self.seq_len]
