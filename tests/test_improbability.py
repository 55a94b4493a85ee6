"""The improbability drive (trainer/sample.py): for character models it chooses whole words, seeded, that
the model can spell, with realised word probabilities near the target; for word models it samples in
the band around the target; special tokens such as `<unk>` are never written.

A tiny character LSTM is trained for a few seconds on text made of a fixed word list, so "a word the model
can spell" has a checkable meaning; calibration uses a model whose word distribution is known exactly."""

from __future__ import annotations

import math
import random
import re
import statistics

import pytest
import torch

from core.contracts import SamplingParams
from tests.test_sample import TableModel
from trainer.model import ModelConfig, build_model
from trainer.sample import BatchSampler, Stream, generate, is_special
from trainer.tokenizer import CharTokenizer, WordTokenizer

pytestmark = pytest.mark.usefixtures("single_thread")

WORDS = ("the cat sat on a mat and dog ran to big red house in garden with tree under blue sky "
         "little bird sang song every morning while old man read his book near window").split()
WORD_RE = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")


def word_list_text(n_words: int, seed: int = 0) -> str:
    """Words drawn with Zipf-like frequencies, in sentences: so the model has probable and rare words."""
    rng = random.Random(seed)
    weights = [1 / (rank + 1) for rank in range(len(WORDS))]
    out, sentence = [], []
    for _ in range(n_words):
        sentence.append(rng.choices(WORDS, weights)[0])
        if len(sentence) >= rng.randint(4, 9):
            out.append(" ".join(sentence) + rng.choice([".", ".", ",", "!"]))
            sentence = []
    return " ".join(out) + "\n"


