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
    head: str = "full"  # full | adaptive (adaptive softmax for large vocabularies)
    adaptive_cutoffs: list[int] = field(default_factory=list)
    freeze_embedding: bool = False  # word-gru: pretrained vectors stay fixed
    recurrent_l2: float = 0.0  # L2 penalty on the recurrent kernel (word-gru recipe: 1e-3)

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
        flat = self.proj.log_prob(hidden.reshape(-1, hidden.size(-1)))  # log_prob takes 2-D input only
        return flat.view(*hidden.shape[:-1], flat.size(-1))

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy in nats per token."""
        hidden, targets = hidden.reshape(-1, hidden.size(-1)), targets.reshape(-1)
        if self.adaptive:
            return self.proj(hidden.float(), targets).loss
        return F.cross_entropy(self.proj(hidden).float(), targets)


def default_cutoffs(vocab_size: int) -> list[int]:
    cutoffs = [c for c in (2_000, 10_000) if c < vocab_size - 1]
    return cutoffs or [vocab_size // 2]


class LanguageModel(nn.Module):
    """Shared plumbing: the head, the loss, and the default (fused-call) step."""

    config: ModelConfig
    head: OutputHead

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
        # One fused module per layer with our dropout between them: nn.LSTM's own inter-layer dropout
        # leaves oneDNN's fast path on CPU (measured 15x slower training at 2x256).
        self.layers = nn.ModuleList(rnn_class(config.n_embd if i == 0 else config.n_hidden, config.n_hidden,
                                              batch_first=True) for i in range(config.n_layers))
        self.head = OutputHead(config.n_hidden, config)

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
    """Bengio et al. 2003 / makemore: the last `context` words → embedding → linear → batchnorm → tanh → head.

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
        self.head = OutputHead(config.n_hidden, config)

    def init_state(self, batch_size: int, device: torch.device | str = "cpu") -> State:
        # Token 0 (<unk>) pads the context at the start of a stream.
        return (torch.zeros(batch_size, self.config.context, dtype=torch.long, device=device),)

    def forward(self, idx: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        if state is None:
            state = self.init_state(idx.size(0), idx.device)
        B, T = idx.shape
        full = torch.cat([state[0], idx], dim=1)  # (B, context + T)
        windows = full.unfold(1, self.config.context, 1)[:, 1:]  # (B, T, context): ends at idx[:, t]
        x = self.embed(windows).reshape(B * T, -1)
        h = torch.tanh(self.norm(self.hidden(x)))
        return self.drop(h).view(B, T, -1), (full[:, -self.config.context:],)


def build_model(config: ModelConfig, embedding: torch.Tensor | None = None) -> LanguageModel:
    if config.family == "word-mlp":
        return MLPLM(config)
    if config.family in ("char-rnn", "word-gru"):
        return RecurrentLM(config, embedding)
    raise ValueError(f"unknown model family {config.family!r}; choose one of {', '.join(FAMILIES)}")


def select_state(state: State, rows: torch.Tensor | list[int]) -> State:
    """Keep only some batch rows of a state (requests leaving a batch)."""
    return tuple(s[rows] for s in state)


def cat_states(states: list[State]) -> State:
    """Stack the states of several requests into one batch (requests joining)."""
    return tuple(torch.cat(parts, 0) for parts in zip(*states))
