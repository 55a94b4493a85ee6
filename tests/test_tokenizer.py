"""Tokenizers (trainer/tokenizer.py): exact round trips, the unknown-token policy, vocabulary order and caps,
and the word detokenizer's spacing."""

from __future__ import annotations

import json
import unicodedata

import pytest

from trainer.tokenizer import UNK, CharTokenizer, WordTokenizer, detokenize, tokenizer_from_dict

# -----------------------------------------------------------------------------
# characters

FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # man ZWJ woman ZWJ girl: 5 code points
ROUND_TRIP_TEXTS = [
    pytest.param("Alice was beginning to get very tired.\n", id="ascii"),
    pytest.param(f"party 🎉 family {FAMILY} flag 🇫🇷 skin 👍🏽\n", id="emoji"),
    pytest.param(
        "q\u0307 q\u0323\u0307 j\u0301\u0302 g\u0303 \u05e9\u05c1 \u0915\u093f",
        id="combining-marks-without-precomposed-forms",
    ),
    pytest.param("שלום עולם, مرحبا بالعالم!", id="rtl"),
    pytest.param("mixed: abc אבג 123 ١٢٣ \u200f\u200e end", id="bidi-controls"),
    pytest.param("東京 日本語テキスト\t\r\n", id="cjk-and-whitespace"),
]


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_char_round_trip_is_exact(text):
    assert unicodedata.is_normalized("NFC", text)  # so "exact" means the very same string
    tok = CharTokenizer.build(text)
    ids = tok.encode(text)
    assert len(ids) == len(text)  # one id per code point: nothing merged or dropped
    assert tok.decode(ids) == text
    assert tok.unknown(text) == []


def test_char_tokenizer_normalises_to_nfc_both_at_build_and_encode_time():
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    tok = CharTokenizer.build(decomposed)
    assert "\u00e9" in tok.vocab and "\u0301" not in tok.vocab
    assert tok.encode(composed) == tok.encode(decomposed)
    assert tok.decode(tok.encode(decomposed)) == unicodedata.normalize("NFC", decomposed) == composed


def test_char_vocab_is_sorted_and_unique():
    tok = CharTokenizer.build("banana bandana")
    assert tok.vocab == sorted(set("banana bandana"))
    assert len(tok) == len(set("banana bandana"))
    assert [tok.index[ch] for ch in tok.vocab] == list(range(len(tok)))


def test_char_unknown_characters_are_dropped_and_reported():
    tok = CharTokenizer.build("hello world")
    prompt = "hello, wörld 🎉!"
    ids = tok.encode(prompt)
    assert tok.decode(ids) == "hello wrld "  # ",", "ö", "🎉" and "!" dropped, order kept
    assert tok.unknown(prompt) == sorted({",", "ö", "🎉", "!"})
    assert tok.unknown("hello") == []
    assert tok.encode("💥💥") == []  # nothing known: empty, not an error
    assert tok.unknown_policy == "drop"


def test_char_continue_text_and_sentence_ends():
    tok = CharTokenizer.build("Hi. Yes! No? ok\n")
    assert tok.continue_text("Hi", " there") == "Hi there"
    assert [tok.vocab[i] for i in range(len(tok)) if tok.ends_sentence(i)] == sorted([".", "!", "?"])
    assert tok.default_prime() == "\n"
    assert CharTokenizer.build("abc").default_prime() == "a"


# -----------------------------------------------------------------------------
# words


def test_word_tokenizer_splits_punctuation_into_tokens_and_keeps_words_whole():
    tok = WordTokenizer.build("x")
    assert tok.tokenize('Hello, world. "Yes," he said.') == [
        "Hello",
        ",",
        "world",
        ".",
        '"',
        "Yes",
        ",",
        '"',
        "he",
        "said",
        ".",
    ]
    assert tok.tokenize("don't well-known Alice’s (a) 3.5\nnext") == [
        "don't",
        "well-known",
        "Alice’s",
        "(",
        "a",
        ")",
        "3",
        ".",
        "5",
        "\n",
        "next",
    ]


