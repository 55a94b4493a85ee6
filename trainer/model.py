"""The three model families behind one interface.

Every model maps token ids to hidden vectors and carries a recurrent *state* between calls:

    hidden, state = model(idx, state)        # idx (B, T) → hidden (B, T, H); fused, for training/prefill
    logits, state = model.step(idx, state)   # idx (B,)   → logits (B, V);    cheap, for sampling
    loss, state   = model.loss(idx, targets, state)

A state is a tuple of tensors whose first dimension is the batch, whatever the family: (h, c) for an
LSTM, (h,) for a GRU or vanilla RNN, and the last `context` token ids for the MLP. That is all the
sampler and the serving engine need to stack, split and join requests without knowing the architecture.

Training uses the fused `nn.LSTM`/`nn.GRU` (oneDNN); stepping calls the cell functions directly on the
same weights, which costs a third of a length-1 `nn.LSTM` call at batch 1 (shared/notes/cpu-performance.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .ngram import KneserNey

State = tuple[torch.Tensor, ...]
FAMILIES = ("char-rnn", "word-gru", "word-mlp")


@dataclass
class ModelConfig:
    family: str = "char-rnn"
    vocab_size: int = 0
    cell: str = "lstm"  # char-rnn: lstm | gru | rnn
    n_layers: int = 2
    n_embd: int = 64  # embedding width (word-gru: the word-vector width)
    n_hidden: int = 256
    dropout: float = 0.0
    context: int = 4  # word-mlp: words of context
    head: str = "full"  # full | adaptive (adaptive softmax for large vocabularies) | tied | tied-adaptive (TiedHead)
    adaptive_cutoffs: list[int] = field(default_factory=list)
    freeze_embedding: bool = False  # word-gru: pretrained vectors stay fixed
    recurrent_l2: float = 0.0  # L2 penalty on the recurrent kernel (word-gru recipe: 1e-3)
    # word-mlp mixed with a Kneser–Ney n-gram (NGramMixture, below; 0 = the MLP alone): its order, the sizes of
    # its key tables (trainer/ngram.py) and the MLP's share of the mixture for each depth of context the
    # n-gram has seen (0..order-1), fitted on training text held out from the MLP (trainer/mixture.py)
    ngram_order: int = 0
    ngram_sizes: list[int] = field(default_factory=list)
    ngram_weights: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class OutputHead(nn.Module):
    """Hidden → next-token scores. `full` is a linear layer + softmax; `adaptive` is an adaptive
    softmax (frequent words cheap, rare words in smaller clusters), 4–10× faster for big vocabularies.
    `logits()` returns scores whose softmax is the model's distribution (log-probs for adaptive)."""

    def __init__(self, n_in: int, config: ModelConfig):
        super().__init__()
        self.adaptive = config.head == "adaptive"
        if self.adaptive:
            cutoffs = config.adaptive_cutoffs or default_cutoffs(config.vocab_size)
            self.proj = nn.AdaptiveLogSoftmaxWithLoss(n_in, config.vocab_size, cutoffs, div_value=4.0)
        else:
            self.proj = nn.Linear(n_in, config.vocab_size)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if not self.adaptive:
            return self.proj(hidden)
        with _no_autocast(hidden):
            flat = self.proj.log_prob(hidden.reshape(-1, hidden.size(-1)).to(self.proj.head.weight.dtype))
        return flat.view(*hidden.shape[:-1], flat.size(-1))  # log_prob takes 2-D input only

    def token_log_probs(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """log P(target) at every position, shaped like `targets`: what a per-token comparison with
        another model (the Kneser–Ney baseline) needs. The adaptive head scores only the target's
        cluster, so this is as cheap as the loss, not a full distribution per position."""
        flat_hidden, flat_targets = hidden.reshape(-1, hidden.size(-1)), targets.reshape(-1)
        if self.adaptive:
            with _no_autocast(hidden):
                return self.proj(flat_hidden.to(self.proj.head.weight.dtype), flat_targets).output.view_as(targets)
        log_probs = F.log_softmax(self.proj(flat_hidden).float(), dim=-1)
        return log_probs.gather(1, flat_targets[:, None]).view_as(targets)

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy in nats per token."""
        hidden, targets = hidden.reshape(-1, hidden.size(-1)), targets.reshape(-1)
        if self.adaptive:
            with _no_autocast(hidden):
                return self.proj(hidden.to(self.proj.head.weight.dtype), targets).loss.float()
        return F.cross_entropy(self.proj(hidden).float(), targets)


def _no_autocast(hidden: torch.Tensor):
    """The adaptive softmax in float32 even under bf16 autocast (`precision: bf16`/`auto`): its forward
    index_copy_s bf16 cluster scores into a float32 buffer and fails, and a 15,000-word softmax wants
    float32 scores anyway. The recurrent layers, where bf16 pays, stay under autocast."""
    return torch.autocast(hidden.device.type, enabled=False)


class TiedHead(nn.Module):
    """An output layer that shares the input embedding's vectors (Press & Wolf 2017; Inan et al. 2017):
    a word's score is its embedding · the projected hidden state + a per-word bias. It halves the word
    parameters and, when the embedding starts as word2vec, the output side starts knowing which words are
    alike, which is what a model trained for about one epoch lacks most. A projection maps the hidden
    width to the embedding width when they differ.

    `tied` is a full softmax; `tied-adaptive` factors it like the adaptive softmax (Grave et al. 2017): the
    frequent words and one entry per cluster of rarer words share the first softmax, and P(rare word) =
    P(its cluster) · P(word | cluster), each cluster scored only for the positions whose target is in it
    during training. The embedding is held outside the module tree, so a checkpoint stores it once."""

    def __init__(self, n_in: int, config: ModelConfig, embedding: nn.Embedding):
        super().__init__()
        self.adaptive = True  # logits() returns normalised log-probabilities, like the adaptive head
        self._embedding = (embedding,)  # a tuple is not registered: embed.weight is saved and moved once
        width = embedding.embedding_dim
        self.proj = nn.Linear(n_in, width, bias=False) if n_in != width else nn.Identity()
        vocab = config.vocab_size
        cutoffs = (config.adaptive_cutoffs or default_cutoffs(vocab)) if config.head == "tied-adaptive" else []
        self.bounds = [0, *cutoffs, vocab]
        self.bias = nn.Parameter(torch.zeros(vocab))
        self.cluster = nn.Linear(width, len(cutoffs)) if cutoffs else None

    @property
    def weight(self) -> torch.Tensor:
        return self._embedding[0].weight

    def _scores(self, z: torch.Tensor, part: int) -> torch.Tensor:
        low, high = self.bounds[part], self.bounds[part + 1]
        return F.linear(z, self.weight[low:high], self.bias[low:high]).float()

    def _head_log_probs(self, z: torch.Tensor) -> torch.Tensor:
        scores = self._scores(z, 0)
        if self.cluster is not None:
            scores = torch.cat([scores, self.cluster(z).float()], -1)
        return F.log_softmax(scores, -1)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        z = self.proj(hidden)
        head = self._head_log_probs(z)
        shortlist = self.bounds[1]
        parts = [head[..., :shortlist]]
        for i in range(1, len(self.bounds) - 1):
            parts.append(head[..., shortlist + i - 1, None] + F.log_softmax(self._scores(z, i), -1))
        return torch.cat(parts, -1)

    def token_log_probs(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        z, flat = self.proj(hidden.reshape(-1, hidden.size(-1))), targets.reshape(-1)
        head = self._head_log_probs(z)
        shortlist = self.bounds[1]
        out = head.gather(1, flat.clamp(max=shortlist - 1)[:, None]).squeeze(1)
        for i in range(1, len(self.bounds) - 1):
            low, high = self.bounds[i], self.bounds[i + 1]
            rows = ((flat >= low) & (flat < high)).nonzero().squeeze(1)
            if len(rows):
                within = F.log_softmax(self._scores(z[rows], i), -1).gather(1, (flat[rows] - low)[:, None]).squeeze(1)
                out = out.index_copy(0, rows, head[rows, shortlist + i - 1] + within)
        return out.view_as(targets)

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return -self.token_log_probs(hidden, targets).mean()


def build_head(n_in: int, config: ModelConfig, embedding: nn.Embedding) -> OutputHead | TiedHead:
    if config.head in ("tied", "tied-adaptive"):
        return TiedHead(n_in, config, embedding)
    if config.head not in ("full", "adaptive"):
        raise ValueError(f"unknown head {config.head!r}; choose full, adaptive, tied or tied-adaptive")
    return OutputHead(n_in, config)


def default_cutoffs(vocab_size: int) -> list[int]:
    cutoffs = [c for c in (2_000, 10_000) if c < vocab_size - 1]
    return cutoffs or [vocab_size // 2]


class LogProbHead(nn.Module):
    """The identity head of a model whose `forward` already yields log-probabilities over the vocabulary (a
    mixture: trainer/blend.py's blended voices, NGramMixture), so that `loss()`, `step()` and
    `head.token_log_probs()` work as for any LanguageModel."""

    adaptive = True  # like the adaptive head, logits() are normalised log-probabilities

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden

    def token_log_probs(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return hidden.gather(-1, targets.unsqueeze(-1)).squeeze(-1)

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return -self.token_log_probs(hidden, targets).mean()


class LanguageModel(nn.Module):
    """Shared plumbing: the head, the loss, and the default (fused-call) step."""

    config: ModelConfig
    head: OutputHead | TiedHead | LogProbHead

    def init_state(self, batch_size: int, device: torch.device | str = "cpu") -> State:
        raise NotImplementedError

    def loss(self, idx: torch.Tensor, targets: torch.Tensor, state: State | None = None):
        hidden, state = self(idx, state)
        return self.head.loss(hidden, targets) + self.regularization(), state

    def regularization(self) -> torch.Tensor | float:
        return 0.0

    def step(self, idx: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        hidden, state = self(idx[:, None], state)
        return self.head.logits(hidden[:, -1]), state

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


class RecurrentLM(LanguageModel):
    """Embedding → dropout → LSTM / GRU / vanilla RNN → dropout → head.

    Serves `char-rnn` (learned character embeddings) and `word-gru` (frozen word vectors)."""

    _CELLS = {"lstm": (nn.LSTM, torch.lstm_cell), "gru": (nn.GRU, torch.gru_cell), "rnn": (nn.RNN, torch.rnn_tanh_cell)}

    def __init__(self, config: ModelConfig, embedding: torch.Tensor | None = None):
        super().__init__()
        if config.cell not in self._CELLS:
            raise ValueError(f"unknown cell {config.cell!r}; choose lstm, gru or rnn")
        self.config = config
        rnn_class, self._cell_fn = self._CELLS[config.cell]
        self.embed = nn.Embedding(config.vocab_size, config.n_embd)
        if embedding is not None:
            self.embed.weight.data.copy_(embedding)
        self.embed.weight.requires_grad_(not config.freeze_embedding)
        self.drop = nn.Dropout(config.dropout)
        # One single-layer module per layer, our dropout between them: step() runs each layer's cell on its
        # own `_l0` weights, and checkpoints keep them per layer. Training speed shows no consistent difference
        # from one multi-layer nn.LSTM with dropout (bench/speed/trainer_overhead.py's variants and CPU seconds
        # per step, bench/results/trainer_overhead.json).
        self.layers = nn.ModuleList(rnn_class(config.n_embd if i == 0 else config.n_hidden, config.n_hidden,
                                              batch_first=True) for i in range(config.n_layers))
        self.head = build_head(config.n_hidden, config, self.embed)

    def init_state(self, batch_size: int, device: torch.device | str = "cpu") -> State:
        zeros = torch.zeros(batch_size, self.config.n_layers, self.config.n_hidden, device=device,
                            dtype=self.embed.weight.dtype)  # bfloat16 when serving in bf16
        return (zeros, zeros.clone()) if self.config.cell == "lstm" else (zeros,)

    def forward(self, idx: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        if state is None:
            state = self.init_state(idx.size(0), idx.device)
        x = self.drop(self.embed(idx))
        new_layers = []
        for i, layer in enumerate(self.layers):
            native = tuple(s[:, i].unsqueeze(0).contiguous() for s in state)  # nn.LSTM wants (1, B, H)
            x, new = layer(x, native if len(native) > 1 else native[0])
            new_layers.append(new if isinstance(new, tuple) else (new,))
            x = self.drop(x)
        return x, tuple(torch.cat(parts, 0).transpose(0, 1) for parts in zip(*new_layers))

    def regularization(self) -> torch.Tensor | float:
        if not self.config.recurrent_l2:
            return 0.0
        return self.config.recurrent_l2 * sum(layer.weight_hh_l0.pow(2).sum() for layer in self.layers)

    def step(self, idx: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        x = F.embedding(idx, self.embed.weight)
        new_layers = []
        for i, layer in enumerate(self.layers):
            weights = (layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0, layer.bias_hh_l0)
            if self.config.cell == "lstm":
                h, c = self._cell_fn(x, (state[0][:, i], state[1][:, i]), *weights)
                new_layers.append((h, c))
            else:
                h = self._cell_fn(x, state[0][:, i], *weights)
                new_layers.append((h,))
            x = h
        new_state = tuple(torch.stack(parts, 1) for parts in zip(*new_layers))
        return self.head.logits(x), new_state


class MLPLM(LanguageModel):
    """Bengio et al. 2003 / makemore: the last `context` words → embedding → dropout → linear → batchnorm → tanh
    → dropout → head.

    Trained many-to-many: every position of a chunk is an example whose context is the `context`
    tokens ending there, so one chunk of B×T tokens gives B×T examples. The "state" is those last
    token ids, carried across chunks like an RNN state."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.n_embd)
        self.hidden = nn.Linear(config.context * config.n_embd, config.n_hidden, bias=False)
        self.norm = nn.BatchNorm1d(config.n_hidden)
        self.drop = nn.Dropout(config.dropout)
        self.head = build_head(config.n_hidden, config, self.embed)

    def init_state(self, batch_size: int, device: torch.device | str = "cpu") -> State:
        # Token 0 (<unk>) pads the context at the start of a stream.
        return (torch.zeros(batch_size, self.config.context, dtype=torch.long, device=device),)

    def forward(self, idx: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        if state is None:
            state = self.init_state(idx.size(0), idx.device)
        B, T = idx.shape
        full = torch.cat([state[0], idx], dim=1)  # (B, context + T)
        windows = full.unfold(1, self.config.context, 1)[:, 1:]  # (B, T, context): ends at idx[:, t]
        # dropout on the context vectors too: on a book-sized corpus the MLP memorises its contexts within a
        # few epochs, and dropping input words is what keeps it generalising (the stand-in's held-out loss)
        x = self.drop(self.embed(windows)).reshape(B * T, -1)
        h = torch.tanh(self.norm(self.hidden(x)))
        return self.drop(h).view(B, T, -1), (full[:, -self.config.context:],)


class NGramMixture(LanguageModel):
    """The word MLP and a Kneser–Ney n-gram as one model (Bengio et al. 2003 §4.1: the network's probabilities
    mixed with an interpolated trigram's, the mixture weight conditioned on the context):

        P(w | h) = λ(d) · P_mlp(w | h) + (1 − λ(d)) · P_kn(w | h),     d = KneserNey.depth(h): 0..order − 1

    where λ(d) is config.ngram_weights[d], fitted on training text the MLP never trained on (trainer/mixture.py).
    The state is the MLP's (its last `context` word ids), whose last order − 1 words are the n-gram's context.
    `forward` returns the mixture's log-probabilities (the head is the identity), so evaluation, the quality gate
    and sampling use the mixture; `mlp` alone is the network."""

    ROWS = 1024  # positions mixed at once: a full distribution over the vocabulary per position

    def __init__(self, config: ModelConfig):
        super().__init__()
        if not 2 <= config.ngram_order <= config.context + 1:
            raise ValueError(f"ngram_order {config.ngram_order} must be 2..context + 1 ({config.context + 1})")
        if len(config.ngram_weights) != config.ngram_order:
            raise ValueError(f"an order-{config.ngram_order} mixture needs {config.ngram_order} weights")
        self.config = config
        self.mlp = MLPLM(ModelConfig.from_dict({**config.to_dict(), "ngram_order": 0, "ngram_sizes": [],
                                                "ngram_weights": []}))
        self.ngram = KneserNey(config.vocab_size, config.ngram_order, config.ngram_sizes)
        self.head = LogProbHead()

    def init_state(self, batch_size: int, device: torch.device | str = "cpu") -> State:
        return self.mlp.init_state(batch_size, device)

    def forward(self, idx: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        if state is None:
            state = self.init_state(idx.size(0), idx.device)
        hidden, new_state = self.mlp(idx, state)
        B, T = idx.shape
        n, C = self.config.ngram_order, self.config.context
        # the n-gram's context of position t: the order − 1 words ending at idx[:, t]
        contexts = torch.cat([state[0], idx], 1).unfold(1, n - 1, 1)[:, C - n + 2:].reshape(B * T, n - 1)
        hidden = hidden.reshape(B * T, -1)
        weights = torch.tensor(self.config.ngram_weights, dtype=torch.float32, device=idx.device)
        parts = []
        for rows in torch.arange(B * T, device=idx.device).split(self.ROWS):
            neural = F.log_softmax(self.mlp.head.logits(hidden[rows]).float(), -1)
            ngram = self.ngram.distribution(contexts[rows]).log()
            lam = weights[self.ngram.depth(contexts[rows])][:, None]
            parts.append(torch.logaddexp(neural + lam.log(), ngram + (1 - lam).log()))
        return torch.cat(parts).view(B, T, -1), new_state


def build_model(config: ModelConfig, embedding: torch.Tensor | None = None) -> LanguageModel:
    if config.family == "word-mlp":
        return NGramMixture(config) if config.ngram_order else MLPLM(config)
    if config.family in ("char-rnn", "word-gru"):
        return RecurrentLM(config, embedding)
    raise ValueError(f"unknown model family {config.family!r}; choose one of {', '.join(FAMILIES)}")


def select_state(state: State, rows: torch.Tensor | list[int]) -> State:
    """Keep only some batch rows of a state (requests leaving a batch)."""
    return tuple(s[rows] for s in state)


def cat_states(states: list[State]) -> State:
    """Stack the states of several requests into one batch (requests joining)."""
    return tuple(torch.cat(parts, 0) for parts in zip(*states))
