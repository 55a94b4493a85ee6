"""Blended voices: the spec parser (core/blend.py) and the mixture model (trainer/blend.py).

The mixture is checked against its definition p = Σ w_i p_i over the union of the vocabularies, then
run through the unchanged sampler (trainer/sample.py) with every option, the improbability drive included."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from core.blend import BlendSpecError, format_blend, is_blend_spec, parse_blend
from core.contracts import SamplingParams
from trainer.blend import BlendedModel, blend, stand_in
from trainer.model import ModelConfig, build_model, cat_states, select_state
from trainer.sample import BatchSampler, generate
from trainer.tokenizer import CharTokenizer, WordTokenizer

pytestmark = pytest.mark.usefixtures("single_thread")
REPO = Path(__file__).resolve().parents[1]

# Two voices with overlapping alphabets: only A has "z", "!" and "\n", only B has "q", ":" and "É".
VOCAB_A = list("\n !',.abcdehilmnorstz")
VOCAB_B = list(" ',.:ABCDEabcdehilmnoqrstÉ")


# --- the spec parser ---------------------------------------------------------------------------------------

def weights(spec: str) -> list[tuple[str, float]]:
    return [(v.persona, round(v.weight, 9)) for v in parse_blend(spec)]


def test_parse_blend_weights_given_missing_and_none():
    assert weights("trump:0.7+shakespeare") == [("trump", 0.7), ("shakespeare", 0.3)]
    assert weights("trump+shakespeare") == [("trump", 0.5), ("shakespeare", 0.5)]
    assert weights("trump:2+shakespeare:1") == [("trump", round(2 / 3, 9)), ("shakespeare", round(1 / 3, 9))]
    assert weights(" Trump : 0.25 + shakespeare ") == [("trump", 0.25), ("shakespeare", 0.75)]
    assert weights("a:1e-1+b") == [("a", 0.1), ("b", 0.9)]
    assert math.isclose(sum(v.weight for v in parse_blend("a:0.2+b+c", max_voices=3)), 1.0)
    assert [v.weight for v in parse_blend("a:0.2+b+c", max_voices=3)] == pytest.approx([0.2, 0.4, 0.4])


@pytest.mark.parametrize(("spec", "message"), [
    ("trump", "not a blend"),
    ("trump+", "empty part"),
    ("+trump", "empty part"),
    ("trump+shakespeare+alice", "at most 2"),
    ("trump+trump:0.5", "appears twice"),
    ("Tr ump+alice", "not a persona name"),
    ("trump:x+alice", "must be a number"),
    ("trump:nan+alice", "positive number"),
    ("trump:inf+alice:1", "positive number"),
    ("trump:-1+alice", "positive number"),
    ("trump:0+alice", "positive number"),
    ("trump:1+alice", "leaving nothing for alice"),
    ("trump:1.5+alice", "leaving nothing"),
    ("trump:1000+alice:1", "at least 0.01"),
    ("a" * 100 + "+" + "b" * 101, "too long"),
])
def test_parse_blend_refuses_malformed_specs(spec, message):
    with pytest.raises(BlendSpecError, match=message):
        parse_blend(spec)


def test_blend_spec_helpers():
    assert is_blend_spec("trump+shakespeare") and not is_blend_spec("trump")
    assert format_blend(parse_blend("trump:0.7+shakespeare")) == "trump:0.7+shakespeare:0.3"
    assert issubclass(BlendSpecError, ValueError)


# --- stand-ins for characters a voice lacks -------------------------------------------------------------------

def test_stand_in_prefers_the_closest_character_then_a_space():
    shakespeare = {ch: i for i, ch in enumerate("\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")}
    assert stand_in("a", shakespeare) == "a"
    assert stand_in("é", shakespeare) == "e"
    assert stand_in("É", shakespeare) == "E"
    assert stand_in("’", shakespeare) == "'"
    assert stand_in("“", shakespeare) == "'"  # no double quote in tiny-shakespeare: the single one
    assert stand_in("—", shakespeare) == "-"
    assert stand_in("…", shakespeare) == "."
    assert stand_in("7", shakespeare) == " "
    assert stand_in("@", shakespeare) == " "
    assert stand_in("x", {"\n": 0, "y": 1}) == "\n"
    assert stand_in("x", {"y": 0}) == "y"
    assert stand_in("Q", {"q": 0, " ": 1}) == "q"


# --- the mixture -------------------------------------------------------------------------------------------

def tiny_voice(vocab: list[str], cell: str, seed: int) -> tuple[torch.nn.Module, CharTokenizer]:
    torch.manual_seed(seed)
    config = ModelConfig(family="char-rnn", vocab_size=len(vocab), cell=cell, n_layers=1, n_embd=8, n_hidden=24)
    model = build_model(config).eval()
    with torch.no_grad():  # sharper than a fresh init's near-uniform output, so the voices differ clearly
        model.head.proj.weight.mul_(6.0)
    return model, CharTokenizer(vocab)


@pytest.fixture(scope="module")
def voices():
    return tiny_voice(VOCAB_A, "lstm", 1), tiny_voice(VOCAB_B, "gru", 2)


def make_blend(voices, w_a: float, w_b: float) -> BlendedModel:
    (model_a, tok_a), (model_b, tok_b) = voices
    return BlendedModel([model_a, model_b], [tok_a, tok_b], [w_a, w_b], ["a", "b"])


def voice_distribution(model, tokenizer, text: str) -> dict[str, float]:
    """One voice's next-character distribution after `text` (all of whose characters it knows)."""
    ids = torch.tensor([tokenizer.encode(text)])
    with torch.no_grad():
        hidden, _ = model(ids)
        p = torch.softmax(model.head.logits(hidden[:, -1]).float(), -1)[0]
    return dict(zip(tokenizer.vocab, p.tolist()))


