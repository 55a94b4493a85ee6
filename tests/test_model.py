"""Model families (trainer/model.py): stepping token by token must give exactly what the fused forward
gives (that is what makes stateful sampling correct), states are batch-first and can be split and
joined, and the heads' losses are the cross-entropy of their logits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trainer.model import (
    LanguageModel,
    ModelConfig,
    OutputHead,
    TiedHead,
    build_model,
    cat_states,
    default_cutoffs,
    select_state,
)

pytestmark = pytest.mark.usefixtures("single_thread")

V = 40

CONFIGS = {
    "char-lstm-2": {"family": "char-rnn", "cell": "lstm", "n_layers": 2},
    "char-lstm-1": {"family": "char-rnn", "cell": "lstm", "n_layers": 1},
    "char-gru-2": {"family": "char-rnn", "cell": "gru", "n_layers": 2},
    "char-rnn-3": {"family": "char-rnn", "cell": "rnn", "n_layers": 3},
    "char-lstm-adaptive": {
        "family": "char-rnn",
        "cell": "lstm",
        "n_layers": 2,
        "head": "adaptive",
        "adaptive_cutoffs": [8, 20],
    },
    "word-gru": {
        "family": "word-gru",
        "cell": "gru",
        "n_layers": 1,
        "freeze_embedding": True,
        "recurrent_l2": 1e-3,
    },
    "word-gru-adaptive": {"family": "word-gru", "cell": "gru", "n_layers": 2, "head": "adaptive"},
    "word-gru-tied": {"family": "word-gru", "cell": "gru", "n_layers": 1, "head": "tied"},
    "word-gru-tied-adaptive": {"family": "word-gru", "cell": "gru", "n_layers": 2, "head": "tied-adaptive",
                               "adaptive_cutoffs": [8, 20]},
    "word-mlp": {"family": "word-mlp", "context": 4},
    "word-mlp-tied-adaptive": {"family": "word-mlp", "context": 3, "head": "tied-adaptive", "adaptive_cutoffs": [10]},
    "word-mlp-adaptive": {"family": "word-mlp", "context": 3, "head": "adaptive", "adaptive_cutoffs": [10]},
}


def make(name: str, seed: int = 0) -> LanguageModel:
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=V, n_embd=16, n_hidden=32, dropout=0.3, **CONFIGS[name])
    model = build_model(config)
    if config.family == "word-mlp":
        # give batchnorm non-trivial running statistics, so eval mode is a real test of the step path
        model.train()
        with torch.no_grad():
            for _ in range(3):
                model(torch.randint(0, V, (8, 12)))
    return model.eval()


def random_state(model: LanguageModel, batch: int) -> tuple[torch.Tensor, ...]:
    state = model.init_state(batch)
    if model.config.family == "word-mlp":
        return (torch.randint(0, V, state[0].shape),)
    return tuple(torch.randn_like(s) * 0.5 for s in state)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_step_matches_fused_forward(name):
    model = make(name)
    B, T = 3, 17
    idx = torch.randint(0, V, (B, T))
    start = random_state(model, B)
    with torch.no_grad():
        hidden, fused_state = model(idx, start)
        fused = model.head.logits(hidden.reshape(B * T, -1)).view(B, T, V)
        state, stepped = start, []
        for t in range(T):
            logits, state = model.step(idx[:, t], state)
            stepped.append(logits)
    stepped = torch.stack(stepped, 1)
    assert stepped.shape == fused.shape == (B, T, V)
    torch.testing.assert_close(stepped, fused, atol=1e-5, rtol=1e-5)
    assert len(state) == len(fused_state)
    for s, f in zip(state, fused_state):
        assert s.shape == f.shape
        torch.testing.assert_close(s, f, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_chunked_forward_with_carried_state_equals_one_forward(name):
    """Training carries the state across chunks (truncated BPTT); evaluation relies on it too."""
    model = make(name)
    idx = torch.randint(0, V, (2, 20))
    with torch.no_grad():
        whole, _ = model(idx)
        a, state = model(idx[:, :7])
        b, _ = model(idx[:, 7:], state)
    torch.testing.assert_close(torch.cat([a, b], 1), whole, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_state_is_a_batch_first_tuple(name):
    model = make(name)
    cfg = model.config
    state = model.init_state(5)
    assert isinstance(state, tuple)
    if cfg.family == "word-mlp":
        assert len(state) == 1
        assert state[0].shape == (5, cfg.context) and state[0].dtype == torch.long
        assert (state[0] == 0).all()  # padded with <unk>
    else:
        assert len(state) == (2 if cfg.cell == "lstm" else 1)
        for s in state:
            assert s.shape == (5, cfg.n_layers, cfg.n_hidden)
            assert (s == 0).all()
    with torch.no_grad():
        _, after_forward = model(torch.randint(0, V, (5, 6)), state)
        _, after_step = model.step(torch.randint(0, V, (5,)), state)
    for new in (after_forward, after_step):
        assert [tuple(s.shape) for s in new] == [tuple(s.shape) for s in state]


@pytest.mark.parametrize("name", ["char-lstm-2", "char-gru-2", "word-mlp", "word-gru-adaptive"])
def test_select_and_cat_states_split_and_join_requests(name):
    model = make(name)
    a, b, c = random_state(model, 1), random_state(model, 2), random_state(model, 1)
    joined = cat_states([a, b, c])
    assert all(s.size(0) == 4 for s in joined)
    for part, rows in ((a, [0]), (b, [1, 2]), (c, [3])):
        for s_part, s_joined in zip(part, joined):
            assert torch.equal(s_joined[rows], s_part)
    picked = select_state(joined, torch.tensor([3, 1]))
    for s_pick, s_c, s_b in zip(picked, c, b):
        assert torch.equal(s_pick[0], s_c[0]) and torch.equal(s_pick[1], s_b[0])
    assert all(s.size(0) == 2 for s in select_state(joined, [0, 2]))


@pytest.mark.parametrize("name", ["char-lstm-2", "char-rnn-3", "word-mlp", "word-gru-adaptive"])
def test_batched_step_rows_are_independent(name):
    """Stepping requests together gives each the logits it gets alone (the serving engine's batching)."""
    model = make(name)
    states = [random_state(model, 1) for _ in range(3)]
    tokens = torch.tensor([5, 17, 33])
    with torch.no_grad():
        together, new = model.step(tokens, cat_states(states))
        for row, state in enumerate(states):
            alone, alone_state = model.step(tokens[row : row + 1], state)
            torch.testing.assert_close(together[row : row + 1], alone, atol=1e-5, rtol=1e-5)
            for s_new, s_alone in zip(select_state(new, [row]), alone_state):
                torch.testing.assert_close(s_new, s_alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("head", ["full", "adaptive"])
def test_head_loss_is_cross_entropy_of_its_logits(head):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=V, head=head, adaptive_cutoffs=[8, 20])
    out = OutputHead(24, config)
    hidden, targets = torch.randn(2, 9, 24), torch.randint(0, V, (2, 9))
    with torch.no_grad():
        logits = out.logits(hidden.reshape(18, 24))
        expected = F.cross_entropy(logits, targets.reshape(-1))
        assert out.loss(hidden, targets).item() == pytest.approx(expected.item(), rel=1e-5)
        if head == "adaptive":  # log-probabilities: already normalised
            torch.testing.assert_close(logits.logsumexp(-1), torch.zeros(18), atol=1e-5, rtol=0)


@pytest.mark.parametrize("head", ["full", "adaptive"])
def test_head_logits_accept_batch_by_time_hidden(head):
    """`model(idx)` returns hidden (B, T, H); scoring every position (per-token probabilities of a text)
    needs head.logits on it. The full head accepts it; the adaptive head must too."""
    torch.manual_seed(0)
    out = OutputHead(24, ModelConfig(vocab_size=V, head=head, adaptive_cutoffs=[8, 20]))
    hidden = torch.randn(2, 9, 24)
    with torch.no_grad():
        flat = out.logits(hidden.reshape(18, 24))
        logits = out.logits(hidden)
    assert logits.shape == (2, 9, V)
    torch.testing.assert_close(logits.reshape(18, V), flat)


def test_untrained_loss_is_near_uniform():
    model = make("char-lstm-2")
    idx, targets = torch.randint(0, V, (4, 30)), torch.randint(0, V, (4, 30))
    with torch.no_grad():
        loss, state = model.loss(idx, targets)
    assert abs(loss.item() - math.log(V)) < 0.3
    assert state[0].shape == (4, 2, 32)


def test_recurrent_l2_adds_the_penalty_on_recurrent_kernels():
    model = make("word-gru")
    recurrent = [p for name, p in model.named_parameters() if "weight_hh" in name]
    assert recurrent
    expected = 1e-3 * sum(p.pow(2).sum().item() for p in recurrent)
    idx, targets = torch.randint(0, V, (2, 5)), torch.randint(0, V, (2, 5))
    with torch.no_grad():
        hidden, _ = model(idx)
        plain = model.head.loss(hidden, targets).item()
        total, _ = model.loss(idx, targets)
    assert expected > 0
    assert total.item() == pytest.approx(plain + expected, rel=1e-5)


def test_pretrained_frozen_embedding_is_copied_and_not_trained():
    vectors = torch.randn(V, 16)
    config = ModelConfig(
        family="word-gru", vocab_size=V, cell="gru", n_layers=1, n_embd=16, n_hidden=32, freeze_embedding=True
    )
    model = build_model(config, vectors)
    assert torch.equal(model.embed.weight.detach(), vectors)
    assert not model.embed.weight.requires_grad
    assert model.n_params == sum(p.numel() for n, p in model.named_parameters() if not n.startswith("embed"))
    trainable = build_model(ModelConfig(**{**config.to_dict(), "freeze_embedding": False}), vectors)
    assert trainable.embed.weight.requires_grad
    assert trainable.n_params == model.n_params + V * 16


def test_model_config_round_trip_ignores_unknown_keys():
    config = ModelConfig(family="word-mlp", vocab_size=123, context=5, head="adaptive", adaptive_cutoffs=[50])
    data = config.to_dict()
    assert ModelConfig.from_dict(data) == config
    assert ModelConfig.from_dict({**data, "from_the_future": 1}) == config


def test_unknown_family_and_cell_are_rejected():
    with pytest.raises(ValueError, match="unknown model family 'transformer'"):
        build_model(ModelConfig(family="transformer", vocab_size=V))
    with pytest.raises(ValueError, match="unknown cell 'mamba'"):
        build_model(ModelConfig(family="char-rnn", vocab_size=V, cell="mamba"))


def test_default_cutoffs_are_inside_the_vocabulary():
    assert default_cutoffs(15_000) == [2_000, 10_000]
    assert default_cutoffs(5_000) == [2_000]
    assert default_cutoffs(100) == [50]
    for v in (3, 10, 2_001, 2_002, 10_001, 10_002):
        cutoffs = default_cutoffs(v)
        assert all(0 < c < v for c in cutoffs), (v, cutoffs)
        OutputHead(64, ModelConfig(vocab_size=v, head="adaptive"))  # constructs without error


@pytest.mark.parametrize("head", ["full", "adaptive"])
def test_token_log_probs_are_the_log_softmax_of_the_targets(head):
    """The per-token scores a comparison with the Kneser–Ney baseline uses: log P(target) at each position,
    the same numbers as the logits' log-softmax and, averaged, minus the head's loss."""
    torch.manual_seed(0)
    out = OutputHead(24, ModelConfig(vocab_size=V, head=head, adaptive_cutoffs=[8, 20]))
    hidden, targets = torch.randn(3, 7, 24), torch.randint(0, V, (3, 7))
    with torch.no_grad():
        scores = out.token_log_probs(hidden, targets)
        expected = F.log_softmax(out.logits(hidden), -1).gather(-1, targets[..., None]).squeeze(-1)
        loss = out.loss(hidden, targets)
    assert scores.shape == targets.shape
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)
    assert -scores.mean().item() == pytest.approx(loss.item(), rel=1e-5)


