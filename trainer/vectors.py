"""Word vectors for word-gru: a word2vec-format file read with gensim, or word2vec trained on the corpus."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .tokenizer import WordTokenizer


def word_vectors_for(tokenizer: WordTokenizer, text: str, path: str = "", dim: int = 100,
                     seed: int = 1337, epochs: int = 5) -> torch.Tensor:
    """A (vocab, dim) matrix aligned with the tokenizer. Words without a vector get small random ones."""
    from gensim.models import KeyedVectors, Word2Vec

    if path:
        binary = Path(path).suffix == ".bin"
        vectors = KeyedVectors.load_word2vec_format(path, binary=binary)
    else:
        sentences = [tokenizer.tokenize(line) for line in text.split("\n") if line.strip()]
        vectors = Word2Vec(sentences, vector_size=dim, window=5, min_count=1, workers=1, seed=seed,
                           epochs=epochs).wv
    rng = np.random.default_rng(seed)
    matrix = rng.normal(0.0, 0.1, size=(len(tokenizer), vectors.vector_size)).astype(np.float32)
    for i, word in enumerate(tokenizer.vocab):
        if word in vectors.key_to_index:
            matrix[i] = vectors[word]
    return torch.from_numpy(matrix)