def blend_distribution(model: BlendedModel, text: str) -> dict[str, float]:
    ids = torch.tensor(model.tokenizer.encode(text))
    with torch.no_grad():
        state = model.init_state(1)
        if len(ids) > 1:
            _, state = model(ids[None, :-1], state)
        log_p, _ = model.step(ids[-1:], state)
    return dict(zip(model.tokenizer.vocab, log_p[0].exp().tolist()))


def test_union_vocabulary_and_state_layout(voices):
    blended = make_blend(voices, 0.5, 0.5)
    assert blended.tokenizer.vocab == sorted(set(VOCAB_A) | set(VOCAB_B))
    assert blended.config.family == "char-rnn" and blended.config.vocab_size == len(blended.tokenizer)
    state = blended.init_state(3)
    assert len(state) == 3  # the LSTM's (h, c) then the GRU's (h,)
    assert all(s.size(0) == 3 for s in state)
    assert len(select_state(cat_states([state, blended.init_state(2)]), [0, 4])[0]) == 2


@pytest.mark.parametrize("text", ["the cat", "hello, dear", "t"])
def test_mixture_is_the_weighted_sum_over_the_union_and_sums_to_one(voices, text):
    (model_a, tok_a), (model_b, tok_b) = voices
    p_a, p_b = voice_distribution(model_a, tok_a, text), voice_distribution(model_b, tok_b, text)
    for w in (0.5, 0.7, 0.1):
        mixed = blend_distribution(make_blend(voices, w, 1 - w), text)
        assert sum(mixed.values()) == pytest.approx(1.0, abs=1e-5)
        for ch, p in mixed.items():
            assert p == pytest.approx(w * p_a.get(ch, 0.0) + (1 - w) * p_b.get(ch, 0.0), abs=1e-6)
        assert mixed["z"] > 0 and mixed["q"] > 0  # each voice's own characters are reachable


def test_a_voice_with_all_the_weight_is_that_voice(voices):
    (model_a, tok_a), (model_b, tok_b) = voices
    for (w_a, w_b), (model, tok) in (((1.0, 0.0), voices[0]), ((0.0, 1.0), voices[1])):
        mixed = blend_distribution(make_blend(voices, w_a, w_b), "the bird")
        alone = voice_distribution(model, tok, "the bird")
        for ch, p in mixed.items():
            assert p == pytest.approx(alone.get(ch, 0.0), abs=1e-6)
        assert all(mixed[ch] == 0.0 for ch in mixed if ch not in tok.index)


def test_weights_are_normalised_and_checked(voices):
    assert make_blend(voices, 3, 1).weights == [0.75, 0.25]
    for bad in ((0, 0), (-1, 2), (math.nan, 1), (math.inf, 1)):
        with pytest.raises(ValueError, match="weights"):
            make_blend(voices, *bad)
    (model_a, tok_a), _ = voices
    with pytest.raises(ValueError, match="at least two"):
        BlendedModel([model_a], [tok_a], [1.0])
    words = WordTokenizer(["<unk>"] + [f"w{i}" for i in range(len(VOCAB_B) - 1)])
    with pytest.raises(ValueError, match="not a character model"):
        BlendedModel([model_a, voices[1][0]], [tok_a, words], [0.5, 0.5])


def test_a_character_one_voice_lacks_is_read_as_its_stand_in(voices):
    """After "q" (B only), voice A must be in the state it reaches after its stand-in " "."""
    blended = make_blend(voices, 1.0, 0.0)
    assert blend_distribution(blended, "the q") == pytest.approx(blend_distribution(blended, "the  "), abs=1e-6)
    assert blend_distribution(blended, "the q") != pytest.approx(blend_distribution(blended, "the a"), abs=1e-6)