@pytest.fixture(scope="module")
def word_list_model():
    """A 1x64 LSTM trained 150 steps on the word-list text: it spells those words and little else."""
    text = word_list_text(6000)
    tok = CharTokenizer.build(text)
    ids = torch.tensor(tok.encode(text))
    torch.manual_seed(0)
    model = build_model(ModelConfig(family="char-rnn", vocab_size=len(tok), cell="lstm", n_layers=1,
                                    n_embd=16, n_hidden=64))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    T, B = 32, 32
    generator = torch.Generator().manual_seed(0)
    for _ in range(150):
        starts = torch.randint(0, len(ids) - T - 1, (B,), generator=generator)
        x = torch.stack([ids[s:s + T] for s in starts])
        y = torch.stack([ids[s + 1:s + T + 1] for s in starts])
        loss, _ = model.loss(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 1.6, f"the fixture model did not learn the word list (loss {loss.item():.2f})"
    return model.eval(), tok


def driven(model, tok, seed: int, p: float = 0.05, n: int = 300, prompt: str = "the ", **kw) -> Stream:
    return generate(model, tok, [prompt], SamplingParams(max_tokens=n, improbability=p, seed=seed, **kw))[0]


def real_word_rate(text: str) -> float:
    words = WORD_RE.findall(text)
    return sum(w in WORDS for w in words) / len(words)


# -----------------------------------------------------------------------------
# character models: seeded, whole words


def test_six_seeds_give_six_texts_and_a_seed_repeats(word_list_model):
    model, tok = word_list_model
    texts = [driven(model, tok, seed, n=120).text for seed in range(6)]
    assert len(set(texts)) == 6
    assert driven(model, tok, 3, n=120).text == texts[3]


def test_same_seed_same_text_alone_or_in_a_mixed_batch(word_list_model):
    model, tok = word_list_model
    requests = [("the ", SamplingParams(max_tokens=120, improbability=0.05, seed=11)),
                ("a dog ", SamplingParams(max_tokens=90, temperature=0.8, seed=12)),  # no drive
                ("his ", SamplingParams(max_tokens=150, improbability=0.01, tolerance=0.5, seed=13)),
                ("old", SamplingParams(max_tokens=60, temperature=0, seed=14)),  # greedy, no drive
                ("", SamplingParams(max_tokens=100, improbability=0.3, temperature=0.7, seed=15))]
    alone = [generate(model, tok, [prompt], params)[0] for prompt, params in requests]
    together = generate(model, tok, [r[0] for r in requests], [r[1] for r in requests])
    for a, b in zip(alone, together):
        assert b.text == a.text and [w for w, _ in b.picks] == [w for w, _ in a.picks]
        # probabilities agree up to float rounding (batched matrix products may sum in another order)
        assert [p for _, p in b.picks] == pytest.approx([p for _, p in a.picks], rel=1e-4)
    # joining mid-generation (the serving engine's pattern) changes nothing either
    sampler = BatchSampler(model, tok)
    joined = []
    for prompt, params in requests:
        joined.append(sampler.add(prompt, params))
        for _ in range(7):
            sampler.step()
    sampler.run()
    assert [s.text for s in joined] == [s.text for s in alone]
    assert all(s.picks for s, (_, params) in zip(alone, requests) if params.improbability)


def test_driven_words_are_words_the_model_can_spell(word_list_model):
    model, tok = word_list_model
    texts = [driven(model, tok, seed, p=0.05, n=300).text for seed in range(4)]
    driven_rate = real_word_rate(" ".join(texts))
    # the check discriminates: hot sampling from the same model misspells far more often
    hot = [generate(model, tok, ["the "], SamplingParams(max_tokens=300, temperature=2.5, seed=s))[0].text
           for s in range(4)]
    hot_rate = real_word_rate(" ".join(hot))
    assert driven_rate >= 0.97, f"real-word rate {driven_rate:.3f} at improbability 0.05"
    assert hot_rate < driven_rate - 0.15, f"hot sampling {hot_rate:.3f} vs driven {driven_rate:.3f}"


def test_picks_record_the_words_written_and_their_probabilities(word_list_model):
    model, tok = word_list_model
    stream = driven(model, tok, 5, p=0.05, n=200)
    written = WORD_RE.findall(stream.text)
    picked = [w for w, _ in stream.picks]
    assert picked and all(0 < p <= 1 for _, p in stream.picks)
    # every pick was written whole, as a word of its own, in order (the last one may be cut by max_tokens)
    assert written[:len(picked) - 1] == picked[:-1] or written[1:len(picked)] == picked[:-1]
    ratios = [p / 0.05 for _, p in stream.picks]
    assert 0.5 <= statistics.median(ratios) <= 2


# -----------------------------------------------------------------------------
# calibration on a character model whose word distribution is known exactly

LETTERS = "abcdef"
SPACE_ROW = torch.tensor([-30.0] + [2.0, 1.5, 0.5, 0.0, -1.0, -2.5])  # after a space: which letter starts a word


def known_word_model() -> tuple[TableModel, CharTokenizer]:
    """Next-char logits depend on the current char only. After a space a letter always comes; after a
    letter, a space with probability 0.45 and otherwise a letter, unevenly. Word probabilities then
    spread smoothly over many orders of magnitude."""
    tok = CharTokenizer(list(" " + LETTERS))
    table = torch.zeros(len(tok), len(tok))
    table[0] = SPACE_ROW
    g = torch.Generator().manual_seed(3)
    for i in range(1, len(tok)):
        letters = torch.randn(len(LETTERS), generator=g) * 1.2
        letter_probs = torch.softmax(letters, 0) * 0.55
        table[i] = torch.cat([torch.tensor([0.45]), letter_probs]).log()
    return TableModel(table), tok


def exact_word_probability(table: torch.Tensor, tok: CharTokenizer, word: str) -> float:
    probs = torch.softmax(table.double(), 1)
    first = probs[0, 1:] / probs[0, 1:].sum()  # given that a word starts
    ids = tok.encode(word)
    p = float(first[ids[0] - 1])
    for a, b in zip(ids, ids[1:]):
        p *= float(probs[a, b])
    return p * float(probs[ids[-1], 0])  # and then the word ends


@pytest.mark.parametrize("target", [0.1, 0.01, 0.001])
def test_char_drive_is_calibrated_on_a_known_distribution(target):
    model, tok = known_word_model()
    streams = generate(model, tok, [" "] * 6,
                       [SamplingParams(max_tokens=250, improbability=target, seed=s) for s in range(6)])
    picks = [pick for s in streams for pick in s.picks]
    assert len(picks) >= 60
    for word, p in picks:  # the recorded probability is the word's exact probability under the model
        assert p == pytest.approx(exact_word_probability(model.table, tok, word), rel=1e-4)
    ratios = [p / target for _, p in picks]
    within = sum(0.5 <= r <= 2 for r in ratios) / len(ratios)
    assert 0.5 <= statistics.median(ratios) <= 2 and within >= 0.8, (statistics.median(ratios), within)


def test_calibration_check_can_fail():
    """The same realised probabilities do not pass as calibrated against a target 10x away."""
    model, tok = known_word_model()
    streams = generate(model, tok, [" "] * 3, [SamplingParams(max_tokens=200, improbability=0.01, seed=s)
                                               for s in range(3)])
    ratios = [p / 0.1 for s in streams for _, p in s.picks]
    assert not 0.5 <= statistics.median(ratios) <= 2


# -----------------------------------------------------------------------------
# word models and special tokens

WORD_VOCAB = ["<unk>", "the", "cat", "sat", "on", "mat", ".", "\n", "<pad>", "a", "dog", "ran"]


def unk_loving_word_model() -> tuple[TableModel, WordTokenizer]:
    """Every row puts most of its mass on <unk> and <pad>: a sampler that ever writes them will here."""
    tok = WordTokenizer(WORD_VOCAB)
    g = torch.Generator().manual_seed(1)
    table = torch.randn(len(tok), len(tok), generator=g)
    table[:, 0] = 6.0
    table[:, 8] = 5.0
    return TableModel(table), tok


@pytest.mark.parametrize("params", [
    SamplingParams(max_tokens=80), SamplingParams(max_tokens=80, temperature=0),
    SamplingParams(max_tokens=80, temperature=3.0, top_k=3), SamplingParams(max_tokens=80, top_p=0.5),
    SamplingParams(max_tokens=80, improbability=1.0), SamplingParams(max_tokens=80, improbability=0.9),
    SamplingParams(max_tokens=80, improbability=0.01, tolerance=1e-9),
], ids=["T1", "greedy", "hot-top-k", "top-p", "p=1", "p=0.9", "p=0.01-nearest"])
def test_word_models_never_write_special_tokens(params):
    model, tok = unk_loving_word_model()
    assert [w for w in WORD_VOCAB if is_special(w)] == ["<unk>", "<pad>"]
    streams = generate(model, tok, ["the cat", "zebra", ""], [params] * 3)
    for stream in streams:
        assert not {0, 8} & set(stream.tokens)
        assert "<unk>" not in stream.text and "<pad>" not in stream.text
        assert "<unk>" not in tok.continue_text("zebra", stream.text)


def test_word_drive_honours_the_seed_within_the_default_band():
    model, tok = unk_loving_word_model()
    streams = [generate(model, tok, ["the"], SamplingParams(max_tokens=40, improbability=0.1, seed=s))[0]
               for s in range(6)]
    assert len({s.text for s in streams}) == 6
    assert generate(model, tok, ["the"], SamplingParams(max_tokens=40, improbability=0.1, seed=2))[0].text \
        == streams[2].text
    picks = [p for s in streams for _, p in s.picks]
    assert len(picks) == 6 * 40
    within = sum(0.05 <= p <= 0.2 for p in picks) / len(picks)
    assert within > 0.9 and 0.5 <= statistics.median(picks) / 0.1 <= 2


def test_char_model_special_policy_and_letters_only_start_words():
    """Char vocabularies have no special tokens; a driven word never starts with an apostrophe or digit."""
    model, tok = known_word_model()
    assert not any(is_special(c) for c in tok.vocab)
    stream = generate(model, tok, [" "], SamplingParams(max_tokens=100, improbability=0.05, seed=0))[0]
    assert all(w[0].isalpha() for w, _ in stream.picks)
    assert math.isclose(sum(stream.probabilities[:0]), 0.0)
