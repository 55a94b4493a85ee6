"""The voice-fidelity judge (a character 5-gram Kneser–Ney model) is a proper distribution and recognises the
text it was built from; the benchmark's hashed originality agrees with core.text.originality."""

from pathlib import Path

import numpy as np
import pytest

from bench.quality.fidelity import CharKneserNey, CharVocab, hashed_originality, holdout, window_hashes
from core.text import originality

CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"


@pytest.fixture(scope="module")
def texts():
    alice = (CORPORA / "alice" / "alice.txt").read_text()
    shakespeare = (CORPORA / "shakespeare" / "input.txt").read_text()
    return alice[:150_000], shakespeare[:150_000]


def test_probabilities_sum_to_one_over_the_vocabulary(texts):
    alice, shakespeare = texts
    vocab = CharVocab([alice, shakespeare])
    judge = CharKneserNey([alice[:60_000]], vocab)
    everything = np.arange(vocab.size)
    for context in ["Alic", "the ", "zqxj", "\n\n\n\n", "KING"]:  # seen, unseen and partly seen contexts
        ids = np.tile(vocab.encode(context), (vocab.size, 1))
        assert judge.prob(ids, everything).sum() == pytest.approx(1.0, abs=1e-9)
    assert judge.prob(np.tile(vocab.encode("Alic"), (1, 1)), vocab.encode("e"))[0] > 0.5


def test_prefers_the_text_it_was_built_from(texts):
    alice, shakespeare = texts
    alice_pieces, alice_real = holdout(alice, 10, 400)
    shakespeare_pieces, shakespeare_real = holdout(shakespeare, 10, 400)
    vocab = CharVocab([alice, shakespeare])
    alice_judge = CharKneserNey(alice_pieces, vocab)
    shakespeare_judge = CharKneserNey(shakespeare_pieces, vocab)
    for window in alice_real:  # held out: never counted by either judge
        assert alice_judge.nats_per_char(window) < shakespeare_judge.nats_per_char(window)
    for window in shakespeare_real:
        assert shakespeare_judge.nats_per_char(window) < alice_judge.nats_per_char(window)
    assert alice_judge.nats_per_char(alice[:5000]) < alice_judge.nats_per_char(shakespeare[:5000]) - 0.5


def test_held_out_windows_are_not_in_the_training_pieces(texts):
    alice, _ = texts
    pieces, windows = holdout(alice, 20, 400)
    assert len(windows) == 20 and all(len(w) == 400 for w in windows)
    assert sum(map(len, pieces)) + 20 * 400 == len(alice)
    assert not any(w[:200] in p for w in windows for p in pieces)


def test_hashed_originality_agrees_with_core_text(texts):
    alice, _ = texts
    corpus = alice[:50_000]
    hashes = window_hashes([corpus])
    rng = np.random.default_rng(0)
    for _ in range(5):
        start = int(rng.integers(0, 49_000))
        copied, invented = corpus[start:start + 200], "Alice said the Cheshire Mock Turtle quadrilled away, quietly."
        for text in (copied, invented, copied[:60] + invented + copied[100:160], "short"):
            assert hashed_originality(text, hashes) == originality(text, corpus)


def test_the_upload_is_a_book_neither_the_base_nor_the_base_judge_saw():
    from bench.quality.fidelity import UPLOAD_BOOK, check_unseen, upload_file

    check_unseen(upload_file(UPLOAD_BOOK), base_books=10)  # one of the base's held-out books
    with pytest.raises(SystemExit, match="not one of the base's held-out books"):
        check_unseen(upload_file("base/219-heart-of-darkness.txt"), base_books=10)  # the base trained on it
    with pytest.raises(SystemExit, match="the base judge is built from"):
        check_unseen(upload_file("base/2701-moby-dick.txt"), base_books=10)  # held out, but the judge reads it
