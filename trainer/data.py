"""Reading order for training and evaluation, as in char-rnn: the token stream is cut into B
contiguous streams read in chunks of T tokens, and the model's state is carried from one chunk to
the next (truncated back-propagation through time). Chunk i of an epoch is a pure function of i,
so the data position saved in a checkpoint is just the step number."""

from __future__ import annotations

import torch


def split_train_val(n_tokens: int, val_fraction: float) -> int:
    """Index where validation starts: the last `val_fraction` of the corpus (nanoGPT's split)."""
    return int(n_tokens * (1.0 - val_fraction))


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
