"""The Kneser–Ney models (trainer/ngram.py, and the baselines of bench/quality/kneser_ney.py built on it) must be
proper distributions, beat a unigram, and refuse tables that are not what counting makes."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.quality.kneser_ney import KneserNeyTrigram, best_kneser_ney
from trainer.ngram import KneserNey
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


# -- trainer/ngram.py: the model of any order that the baselines and the word MLP's mixture share ----------------

@pytest.mark.parametrize("order", [1, 2, 3, 5])
@pytest.mark.parametrize("discount", [None, 0.75])
def test_every_order_is_a_distribution_and_the_full_rows_agree(alice_tokens, order, discount):
    tokens, V = alice_tokens
    lm = KneserNey.count(torch.as_tensor(tokens[:20000]), V, order, discount=discount)
    seen = torch.as_tensor(np.stack([tokens[100 + j:104 + j] for j in range(order - 1)], 1)) if order > 1 else None
    contexts = torch.tensor([[5, 6, 7, 8][:order - 1], [V - 1, V - 2, 0, 3][:order - 1]], dtype=torch.long)
    if seen is not None:
        contexts = torch.cat([contexts, seen])
    rows = lm.distribution(contexts, dtype=torch.float64)
    assert rows.sum(1).numpy() == pytest.approx(np.ones(len(contexts)), abs=1e-9)
    everything = torch.arange(V)
    for i, context in enumerate(contexts):
        pointwise = lm.prob(context.expand(V, order - 1), everything)
        torch.testing.assert_close(pointwise, rows[i], rtol=1e-9, atol=1e-12)


def test_the_trigram_baseline_is_the_order_3_model_with_one_discount(alice_tokens):
    tokens, V = alice_tokens
    old = KneserNeyTrigram(tokens[:20000], V)
    general = KneserNey.count(torch.as_tensor(tokens[:20000]), V, 3, discount=0.75)
    assert old.nats_per_token(tokens[20000:]) == pytest.approx(general.nats_per_token(torch.as_tensor(tokens[20000:])))


def test_modified_discounts_and_longer_contexts_help_on_held_out_text(alice_tokens):
    tokens, V = alice_tokens
    split = int(len(tokens) * 0.9)
    train, val = torch.as_tensor(tokens[:split]), torch.as_tensor(tokens[split - 4:])
    positions = np.arange(4, len(val))
    fixed = KneserNeyTrigram(tokens[:split], V)
    v = val.numpy()
    fixed_nats = -np.log(fixed.prob(v[positions - 2], v[positions - 1], v[positions])).mean()
    best = best_kneser_ney(train.numpy(), v, positions, V)
    assert set(best["ppl"]) == {3, 4, 5} and best["best_ppl"] == min(best["ppl"].values())
    assert math.log(best["ppl"][3]) < fixed_nats - 0.01  # modified Kneser–Ney beats one discount
    assert best["log_probs"].shape == positions.shape


def test_tables_round_trip_and_a_forged_table_is_refused(alice_tokens):
    tokens, V = alice_tokens
    lm = KneserNey.count(torch.as_tensor(tokens[:5000]), V, 4)
    copy = KneserNey(V, 4, lm.sizes)
    copy.load_state_dict(lm.state_dict())
    context = torch.as_tensor(tokens[10:13])[None]
    torch.testing.assert_close(copy.distribution(context), lm.distribution(context))
    forged = dict(lm.state_dict())
    forged["keys3"] = forged["keys3"].flip(0)  # no longer sorted: lookups would read other n-grams' counts
    with pytest.raises(ValueError, match="keys3"):
        KneserNey(V, 4, lm.sizes).load_state_dict(forged)
    forged = dict(lm.state_dict(), counts2=-lm.counts2)
    with pytest.raises(ValueError, match="negative"):
        KneserNey(V, 4, lm.sizes).load_state_dict(forged)
