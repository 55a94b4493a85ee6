"""Reading order for training and evaluation, as in char-rnn: the token stream is cut into B
contiguous streams read in chunks of T tokens, and the model's state is carried from one chunk to
the next (truncated back-propagation through time). Chunk i of an epoch is a pure function of i,
so the data position saved in a checkpoint is just the step number."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from core.text import DOCUMENT_SEPARATOR, DecodedCorpus

from .corpus import fit_batch_shape
from .finetune import extend_vocabulary
from .heldout import TextSplit, split_text
from .tokenizer import CharTokenizer, WordTokenizer

if TYPE_CHECKING:
    from .checkpoint import Checkpoint
    from .train import TrainConfig


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


# -- a training run's data -----------------------------------------------------------------------------------
# What trainer.train.train trains and evaluates on, tokenized once per call; a resumed run rebuilds exactly
# the same split and batches, so none of it is saved.

@dataclass
class RunData:
    tokenizer: CharTokenizer | WordTokenizer
    text: str
    corpus_sha256: str
    documents: int
    train_ids: torch.Tensor
    val_ids: torch.Tensor
    batch_size: int
    seq_len: int
    streams: TokenStreams  # the training batches: chunk i is step i's
    block: int  # held-out block length of this tokenizer's kind
    val_text: str = ""  # the held-out text (pieces joined by DOCUMENT_SEPARATOR): what the quality gate scores
    split_stats: dict | None = None  # characters dropped as repeats and as held-out text overlapping training
    # a word MLP mixed with an n-gram (ngram_order): the training text it trains on, and the slice of the training
    # text kept from it to fit the mixture on (trainer/mixture.py); otherwise all the training text and None
    fit_ids: torch.Tensor | None = None
    tune_ids: torch.Tensor | None = None

    @property
    def steps_per_epoch(self) -> int:
        return self.streams.n_chunks


def corpus_sha256(corpus: DecodedCorpus | str) -> str:
    if isinstance(corpus, str):
        return hashlib.sha256(corpus.encode("utf-8")).hexdigest()
    return corpus.sha256


def _tokenizer(config: TrainConfig, text: str, saved: Checkpoint | None, base: Checkpoint | None):
    """A resumed run keeps the tokenizer it started with; a fine-tune extends its base's."""
    if saved is not None:
        return saved.tokenizer
    if base is not None:
        return extend_vocabulary(base.tokenizer, text)
    if config.family == "char-rnn":
        return CharTokenizer.build(text)
    return WordTokenizer.build(text, config.max_vocab, config.lowercase)


BLOCK_CHARS = 4096  # the text split's block: a few KB of text, whole paragraphs


def text_split(corpus: DecodedCorpus | str, val_fraction: float, mode: str) -> TextSplit:
    """The text split (trainer.heldout) of `corpus`: repeats dropped, whole paragraphs on either side, no
    50-character window of held-out text in the training text."""
    documents = corpus.document_texts() if isinstance(corpus, DecodedCorpus) else [corpus]
    return split_text(documents, val_fraction, mode, BLOCK_CHARS)


def split_corpus(config: TrainConfig, corpus: DecodedCorpus | str) -> TextSplit:
    """The run's text split: what it trains on and what it holds out."""
    return text_split(corpus, config.val_fraction, config.split)


def _encode_pieces(tokenizer, pieces: list[str], separator: torch.Tensor) -> torch.Tensor:
    parts = []
    for i, piece in enumerate(pieces):
        if i:
            parts.append(separator)
        parts.append(torch.tensor(tokenizer.encode(piece), dtype=torch.long))
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)


def encode_split(tokenizer, split: TextSplit) -> tuple[torch.Tensor, torch.Tensor]:
    """(training ids, held-out ids) of a text split: each side's pieces encoded and joined by the document
    separator, exactly as a training run feeds them."""
    separator = torch.tensor(tokenizer.encode(DOCUMENT_SEPARATOR), dtype=torch.long)
    return _encode_pieces(tokenizer, split.train, separator), _encode_pieces(tokenizer, split.val, separator)


def rebuild_split(meta: dict, tokenizer, corpus: DecodedCorpus | str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(training ids, held-out ids, held-out characters) of `corpus` exactly as the run whose checkpoint
    metadata is `meta` split it: the paragraph split of trainer.heldout (split_corpus) for runs that record
    it, the token-block split (split_documents) for checkpoints made before it, the tail for checkpoints
    made before the spread split. Benchmarks and `improbable evaluate` score what training held out."""
    config, recorded = meta.get("train_config", {}), meta.get("split", {})
    fraction = recorded.get("val_fraction", config.get("val_fraction", 0.1))
    mode = recorded.get("mode", config.get("split", "tail"))
    if recorded.get("paragraphs"):
        split = text_split(corpus, fraction, mode)
        return (*encode_split(tokenizer, split), len(split.val_text))
    documents = corpus.document_texts() if isinstance(corpus, DecodedCorpus) else [corpus]
    separator = torch.tensor(tokenizer.encode(DOCUMENT_SEPARATOR), dtype=torch.long)
    parts = [torch.tensor(tokenizer.encode(d), dtype=torch.long) for d in documents]
    train_ids, val_ids = split_documents(parts, fraction, mode, BLOCK_TOKENS[tokenizer.kind], separator)
    text = corpus if isinstance(corpus, str) else corpus.text
    return train_ids, val_ids, int(len(text) * fraction)


def load_data(config: TrainConfig, corpus: DecodedCorpus | str, device: torch.device, saved: Checkpoint | None,
              base: Checkpoint | None, warnings: list[str]) -> RunData:
    """Tokenize, split and batch `corpus` for `config`; a note about a shrunk batch shape goes to `warnings`."""
    text = corpus if isinstance(corpus, str) else corpus.text
    tokenizer = _tokenizer(config, text, saved, base)
    documents = corpus.document_texts() if isinstance(corpus, DecodedCorpus) else [text]
    block = BLOCK_TOKENS[tokenizer.kind]
    split = split_corpus(config, corpus)
    train_ids, val_ids = (ids.to(device) for ids in encode_split(tokenizer, split))
    fit_ids, tune_ids = train_ids, None
    if config.ngram_order:  # the mixture's tune slice, split off the training text like the held-out text
        inner = split_text(split.train, config.ngram_tune_fraction, "spread", BLOCK_CHARS)
        fit_ids, tune_ids = (ids.to(device) for ids in encode_split(tokenizer, inner))
    batch_size, seq_len, shrink = fit_batch_shape(len(fit_ids), config.batch_size, config.seq_len)
    if shrink:
        warnings.append(shrink)
    if saved is not None and saved.meta.get("batch_shape", [batch_size, seq_len]) != [batch_size, seq_len]:
        raise ValueError(f"{Path(config.out_dir) / 'last.safetensors'} was trained with batch size, seq len "
                         f"{saved.meta['batch_shape']}: resume it with those (not {batch_size}, {seq_len}), or start "
                         "afresh (resume=False, --no-resume)")
    return RunData(tokenizer, text, corpus_sha256(corpus), len(documents), train_ids, val_ids, batch_size, seq_len,
                   TokenStreams(fit_ids, batch_size, seq_len), block, split.val_text,
                   {"duplicate_chars": split.duplicate_chars, "overlap_chars": split.overlap_chars, "paragraphs": True},
                   fit_ids, tune_ids)