def test_word_vocab_is_frequency_ordered_with_alphabetical_ties_and_unk_first():
    text = "b a c a b a d d d d"
    tok = WordTokenizer.build(text)
    # counts: d 4, a 3, b 2, c 1
    assert tok.vocab == [UNK, "d", "a", "b", "c"]
    tied = WordTokenizer.build("zeta alpha mid alpha zeta mid")
    assert tied.vocab == [UNK, "alpha", "mid", "zeta"]


def test_word_vocab_cap_maps_the_rest_to_unk():
    text = "the cat sat on the mat the cat ran"  # the 3, cat 2, then mat ran sat on (1 each)
    tok = WordTokenizer.build(text, max_vocab=3)
    assert tok.vocab == [UNK, "the", "cat"]
    assert len(tok) == 3
    assert tok.encode("the cat sat") == [1, 2, 0]
    assert tok.decode(tok.encode("the cat sat")) == f"the cat {UNK}"
    assert tok.unknown("the dog sat") == ["dog", "sat"]
    assert tok.unknown_policy == "unk"


def test_word_unk_in_the_text_is_not_duplicated():
    tok = WordTokenizer.build("a <unk> a b", max_vocab=10)
    assert tok.vocab.count(UNK) == 1 and tok.vocab[0] == UNK


def test_word_vocabulary_must_start_with_unk():
    with pytest.raises(ValueError, match="<unk>"):
        WordTokenizer(["hello", UNK])
    with pytest.raises(ValueError, match="<unk>"):
        WordTokenizer([])


def test_lowercase_is_applied_identically_at_build_and_encode_time():
    tok = WordTokenizer.build("The cat. THE CAT. the Cat.", lowercase=True)
    assert all(w == w.lower() for w in tok.vocab)
    assert tok.vocab == [UNK, ".", "cat", "the"]  # 3 each once case is folded; ties alphabetical
    assert tok.encode("ThE CaT") == tok.encode("the cat") == [tok.index["the"], tok.index["cat"]]
    assert tok.unknown("THE CAT") == []
    cased = WordTokenizer.build("The cat. THE CAT. the Cat.", lowercase=False)
    assert cased.unknown("tHe") == ["tHe"]
    assert cased.encode("tHe") == [0]


def test_word_unknown_words_map_to_unk_never_crash():
    tok = WordTokenizer.build("hello there")
    assert tok.encode("hello stranger 🎉") == [tok.index["hello"], 0, 0]
    assert tok.unknown("hello stranger 🎉") == sorted(["stranger", "🎉"])


DETOKENIZE_CASES = [
    pytest.param('Hello, world. "Yes," he said.', id="brief-example"),
    pytest.param('"A," she said, "b." Then "c"!', id="alternating-straight-quotes"),
    pytest.param("“Well!” thought Alice to herself, “after such a fall as this, I shall", id="curly-quotes"),
    pytest.param("He left (quietly) today [twice] {once}.", id="brackets"),
    pytest.param("I don't think it's Alice’s, we'll see; I'm sure.", id="contractions"),
    pytest.param("Wait... what? Really… yes!", id="ellipsis"),
    pytest.param("Line one.\nLine two!\n\nLine four: done", id="newlines"),
    pytest.param('She said "no\n"Yes," he said.', id="newline-resets-quote-state"),
    pytest.param("It costs $5, or 50% off #1.", id="currency-percent-hash"),
    pytest.param("a well-known - rather odd - thing", id="hyphens-and-dashes"),
]


@pytest.mark.parametrize("text", DETOKENIZE_CASES)
def test_detokenize_restores_normal_spacing_exactly(text):
    tok = WordTokenizer.build(text)
    assert tok.unknown(text) == []
    assert tok.decode(tok.encode(text)) == text
    assert detokenize(tok.tokenize(text)) == text


def test_detokenize_brief_example_from_tokens():
    tokens = ["Hello", ",", "world", ".", '"', "Yes", ",", '"', "he", "said", "."]
    assert detokenize(tokens) == 'Hello, world. "Yes," he said.'
    assert detokenize([]) == ""
    assert detokenize(["\n", "a"]) == "\na"
    assert detokenize(["a", "\n"]) == "a\n"


