"""Word vectors for word-gru: a word2vec-format file read with gensim, or word2vec trained on the corpus."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .tokenizer import WordTokenizer


def _sentences(tokenizer: WordTokenizer, corpus: str | Sequence[int] | torch.Tensor) -> list[list[str]]:
    """word2vec's sentences: the corpus's lines as tokens. Given token ids (the training split only, so that
    no held-out text shapes the vectors), the ids are mapped back to words and cut at newline tokens."""
    if isinstance(corpus, str):
        return [tokenizer.tokenize(line) for line in corpus.split("\n") if line.strip()]
    words = [tokenizer.vocab[i] for i in (corpus.tolist() if isinstance(corpus, torch.Tensor) else corpus)]
    sentences, current = [], []
    for word in words:
        if word == "\n":
            if current:
                sentences.append(current)
            current = []
        else:
            current.append(word)
    if current:
        sentences.append(current)
    return sentences


def word_vectors_for(tokenizer: WordTokenizer, corpus: str | Sequence[int] | torch.Tensor, path: str = "",
                     dim: int = 100, seed: int = 1337, epochs: int = 5) -> torch.Tensor:
    """A (vocab, dim) matrix aligned with the tokenizer. Words without a vector get small random ones.
    `corpus` is the text, or better the training token ids, that word2vec learns from when no `path` is given."""
    from gensim.models import KeyedVectors, Word2Vec

    if path:
        binary = Path(path).suffix == ".bin"
        vectors = KeyedVectors.load_word2vec_format(path, binary=binary)
    else:
        vectors = Word2Vec(_sentences(tokenizer, corpus), vector_size=dim, window=5, min_count=1, workers=1,
                           seed=seed, epochs=epochs).wv
    rng = np.random.default_rng(seed)
    matrix = rng.normal(0.0, 0.1, size=(len(tokenizer), vectors.vector_size)).astype(np.float32)
    for i, word in enumerate(tokenizer.vocab):
        if word in vectors.key_to_index:
            matrix[i] = vectors[word]
    return torch.from_numpy(matrix)
