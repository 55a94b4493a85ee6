"""bench/quality/heldout_compare: the characters a checkpoint held out are found from its metadata, for the
paragraph split and for the older token-block split, so checkpoints of either kind are compared on text none saw."""

import pytest
import torch

from bench.quality.heldout_compare import MIN_PIECE, common_pieces, heldout_mask
from trainer.data import BLOCK_TOKENS, split_documents, text_split


@pytest.fixture(scope="module")
def alice():
    from bench.common import load_corpus

    return load_corpus("alice")


def test_the_token_block_split_is_marked_where_it_held_out(alice):
    mask = heldout_mask({"split": {"mode": "spread", "val_fraction": 0.1}}, alice)
    ids = torch.tensor([ord(c) for c in alice.text])  # a char model's ids stand for its characters
    _, val = split_documents([ids], 0.1, "spread", BLOCK_TOKENS["char"])
    assert "".join(chr(i) for i in val.tolist()) == "".join(c for c, m in zip(alice.text, mask.tolist()) if m)


def test_the_paragraph_split_is_marked_where_it_held_out(alice):
    mask = heldout_mask({"split": {"mode": "spread", "val_fraction": 0.1, "paragraphs": True}}, alice)
    split = text_split(alice, 0.1, "spread")
    assert int(mask.sum()) == sum(len(piece) for piece in split.val)  # every held-out paragraph found once
    for piece in common_pieces(mask, alice.text):
        assert piece in split.val_text


def test_common_pieces_are_the_runs_both_masks_share():
    text = "x" * 1000
    a, b = torch.zeros(1000, dtype=torch.bool), torch.zeros(1000, dtype=torch.bool)
    a[100:400], b[300:700] = True, True
    a[800:850], b[800:850] = True, True  # shared but shorter than MIN_PIECE
    assert MIN_PIECE > 50
    assert common_pieces(a & b, text) == [text[300:400]]
