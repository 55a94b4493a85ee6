"""bench/quality/word_models.py compares a word model with the Kneser–Ney trigram on the trainer's own split: the
held-out ids it rebuilds are the ones training scored, and both models are scored on the same positions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench.quality import word_models
from trainer import checkpoint as ckpt
from trainer.corpus import load_corpus
from trainer.data import TokenStreams
from trainer.evaluate import evaluate
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


def test_compare_scores_both_models_on_the_same_tokens(trained_mlp):
    result = word_models.compare(trained_mlp[0], "alice-mlp")
    assert result["split_meta_matches"]
    # every held-out position the model predicts, minus the first (the trigram needs two tokens of context)
    # and the ragged tail that does not fill 32 equal streams
    assert result["val_tokens"] - 33 <= result["scored_tokens"] <= result["val_tokens"] - 2
    assert math.isfinite(result["model_ppl"]) and math.isfinite(result["kn_trigram_ppl"])
    assert result["below_kn"] == pytest.approx(1 - result["model_ppl"] / result["kn_trigram_ppl"], abs=1e-3)
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
