"""bench/quality/word_models.py compares a word model with the Kneser–Ney trigram on the trainer's own split: the
held-out ids it rebuilds are the ones training scored, and both models are scored on the same positions."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from bench.quality import word_models
from trainer import checkpoint as ckpt
from trainer.corpus import load_corpus
from trainer.data import TokenStreams
from trainer.evaluate import evaluate
from trainer.mixture import mix
from trainer.model import NGramMixture
from trainer.ngram import KneserNey
from trainer.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def trained_mlp(tmp_path_factory, alice_text):
    folder = tmp_path_factory.mktemp("word_models")
    corpus = folder / "alice.txt"
    corpus.write_text(alice_text)
    config = TrainConfig(corpus=str(corpus), out_dir=str(folder / "run"), family="word-mlp", context=3, n_embd=8,
                         n_hidden=16, max_vocab=800, lowercase=True, batch_size=8, seq_len=16, max_steps=30,
                         eval_interval=10, lr=1e-2)
    result = train(config, load_corpus(corpus))
    return folder / "run" / "best.safetensors", result


def test_split_is_the_one_training_scored(trained_mlp):
    path, result = trained_mlp
    loaded = ckpt.load(path)
    config = loaded.meta["train_config"]
    train_ids, val_ids = word_models.held_out_split(loaded.tokenizer, load_corpus(config["corpus"]), loaded.meta)
    assert loaded.meta["split"]["val_tokens"] == len(val_ids)
    assert loaded.meta["split"]["train_tokens"] == len(train_ids)
    # the best checkpoint's recorded loss is the trainer's evaluation of exactly these held-out ids
    batch, seq = min(32, loaded.meta["batch_shape"][0]), loaded.meta["batch_shape"][1]
    assert evaluate(loaded.model, TokenStreams(val_ids, batch, seq)) == pytest.approx(result.best_val_loss, rel=1e-4)


def test_model_log_probs_cover_the_streams_evaluate_scores(trained_mlp):
    loaded = ckpt.load(trained_mlp[0])
    ids = torch.tensor(loaded.tokenizer.encode("alice was beginning to get very tired of sitting by her sister " * 20))
    positions, log_probs = word_models.model_log_probs(loaded.model, ids, batch_size=4, seq_len=7)
    assert len(np.unique(positions)) == len(positions) and positions.min() == 1 and positions.max() < len(ids)
    assert -log_probs.mean() == pytest.approx(evaluate(loaded.model, TokenStreams(ids, 4, 7)), rel=1e-5)


def test_compare_scores_every_model_on_the_same_tokens(trained_mlp):
    result = word_models.compare(trained_mlp[0], "alice-mlp", "alice was")
    assert result["split_meta_matches"]
    # every held-out position the model predicts, minus the first four (a 5-gram needs four tokens of context)
    # and the ragged tail that does not fill 32 equal streams
    assert result["val_tokens"] - 36 <= result["scored_tokens"] <= result["val_tokens"] - 4
    assert set(result["kn_ppl"]) == {"3", "4", "5"} and result["kn_best_ppl"] == min(result["kn_ppl"].values())
    assert result["kn_best_ppl"] == result["kn_ppl"][str(result["kn_best_order"])]
    assert math.isfinite(result["model_ppl"]) and result["mlp_alone_ppl"] is None  # a plain MLP: no mixture
    assert result["below_kn"] == pytest.approx(1 - result["model_ppl"] / result["kn_best_ppl"], abs=1e-3)
    assert len(result["samples"]) == 3 and all(text.startswith("alice was ") for text in result["samples"])
    row = word_models.target_row(result, "word MLP")
    assert row["ok"] == (row["measured"] >= 0.15) and set(row) >= {"metric", "target", "measured", "ok"}


def test_word_recipes_build_tied_models():
    """The movie-reviews recipe fine-tunes its word vectors and ties them to the output; the stand-in recipe
    trains the harry-potter recipe's family on a multi-document folder of public-domain books."""
    from trainer.recipes import load_recipe

    movie = TrainConfig.from_dict(load_recipe("movie-reviews"))
    assert movie.family == "word-gru" and not movie.freeze_embedding
    assert movie.model_config(15_000).head == "tied-adaptive"
    # the stand-in measures the harry-potter recipe itself: only the corpus differs
    standin, harry_potter = load_recipe(word_models.STANDIN_RECIPE), load_recipe("harry-potter")
    assert standin.pop("corpus") != harry_potter.pop("corpus")
    assert standin == harry_potter and standin["family"] == "word-mlp"
    assert TrainConfig.from_dict(load_recipe("harry-potter")).model_config(15_000).head == "tied-adaptive"


def test_standin_corpus_is_three_austen_novels_kept_apart(corpora_dir):
    from trainer.recipes import load_recipe

    corpus = word_models.load_training_corpus(load_recipe(word_models.STANDIN_RECIPE)["corpus"])
    documents = corpus.document_texts()
    assert len(documents) == 3
    assert "Elliot" in documents[0] and "Catherine Morland" in documents[1] and "Darcy" in documents[2]