def test_prefill_and_stepping_agree(voices):
    blended = make_blend(voices, 0.6, 0.4)
    ids = torch.tensor([blended.tokenizer.encode("dear cat, hello")])
    with torch.no_grad():
        fused, fused_state = blended(ids)
        state = blended.init_state(1)
        for t in range(ids.size(1)):
            log_p, state = blended.step(ids[:, t], state)
            assert torch.allclose(log_p, fused[:, t], atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(state, fused_state))
    loss, _ = blended.loss(ids[:, :-1], ids[:, 1:])
    assert loss.item() == pytest.approx(-fused[0, :-1].gather(1, ids[0, 1:, None]).mean().item(), rel=1e-5)


# --- the sampler on a blend -------------------------------------------------------------------------------

ALL_OPTIONS = [
    SamplingParams(max_tokens=40, seed=1),
    SamplingParams(max_tokens=40, temperature=0, seed=2),
    SamplingParams(max_tokens=40, temperature=0.7, top_k=5, seed=3),
    SamplingParams(max_tokens=40, top_p=0.8, repetition_penalty=1.3, seed=4),
    SamplingParams(max_tokens=40, improbability=0.05, seed=5),
    SamplingParams(max_tokens=40, improbability=0.3, tolerance=0.5, stop=("!",), seed=6),
    SamplingParams(max_tokens=40, stop_at_sentence_end=True, seed=7),
]


def test_the_sampler_runs_unchanged_on_a_blend_with_every_option(voices):
    blended = make_blend(voices, 0.5, 0.5)
    prompts = ["the cat", "Ésta", "", "dear lion: "] + ["hello"] * (len(ALL_OPTIONS) - 4)
    streams = generate(blended, blended.tokenizer, prompts, ALL_OPTIONS)
    for stream in streams:
        assert stream.done and stream.text
        assert set(stream.text) <= set(blended.tokenizer.vocab)
        assert all(0 < p <= 1 for p in stream.probabilities)
    driven = streams[4]
    assert driven.picks, "the word-level improbability drive chose no word on the blend"
    text_words = set("".join(ch if ch.isalpha() else " " for ch in driven.text).split())
    assert {w for w, _ in driven.picks} & text_words
    # Same seed ⇒ same text, alone or in another batch.
    again = generate(blended, blended.tokenizer, [prompts[4]], ALL_OPTIONS[4])[0]
    assert again.text == driven.text and [w for w, _ in again.picks] == [w for w, _ in driven.picks]
    # (the probabilities agree to float rounding: a batch of one multiplies in another order)
    assert [p for _, p in again.picks] == pytest.approx([p for _, p in driven.picks], rel=1e-4)
    alone = generate(blended, blended.tokenizer, [prompts[0]], ALL_OPTIONS[0])[0]
    assert alone.text == streams[0].text


def test_batch_sampler_streams_join_and_leave_a_blend(voices):
    blended = make_blend(voices, 0.3, 0.7)
    sampler = BatchSampler(blended, blended.tokenizer)
    first = sampler.add("the ", SamplingParams(max_tokens=5, seed=11))
    for _ in range(2):
        sampler.step()
    second = sampler.add("cat", SamplingParams(max_tokens=30, seed=12, improbability=0.1))
    sampler.run()
    assert len(first.tokens) == 5 and len(second.tokens) == 30
    solo = generate(blended, blended.tokenizer, ["cat"], SamplingParams(max_tokens=30, seed=12, improbability=0.1))[0]
    assert solo.text == second.text


@pytest.mark.slow
def test_the_bundled_trump_and_shakespeare_blend():
    from trainer.checkpoint import load

    trump = load(REPO / "db" / "bundled" / "trump.safetensors")
    shakespeare = load(REPO / "db" / "bundled" / "shakespeare.safetensors")
    model, tokenizer = blend([trump, shakespeare], [0.7, 0.3], ["trump", "shakespeare"])
    assert set(tokenizer.vocab) == set(trump.tokenizer.vocab) | set(shakespeare.tokenizer.vocab)
    params = SamplingParams(max_tokens=80, improbability=0.02, seed=1)
    stream = generate(model, tokenizer, ["The king"], params)[0]
    assert len(stream.text) == 80 and stream.picks
    assert generate(model, tokenizer, ["The king"], params)[0].text == stream.text


def test_voices_served_in_bfloat16_blend_in_float32(voices):
    """The worker may serve models in bf16 (trainer.checkpoint.load(dtype=...)): the mixture stays float32."""
    import copy

    (model_a, tok_a), (model_b, tok_b) = voices
    halves = [copy.deepcopy(m).to(torch.bfloat16) for m in (model_a, model_b)]
    blended = BlendedModel(halves, [tok_a, tok_b], [0.5, 0.5])
    log_p, state = blended.step(torch.tensor([blended.tokenizer.index["t"]]), blended.init_state(1))
    assert log_p.dtype == torch.float32 and state[0].dtype == torch.bfloat16
    assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-5)
    stream = generate(blended, blended.tokenizer, ["the"], SamplingParams(max_tokens=20, improbability=0.1, seed=1))[0]
    assert len(stream.tokens) == 20
