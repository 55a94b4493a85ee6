"""Multi-document corpora, the spread validation split, fine-tuning from a base model (vocabulary
extension included) and the quality gate. Models are tiny; the base here is trained in the test."""

from __future__ import annotations

import math

import pytest
import torch

from core.checkpoints import read_meta
from core.text import DOCUMENT_SEPARATOR, CorpusError
from trainer import checkpoint as ckpt
from trainer.corpus import load_corpus
from trainer.data import split_documents
from trainer.evaluate import unigram_loss
from trainer.finetune import extend_vocabulary, load_base_weights
from trainer.pretrained import resolve_init
from trainer.train import TrainConfig, train

from .conftest import CORPORA_DIR as CORPORA

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = {"n_layers": 1, "n_embd": 16, "n_hidden": 96, "batch_size": 16, "seq_len": 50, "warmup_steps": 5,
        "lr": 0.01, "min_lr": 0.002}


def write_documents(folder, texts):
    folder.mkdir()
    for i, text in enumerate(texts):
        (folder / f"{i:02d}-doc.txt").write_text(text, encoding="utf-8")
    (folder / "SOURCE.md").write_text("not a document")
    return folder


def test_a_folder_of_texts_is_one_corpus_with_its_documents_kept_apart(tmp_path):
    texts = [f"Document {i}. " + "word " * (60 + i) for i in range(3)]
    corpus = load_corpus(write_documents(tmp_path / "books", texts))
    assert corpus.documents == tuple(len(t.strip("\n")) for t in texts)
    assert corpus.document_texts() == [t.strip("\n") for t in texts]
    assert corpus.text == DOCUMENT_SEPARATOR.join(t.strip("\n") for t in texts)
    again = load_corpus(tmp_path / "books")
    assert again.sha256 == corpus.sha256  # content-addressed: same files, same corpus
    (tmp_path / "books" / "01-doc.txt").write_text("changed " * 50)
    assert load_corpus(tmp_path / "books").sha256 != corpus.sha256


def test_a_bad_document_is_named_in_the_error(tmp_path):
    folder = write_documents(tmp_path / "books", ["fine text " * 40, "x"])
    with pytest.raises(CorpusError, match="01-doc.txt"):
        load_corpus(folder)


def test_the_base_corpus_loads_as_42_books():
    corpus = load_corpus(CORPORA / "base")
    assert len(corpus.documents) == 42
    assert corpus.n_chars > 20_000_000


def test_spread_split_holds_out_blocks_from_all_over_a_single_text():
    ids = torch.arange(100_000)
    train_ids, val_ids = split_documents([ids], 0.1, "spread", block_tokens=1000)
    assert len(val_ids) == 10_000 and len(train_ids) == 90_000
    assert not set(val_ids.tolist()) & set(train_ids.tolist())  # nothing held out is trained on
    # ten separate held-out blocks spread through the text, not the last tenth
    assert val_ids.min() < 10_000 and val_ids.max() > 90_000
    assert int((val_ids[1:] != val_ids[:-1] + 1).sum()) == 9


def test_tail_split_is_nanogpts_last_tenth():
    train_ids, val_ids = split_documents([torch.arange(1000)], 0.1, "tail")
    assert val_ids.tolist() == list(range(900, 1000)) and len(train_ids) == 900