def test_unfrozen_pretrained_embedding_learns():
    """movie-reviews fine-tunes its word2vec vectors: they start as the vectors and one optimizer step moves
    the rows of the words it saw (and only those: an embedding's gradient is zero for unseen words)."""
    torch.manual_seed(0)
    vectors = torch.randn(V, 16)
    config = ModelConfig(family="word-gru", vocab_size=V, cell="gru", n_layers=1, n_embd=16, n_hidden=32,
                         head="adaptive", adaptive_cutoffs=[8, 20], freeze_embedding=False)
    model = build_model(config, vectors)
    assert torch.equal(model.embed.weight.detach(), vectors)
    idx, targets = torch.randint(0, 20, (2, 6)), torch.randint(0, V, (2, 6))
    loss, _ = model.loss(idx, targets)
    loss.backward()
    grad = model.embed.weight.grad
    seen = torch.zeros(V, dtype=torch.bool)
    seen[idx.unique()] = True
    assert grad[seen].abs().sum(-1).gt(0).all()
    assert grad[~seen].abs().sum() == 0
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    moved = (model.embed.weight.detach() - vectors).abs().sum(-1) > 0
    assert torch.equal(moved, seen)


@pytest.mark.parametrize("head", ["tied", "tied-adaptive"])
@pytest.mark.parametrize("n_hidden", [16, 32])
def test_tied_head_shares_the_embedding_and_is_a_distribution(head, n_hidden):
    """The output vectors are the embedding itself (one tensor, saved once; a projection only when the
    widths differ), the logits are normalised log-probabilities, and the loss is their cross-entropy."""
    torch.manual_seed(0)
    config = ModelConfig(family="word-gru", vocab_size=V, cell="gru", n_layers=1, n_embd=16, n_hidden=n_hidden,
                         head=head, adaptive_cutoffs=[8, 20])
    model = build_model(config).eval()
    assert isinstance(model.head, TiedHead)
    assert model.head.weight.data_ptr() == model.embed.weight.data_ptr()
    names = list(model.state_dict())
    assert names.count("embed.weight") == 1 and not any(n.startswith("head.") and "weight" in n and "proj" not in n
                                                        and "cluster" not in n for n in names)
    assert ("head.proj.weight" in names) == (n_hidden != 16)
    assert ("head.cluster.weight" in names) == (head == "tied-adaptive")
    idx, targets = torch.randint(0, V, (3, 9)), torch.randint(0, V, (3, 9))
    with torch.no_grad():
        hidden, _ = model(idx)
        logits = model.head.logits(hidden)
        torch.testing.assert_close(logits.logsumexp(-1), torch.zeros(3, 9), atol=1e-5, rtol=0)
        expected = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))
        assert model.head.loss(hidden, targets).item() == pytest.approx(expected.item(), rel=1e-5)
    # a model rebuilt from its state dict (a checkpoint) is tied again, to the loaded vectors
    clone = build_model(config)
    clone.load_state_dict(model.state_dict())
    assert clone.head.weight.data_ptr() == clone.embed.weight.data_ptr()
    torch.testing.assert_close(clone.head.logits(hidden.detach()), logits)