def test_word_continue_text_spacing():
    tok = WordTokenizer.build("x")
    assert tok.continue_text("Hello", "world") == "Hello world"
    assert tok.continue_text("Hello ", "world") == "Hello world"
    assert tok.continue_text("Hello", ", world") == "Hello, world"
    assert tok.continue_text("Hello\n", "world") == "Hello\nworld"
    assert tok.continue_text("", "world") == "world"


@pytest.mark.parametrize("prompt, completion, joined", [
    ("this movie was", "so bad", "this movie was so bad"),  # the bug report: was "this movie wasso bad"
    ("this movie was ", "so bad", "this movie was so bad"),
    ("I don", "'t know", "I don't know"),
    ("He said (", "yes", "He said (yes"),
    ('He said "', "hi", 'He said "hi'),  # an opening quote keeps its word
    ('He said "hi"', "and left", 'He said "hi" and left'),  # after a closing quote: a space
    ('He said "hi', '" and left', 'He said "hi" and left'),  # the completion closes the open quote
    ("The end.", "Then", "The end. Then"),
    ("it costs $", "5", "it costs $5"),
])
def test_word_continue_text_spaces_like_the_detokenizer(prompt, completion, joined):
    assert WordTokenizer.build("x").continue_text(prompt, completion) == joined


def test_word_prompt_with_unknown_words_is_shown_as_typed_and_fed_as_unk():
    tok = WordTokenizer(["<unk>", "this", "movie", "was", "so", "bad"])
    assert tok.encode("this flick was") == [1, 0, 3]  # the model reads <unk> for the unknown word
    assert tok.unknown("this flick was") == ["flick"]
    assert tok.continue_text("this flick was", tok.decode([4, 5])) == "this flick was so bad"  # shown as typed


def test_word_sentence_ends_and_default_prime():
    tok = WordTokenizer.build("One. Two! Three? Four\nfive …")
    ends = {tok.vocab[i] for i in range(len(tok)) if tok.ends_sentence(i)}
    assert ends == {".", "!", "?", "…"}
    assert tok.default_prime() == "\n"
    assert WordTokenizer.build("no newline here.").default_prime() == "."


def test_word_tokenizer_on_real_text(alice_text):
    tok = WordTokenizer.build(alice_text, max_vocab=500)
    assert len(tok) == 500
    ids = tok.encode(alice_text)
    assert max(ids) < 500 and 0 in ids  # the cap left rare words as <unk>
    # the most frequent tokens of English prose come first
    assert set(tok.vocab[1:4]) <= {",", "the", ".", "“", "”", "and", "\n"}
    # a sentence made of known words survives the trip exactly
    sentence = "“and what is the use of a book,” thought Alice"
    assert tok.unknown(sentence) == []
    assert tok.decode(tok.encode(sentence)) == sentence


# -----------------------------------------------------------------------------
# serialisation


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: CharTokenizer.build("héllo 🎉 שלום\n"), id="char"),
        pytest.param(
            lambda: WordTokenizer.build("The cat sat. The dog ran!", lowercase=True), id="word-lower"
        ),
        pytest.param(lambda: WordTokenizer.build("The cat sat. The dog ran!", max_vocab=4), id="word-capped"),
    ],
)
def test_to_dict_from_dict_round_trip_through_json(make):
    tok = make()
    data = json.loads(json.dumps(tok.to_dict()))
    back = tokenizer_from_dict(data)
    assert type(back) is type(tok)
    assert back.vocab == tok.vocab
    assert back.to_dict() == tok.to_dict()
    probe = "The CAT sat 🎉 héllo!"
    assert back.encode(probe) == tok.encode(probe)
    assert back.unknown(probe) == tok.unknown(probe)
    if isinstance(tok, WordTokenizer):
        assert back.lowercase == tok.lowercase


def test_from_dict_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown tokenizer kind 'bpe'"):
        tokenizer_from_dict({"kind": "bpe", "vocab": []})
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        tokenizer_from_dict({})
