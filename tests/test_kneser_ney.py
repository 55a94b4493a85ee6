"""The quality report's Kneser–Ney baseline must be a proper distribution and beat a unigram."""

import math
from pathlib import Path

import numpy as np
import pytest

from bench.quality.kneser_ney import KneserNeyTrigram
from trainer.tokenizer import WordTokenizer

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpora" / "alice" / "alice.txt"


@pytest.fixture(scope="module")
def alice_tokens():
    text = CORPUS.read_text()
    tok = WordTokenizer.build(text, max_vocab=3000, lowercase=True)
    return np.array(tok.encode(text)), len(tok)


def test_probabilities_sum_to_one_for_seen_and_unseen_contexts(alice_tokens):
    tokens, V = alice_tokens
    lm = KneserNeyTrigram(tokens[:20000], V)
    everything = np.arange(V)
    for u, v in [(tokens[5], tokens[6]), (tokens[100], tokens[101]), (V - 1, V - 2), (0, 0)]:
        total = lm.prob(np.full(V, u), np.full(V, v), everything).sum()
        assert total == pytest.approx(1.0, abs=1e-9)


def test_beats_unigram_on_held_out_text(alice_tokens):
    tokens, V = alice_tokens
    split = int(len(tokens) * 0.9)
    lm = KneserNeyTrigram(tokens[:split], V)
    counts = np.bincount(tokens[:split], minlength=V) + 1.0
    unigram = -np.log(counts[tokens[split + 2:]] / counts.sum()).mean()
    assert lm.nats_per_token(tokens[split:]) < unigram - 0.3
    assert math.isfinite(lm.perplexity(tokens[split:]))