# -- the word MLP mixed with its Kneser–Ney n-gram (trainer.model.NGramMixture, trainer/mixture.py) -------------

@pytest.fixture(scope="module")
def trained_mixture(tmp_path_factory, corpora_dir):
    """A small word MLP with an order-3 n-gram, trained on all of Alice; its best checkpoint is the mixture."""
    folder = tmp_path_factory.mktemp("mixture")
    corpus = folder / "alice.txt"
    corpus.write_text((corpora_dir / "alice" / "alice.txt").read_text())
    config = TrainConfig(corpus=str(corpus), out_dir=str(folder / "run"), family="word-mlp", context=3, n_embd=16,
                         n_hidden=64, dropout=0.2, max_vocab=1500, lowercase=True, head="tied", batch_size=16,
                         seq_len=32, max_steps=240, eval_interval=80, lr=1e-2, ngram_order=3)
    result = train(config, load_corpus(corpus))
    return ckpt.load(folder / "run" / "best.safetensors"), result, config


def test_the_best_checkpoint_is_the_mixture_fitted_on_training_text(trained_mixture):
    loaded, result, config = trained_mixture
    model, report = loaded.model, loaded.meta["mixture"]
    assert isinstance(model, NGramMixture) and model.config.ngram_order == 3 and model.ngram.order == 3
    assert len(report["weights"]) == 3 and all(0 < w < 1 for w in report["weights"])
    # fitted on the tune slice of the training text (5 %), which the MLP never trained on
    train_ids, val_ids = word_models.held_out_split(loaded.tokenizer, load_corpus(config.corpus), loaded.meta)
    assert 0.02 * len(train_ids) < report["tune_tokens"] < 0.1 * len(train_ids)
    # the run's best loss is the mixture's on the whole held-out split, and so is the checkpoint's
    assert result.best_val_loss == pytest.approx(loaded.meta["metrics"]["val_loss"])
    assert loaded.meta["metrics"]["val_loss"] < loaded.meta["metrics"]["val_loss_neural"]
    # the n-gram inside is counted on all the training ids: the baseline's counts
    assert model.ngram.sizes == KneserNey.count(train_ids, len(loaded.tokenizer), 3).sizes


def test_the_mixture_is_a_distribution_over_the_vocabulary(trained_mixture):
    model = trained_mixture[0].model
    V = model.config.vocab_size
    state = model.init_state(3)
    with torch.inference_mode():
        for ids in ([5, V - 1, 0], [7, 3, 12], [9, 9, 2]):  # a frequent word, the rarest, <unk>; then on
            log_probs, state = model.step(torch.tensor(ids), state)
            assert log_probs.exp().sum(-1).numpy() == pytest.approx(np.ones(3), abs=1e-4)
        hidden, _ = model(torch.randint(0, V, (2, 9)))
        assert hidden.exp().sum(-1).numpy() == pytest.approx(np.ones((2, 9)), abs=1e-4)


def test_the_mixture_is_no_worse_than_either_part_on_held_out_text(trained_mixture):
    """The weights were fitted on training text; on held-out text the mixture beats the MLP alone (every weight
    1) and the n-gram alone (every weight 0), each scored with the same model and contexts."""
    loaded, _, config = trained_mixture
    model = loaded.model
    _, val_ids = word_models.held_out_split(loaded.tokenizer, load_corpus(config.corpus), loaded.meta)
    streams = TokenStreams(val_ids, 16, 32)
    order = model.config.ngram_order
    nats = {name: evaluate(mix(model.mlp, model.ngram, weights), streams)
            for name, weights in (("mlp", [1.0] * order), ("ngram", [0.0] * order),
                                  ("mixture", model.config.ngram_weights))}
    assert nats["mixture"] < min(nats["mlp"], nats["ngram"]), nats


def test_a_mixture_checkpoint_round_trips_in_half_precision(trained_mixture, tmp_path):
    loaded = trained_mixture[0]
    path = ckpt.save(tmp_path / "half.safetensors", loaded.model, loaded.tokenizer,
                     {k: v for k, v in loaded.meta.items() if k in ("train_config", "mixture")}, half=True)
    again = ckpt.load(path)
    for name, table in loaded.model.ngram.state_dict().items():  # integer tables: exact whatever the precision
        assert torch.equal(again.model.ngram.state_dict()[name], table)
    ids = torch.tensor([[4, 8, 15, 16, 23, 42]])
    torch.testing.assert_close(again.model(ids)[0], loaded.model(ids)[0], atol=2e-2, rtol=0)


def test_a_mixture_whose_tables_were_tampered_with_is_refused(trained_mixture, tmp_path):
    """The n-gram's tables are untrusted input like the weights: keys out of order would make every lookup read
    another n-gram's count, so loading refuses them."""
    loaded = trained_mixture[0]
    model = copy.deepcopy(loaded.model)
    model.ngram.keys3.copy_(model.ngram.keys3.flip(0))
    path = ckpt.save(tmp_path / "forged.safetensors", model, loaded.tokenizer, {})
    with pytest.raises(ckpt.CheckpointError, match="keys3 are not strictly increasing"):
        ckpt.load(path)