def test_tied_embedding_trains_from_both_ends():
    """With tied vectors the target words' rows get gradient from the output side too (the input side
    alone only reaches the words that were read), and training lowers the loss."""
    torch.manual_seed(0)
    config = ModelConfig(family="word-gru", vocab_size=V, cell="gru", n_layers=1, n_embd=16, n_hidden=32,
                         head="tied-adaptive", adaptive_cutoffs=[8, 20])
    model = build_model(config, torch.randn(V, 16))
    idx, targets = torch.randint(0, 10, (4, 12)), torch.randint(20, V, (4, 12))
    loss, _ = model.loss(idx, targets)
    loss.backward()
    grad_norms = model.embed.weight.grad.abs().sum(-1)
    assert grad_norms[targets.unique()].gt(0).all()  # never read, only predicted: the output side trains them
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = loss.item()
    for _ in range(30):
        optimizer.zero_grad()
        loss, _ = model.loss(idx, targets)
        loss.backward()
        optimizer.step()
    assert loss.item() < first - 1.0


def test_unknown_head_is_rejected():
    with pytest.raises(ValueError, match="unknown head 'sampled'"):
        build_model(ModelConfig(family="word-gru", vocab_size=V, cell="gru", head="sampled"))


@pytest.mark.parametrize("head", ["tied", "tied-adaptive"])
@pytest.mark.parametrize("family,n_hidden", [("word-gru", 16), ("word-gru", 48), ("word-mlp", 48)])
def test_tied_checkpoints_validate_and_load_tied(tmp_path, head, family, n_hidden):
    """trainer/checkpoint.py checks every tensor against shapes it computes without building the model: they
    must be the tied model's, and a saved (fp16, as bundled) tied model must load with its head still tied."""
    from core.checkpoints import expected_model_shapes, validate_model_config
    from trainer import checkpoint as ckpt
    from trainer.tokenizer import WordTokenizer

    config = ModelConfig(family=family, vocab_size=300, cell="gru", n_layers=1, n_embd=16, n_hidden=n_hidden,
                         context=3, head=head, adaptive_cutoffs=[20, 100] if head == "tied-adaptive" else [])
    validate_model_config(config.to_dict())
    model = build_model(config)
    actual = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert expected_model_shapes(config.to_dict()) == actual
    tokenizer = WordTokenizer(["<unk>"] + [f"w{i}" for i in range(299)])
    path = ckpt.save(tmp_path / "tied.safetensors", model.eval(), tokenizer, {}, half=True)
    loaded = ckpt.load(path).model
    assert loaded.head.weight.data_ptr() == loaded.embed.weight.data_ptr()
    idx = torch.randint(0, 300, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(loaded.head.logits(loaded(idx)[0]), model.head.logits(model(idx)[0]),
                                   atol=0.05, rtol=0.05)


def test_word_vectors_from_training_ids_see_only_those_words():
    """word2vec can learn from the training split's ids alone, so held-out text never shapes the vectors:
    a word that occurs only in the held-out text keeps its small random vector."""
    pytest.importorskip("gensim")
    from trainer.tokenizer import WordTokenizer
    from trainer.vectors import _sentences, word_vectors_for

    train_text = "the cat sat on the mat .\nthe dog sat on the log .\n" * 20
    tokenizer = WordTokenizer.build(train_text + "a zebra appeared .\n", max_vocab=100)
    train_ids = torch.tensor(tokenizer.encode(train_text))
    assert _sentences(tokenizer, train_ids)[:2] == [["the", "cat", "sat", "on", "the", "mat", "."],
                                                    ["the", "dog", "sat", "on", "the", "log", "."]]
    vectors = word_vectors_for(tokenizer, train_ids, dim=8, epochs=1)
    assert vectors.shape == (len(tokenizer), 8)
    assert vectors[tokenizer.index["zebra"]].abs().max() < 0.5  # rng.normal(0, 0.1): never trained
    from_text = word_vectors_for(tokenizer, train_text, dim=8, epochs=1)
    torch.testing.assert_close(from_text[tokenizer.index["cat"]], vectors[tokenizer.index["cat"]])