def test_many_documents_hold_out_whole_documents():
    docs = [torch.full((100 + i,), i) for i in range(30)]
    sep = torch.tensor([-1])
    train_ids, val_ids = split_documents(docs, 0.1, "spread", block_tokens=10, separator=sep)
    held = set(val_ids.tolist()) - {-1}
    assert held == {5, 15, 25}  # every tenth document, whole
    assert not held & set(train_ids.tolist())
    assert int((train_ids == -1).sum()) == 26  # 27 training documents joined by separators


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="unknown split"):
        split_documents([torch.arange(10)], 0.1, "random")


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A tiny char model pretrained on three public-domain books (never on Alice)."""
    base = CORPORA / "base"
    text = "\n\n\n".join((base / name).read_text()[20_000:120_000] for name in
                         ("1342-pride-and-prejudice.txt", "120-treasure-island.txt", "84-frankenstein.txt"))
    out = tmp_path_factory.mktemp("base")
    train(TrainConfig(corpus="books", out_dir=str(out), max_steps=400, eval_interval=200, **TINY), text)
    return out / "best.safetensors"


def test_fine_tuning_from_a_base_beats_training_from_scratch(tmp_path, tiny_base, alice_text):
    small = alice_text[:40_000]  # a small upload: little to learn from on its own
    steps = {"max_steps": 60, "eval_interval": 60, "val_fraction": 0.2}
    scratch = train(TrainConfig(corpus="alice", out_dir=str(tmp_path / "scratch"), **TINY, **steps), small)
    tuned = train(TrainConfig(corpus="alice", out_dir=str(tmp_path / "tuned"), init=str(tiny_base),
                              **{**TINY, **steps, "lr": 0.003}), small)
    assert tuned.best_val_loss < 0.9 * scratch.best_val_loss, (tuned.best_val_loss, scratch.best_val_loss)
    meta = read_meta(tmp_path / "tuned" / "best.safetensors")
    assert meta["init"]["checkpoint"] == tiny_base.name


def test_characters_the_base_never_saw_extend_its_vocabulary(tmp_path, tiny_base):
    base = ckpt.load(tiny_base)
    text = "Ünïcödé snowmen ☃ and ☂ umbrellas. " * 40
    tokenizer = extend_vocabulary(base.tokenizer, text)
    assert tokenizer.vocab[:len(base.tokenizer)] == base.tokenizer.vocab  # the base keeps its rows
    assert {"☃", "☂"} <= set(tokenizer.vocab[len(base.tokenizer):])
    model = type(base.model)(type(base.model.config)(**{**base.model.config.to_dict(), "vocab_size": len(tokenizer)}))
    load_base_weights(model, base.model)
    model.eval()
    base.model.eval()
    ids = torch.tensor([base.tokenizer.encode("It is a truth ")])
    with torch.no_grad():
        old = torch.log_softmax(base.model.head.logits(base.model(ids)[0]), -1)
        new = torch.log_softmax(model.head.logits(model(ids)[0]), -1)
    n_old = len(base.tokenizer)
    # on the base's own characters the extended model predicts like the base (new ones are rare, not noise)
    assert torch.allclose(new[..., :n_old].exp().sum(-1), torch.ones(1), atol=0.05)
    assert torch.allclose(old.exp(), new[..., :n_old].exp() / new[..., :n_old].exp().sum(-1, keepdim=True),
                          atol=1e-4)
    result = train(TrainConfig(corpus="snow", out_dir=str(tmp_path / "snow"), init=str(tiny_base), max_steps=5,
                               eval_interval=5, **{k: v for k, v in TINY.items() if k != "n_hidden"}), text)
    assert math.isfinite(result.best_val_loss)
    assert "☃" in ckpt.load(tmp_path / "snow" / "best.safetensors").tokenizer.vocab


def test_init_refuses_a_word_model_and_names_unknown_pretrained(tmp_path):
    with pytest.raises(ValueError, match="neither a checkpoint file nor a pretrained"):
        resolve_init("no-such-base")


def test_unigram_loss_is_the_entropy_of_a_uniform_text():
    ids = torch.arange(4).repeat(1000)
    assert unigram_loss(ids, ids, 4) == pytest.approx(math.log(4), rel=1e-3)


def test_quality_gate_needs_both_the_base_and_the_active_model_beaten_and_says_why():
    from trainer.gate import GATE_MARGIN, verdict

    refused = verdict("char-rnn", 1.389, 1.302, 1.31, 32768)  # the 1-minute retrain of shakespeare
    assert not refused.passed
    assert all(n in refused.reason for n in ("1.389", "1.302", "1.310", "32,768")) and "train longer" in refused.reason
    assert not verdict("char-rnn", 1.30, 1.302, None, 100).passed  # the base barely touched: within the margin
    assert not verdict("char-rnn", 1.20, 1.302, 1.20 + GATE_MARGIN / 2, 100).passed  # the active model is as good
    passed = verdict("char-rnn", 1.20, 1.302, 1.25, 100)
    assert passed.passed and "1.200" in passed.reason and "1.302" in passed.reason and "1.250" in passed.reason
    assert passed.losses == {"candidate": 1.20, "base": 1.302, "active": 1.25, "chars": 100}
    assert verdict("word-mlp", 5.0, None, 5.2, 100).passed  # a word model: the active one only
    noise = verdict("char-rnn", 3.3, 4.5, None, 100, val_loss=3.3, unigram=3.35)  # beats the base, not counting
    assert not noise.passed and "counting letters" in noise.reason and "4.500" in noise.reason
    assert not verdict("word-gru", math.nan, None, None, 100).passed
