"""The held-out split on real text with planted repeats: no 50-character window of held-out text is in the
training text (checked with plain Python sets, independently of the split's torch hashing), repeats are
dropped before splitting, and uploads with too little distinct text are refused with their numbers."""

from __future__ import annotations

import random

import pytest

from core.dedup import WINDOW, check_distinct, dedupe, measure
from core.text import CorpusError
from trainer.heldout import shared_windows, split_text


@pytest.fixture(scope="module")
def alice_book(corpora_dir) -> str:
    return (corpora_dir / "alice" / "alice.txt").read_text(encoding="utf-8")[:60_000]


def _windows(text: str) -> set[str]:
    return {text[i:i + WINDOW] for i in range(len(text) - WINDOW + 1)}


def _planted(alice_text: str, seed: int) -> str:
    """Alice with paragraphs pasted again elsewhere, a paragraph repeated 30 times, near-duplicates (one word
    changed) and a long line repeated inside other paragraphs."""
    rng = random.Random(seed)
    paras = [p for p in alice_text.split("\n\n") if p.strip()]
    out = list(paras)
    for _ in range(40):
        out.insert(rng.randrange(len(out)), rng.choice(paras))  # exact repeats anywhere
    for _ in range(15):
        p = rng.choice(paras)
        out.insert(rng.randrange(len(out)), p.replace(" the ", " a ", 1))  # near-duplicates
    at = rng.randrange(len(out))
    out[at:at] = [paras[3]] * 30  # one paragraph 30 times over
    line = "And the moral of that is--Be what you would seem to be, said the Duchess"
    for _ in range(10):
        i = rng.randrange(len(out))
        out[i] = out[i] + "\n" + line
    return "\n\n".join(out)


@pytest.mark.parametrize("seed,mode,documents", [(1, "spread", 1), (2, "spread", 3), (3, "tail", 1),
                                                 (4, "spread", 12)])
def test_no_held_out_window_is_in_the_training_text(alice_book, seed, mode, documents):
    text = _planted(alice_book, seed)
    step = -(-len(text) // documents)
    docs = [text[i:i + step] for i in range(0, len(text), step)]
    split = split_text(docs, 0.1, mode, block_chars=2048)
    train, val = split.train_text, split.val_text
    assert len(val) > 0.04 * len(alice_book) and len(train) > 0.7 * len(alice_book)  # still a real split
    assert not _windows(val) & _windows(train)  # the property, by brute force
    assert split.duplicate_chars > 30 * 100  # the pasted repeats went first
    held = [p for p in alice_book.split("\n\n") if len(p) > 200]
    assert sum(p in val for p in held) > 3  # whole paragraphs are held out


def test_without_the_overlap_filter_the_planted_repeats_would_leak(alice_book):
    """The near-duplicates do land on both sides: the filter, not luck, keeps the window property."""
    splits = [split_text([_planted(alice_book, seed)], 0.1, "spread", block_chars=2048) for seed in range(1, 7)]
    assert sum(s.overlap_chars > 0 for s in splits) >= 2
    assert all(len(shared_windows(s.train_text, s.val_text)) == 0 for s in splits)


def test_clean_text_keeps_almost_everything(alice_text):
    split = split_text([alice_text], 0.1)
    kept = len(split.train_text) + len(split.val_text)
    assert kept > 0.98 * len(alice_text) and 0.07 < len(split.val_text) / len(alice_text) < 0.13


def test_a_paragraph_repeated_a_thousand_times_is_refused_with_its_numbers(alice_text):
    paragraph = alice_text[2000:2600]
    text = (paragraph + "\n\n") * 1000
    with pytest.raises(CorpusError) as refused:
        check_distinct(text, 5000)
    assert refused.value.code == "repetitive"
    assert f"{len(paragraph.strip().encode()) / 1000:.1f} KB of distinct text" in refused.value.message
    assert f"of {len(text.encode()) / 1000:.1f} KB" in refused.value.message and "5.0 KB" in refused.value.message
    assert measure(dedupe(text)).distinct_bytes == measure(text).distinct_bytes  # dropping repeats twice: no change


@pytest.mark.parametrize("text", [
    "a" * 70_000,  # one line of a
    ("a" * 70 + "\n") * 1000,  # one line, repeated
    "".join(f"The cat sat on the mat, said line number {i}.\n" for i in range(2000)),  # tiny variation: a counter
])
def test_degenerate_uploads_are_refused_with_their_numbers(text):
    with pytest.raises(CorpusError) as refused:
        check_distinct(text, 5000)
    assert refused.value.code == "repetitive" and any(c.isdigit() for c in refused.value.message)


def test_real_small_uploads_pass(alice_text, trump_text):
    for text in (alice_text[:6000], alice_text[6000:14000], trump_text[:8000]):
        found = check_distinct(text, 5000)
        assert found.distinct_bytes > 5000 and found.compressed_ratio > 0.25


def test_a_checkpoint_split_is_rebuilt_the_way_its_run_made_it(alice_text):
    """Benchmarks and `improbable evaluate` rebuild a run's split from its checkpoint metadata: the paragraph split
    for runs that record it (the ids training fed), the token-block split or the tail for older checkpoints."""
    import torch

    from trainer.data import BLOCK_TOKENS, encode_split, rebuild_split, split_corpus, split_documents
    from trainer.tokenizer import CharTokenizer
    from trainer.train import TrainConfig

    tokenizer, config = CharTokenizer.build(alice_text), TrainConfig()
    split = split_corpus(config, alice_text)
    train_ids, val_ids = encode_split(tokenizer, split)
    recorded = {"mode": "spread", "val_fraction": 0.1}
    rebuilt = rebuild_split({"split": {**recorded, "paragraphs": True}}, tokenizer, alice_text)
    assert torch.equal(rebuilt[0], train_ids) and torch.equal(rebuilt[1], val_ids)
    assert rebuilt[2] == len(split.val_text) == len(val_ids)
    ids = torch.tensor(tokenizer.encode(alice_text))
    older = rebuild_split({"split": recorded}, tokenizer, alice_text)
    blocks = split_documents([ids], 0.1, "spread", BLOCK_TOKENS["char"])
    assert torch.equal(older[1], blocks[1]) and not torch.equal(older[1], val_ids)
    tail = rebuild_split({"train_config": {"val_fraction": 0.1}}, tokenizer, alice_text)[1]
    assert torch.equal(tail, ids[int(len(ids) * 0.9):])
