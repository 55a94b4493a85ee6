"""Blended voices: a mixture of character models behind the one model interface.

`BlendedModel` wraps two (or more) char models with weights w_i and presents what the sampler uses
(trainer/sample.py's BatchSampler: `eval()`, `parameters()`, `init_state(batch, device)`,
`forward(idx, state)` for the prompt, `step(idx, state)`), so every sampling option and the
improbability drive work on a blend unchanged:

- vocabulary: the union of the models' characters, as one `CharTokenizer` (`blend.tokenizer`), sorted;
- next character: p(c) = Σ w_i · p_i(c), each p_i over its own vocabulary mapped into the union, with
  p_i(c) = 0 for a character model i cannot write. `step` returns log p (float32; -inf where no model
  can write c), so the sampler's softmax, temperature, top-k/p and log-space bands apply to p itself;
- state: the models' state tuples concatenated, (state_1..., state_2...). Every tensor keeps the batch
  first, so `cat_states`/`select_state` stack and split a blend's batch like any other model's;
- input: the chosen character goes to every model. A model that lacks it reads a stand-in
  (`stand_in`): the same character in the other case, its typographic plain form (’ → ', “ → ", — → -,
  … → .), its accent-free form (é → e), else a space: a character it has never seen is most often a
  symbol or digit between words, and a space keeps the model's idea of "between words" intact, where
  dropping the input would leave it one character behind the text.

`forward` returns the blend's log-probabilities in place of hidden vectors (the models share no
hidden space), and `head` is the identity on them, so `loss()` and `head.token_log_probs()` work as
for any LanguageModel: that is how bench/blend.py scores held-out text.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .model import LanguageModel, LogProbHead, ModelConfig, State
from .tokenizer import CharTokenizer

# Typographic characters and the plain ones a model trained on plain text knows instead.
PLAIN_FORMS = {"’": "'", "‘": "'", "‛": "'", "`": "'", "“": '"', "”": '"', "„": '"', "«": '"', "»": '"',
               "–": "-", "—": "-", "‐": "-", "‑": "-", "−": "-", "…": ".", "\u00a0": " ", "\t": " ", "\r": "\n"}


def stand_in(ch: str, vocab: dict[str, int]) -> str:
    """The character a model with vocabulary `vocab` reads in place of `ch` (itself when it knows it)."""
    plain = PLAIN_FORMS.get(ch, "")
    base = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
    candidates = [ch, ch.swapcase(), plain, base, base.swapcase()]
    if plain == '"':
        candidates.append("'")  # a model without double quotes (tiny-shakespeare) knows the single one
    candidates += [" ", "\n"]
    for c in candidates:
        if len(c) == 1 and c in vocab:
            return c
    return next(iter(vocab))  # a vocabulary without even a space or newline: its first character


class BlendedModel(LanguageModel):
    def __init__(self, models: Sequence[LanguageModel], tokenizers: Sequence[CharTokenizer],
                 weights: Sequence[float], names: Sequence[str] | None = None):
        super().__init__()
        if len(models) < 2 or len(models) != len(tokenizers) or len(models) != len(weights):
            raise ValueError("a blend needs at least two models, each with its tokenizer and weight")
        for i, tok in enumerate(tokenizers):
            if getattr(tok, "kind", None) != "char":
                raise ValueError(f"blend voice {i} is not a character model: only char models can be blended "
                                 "(their next-character distributions share an alphabet; word vocabularies do not)")
        if not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"blend weights must be non-negative, finite and not all zero, got {list(weights)}")
        devices = {next(m.parameters()).device for m in models}
        if len(devices) > 1:
            raise ValueError(f"the blended models must be on one device, got {sorted(map(str, devices))}")
        total = float(sum(weights))
        self.weights = [float(w) / total for w in weights]
        self.names = list(names) if names is not None else [f"voice{i}" for i in range(len(models))]
        self.voices = nn.ModuleList(models)
        self.voice_tokenizers = list(tokenizers)
        self.tokenizer = CharTokenizer(sorted(set().union(*(t.vocab for t in tokenizers))))
        union = self.tokenizer.index
        device = devices.pop()
        for i, tok in enumerate(tokenizers):
            # union id → the id this voice reads (its stand-in where it lacks the character) ...
            reads = [tok.index[stand_in(ch, tok.index)] for ch in self.tokenizer.vocab]
            self.register_buffer(f"_reads_{i}", torch.tensor(reads, dtype=torch.long, device=device), persistent=False)
            # ... and this voice's ids → their place in the union, where its probabilities go.
            writes = [union[ch] for ch in tok.vocab]
            self.register_buffer(f"_writes_{i}", torch.tensor(writes, dtype=torch.long, device=device),
                                 persistent=False)
        self.register_buffer("_log_weights", torch.tensor(self.weights, dtype=torch.float32, device=device).log(),
                             persistent=False)
        # How many tensors of the concatenated state belong to each voice (2 for an LSTM, 1 for a GRU or MLP).
        self._state_sizes = [len(m.init_state(1, device)) for m in models]
        first = models[0].config
        # Descriptive only: nothing reads a blend's layers or widths, but code that branches on the family
        # (char vs word) must see a char model with the union's vocabulary.
        self.config = ModelConfig(family="char-rnn", vocab_size=len(self.tokenizer), cell=first.cell,
                                  n_layers=first.n_layers, n_embd=first.n_embd, n_hidden=first.n_hidden)
        self.head = LogProbHead()

    def unknown_to(self, voice: int, text: str) -> list[str]:
        """Characters of `text` that voice `voice` reads as a stand-in (for callers that want to tell the user)."""
        return self.voice_tokenizers[voice].unknown(text)

    def split_state(self, state: State) -> list[State]:
        parts, at = [], 0
        for n in self._state_sizes:
            parts.append(tuple(state[at:at + n]))
            at += n
        return parts

    def init_state(self, batch_size: int, device: torch.device | str = "cpu") -> State:
        return tuple(t for m in self.voices for t in m.init_state(batch_size, device))

    def _mix(self, voice_log_probs: list[torch.Tensor]) -> torch.Tensor:
        """log Σ w_i p_i over the union, from each voice's log-probabilities over its own vocabulary."""
        shape = (*voice_log_probs[0].shape[:-1], len(self.tokenizer))
        placed = []
        for i, logp in enumerate(voice_log_probs):
            union = logp.new_full(shape, -math.inf)
            index = getattr(self, f"_writes_{i}").expand(*shape[:-1], -1)
            placed.append(union.scatter(-1, index, logp + self._log_weights[i]))
        return torch.stack(placed).logsumexp(0)

    def step(self, idx: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        log_probs, new_state = [], []
        for i, (model, part) in enumerate(zip(self.voices, self.split_state(state))):
            logits, part = model.step(getattr(self, f"_reads_{i}")[idx], part)
            log_probs.append(F.log_softmax(logits.float(), -1))
            new_state.extend(part)
        return self._mix(log_probs), tuple(new_state)

    def forward(self, idx: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """idx (B, T) → the blend's log-probabilities (B, T, V_union) of the next character, and the state."""
        if state is None:
            state = self.init_state(idx.size(0), idx.device)
        log_probs, new_state = [], []
        for i, (model, part) in enumerate(zip(self.voices, self.split_state(state))):
            hidden, part = model(getattr(self, f"_reads_{i}")[idx], part)
            log_probs.append(F.log_softmax(model.head.logits(hidden).float(), -1))
            new_state.extend(part)
        return self._mix(log_probs), tuple(new_state)


def blend(checkpoints: Sequence, weights: Sequence[float], names: Sequence[str] | None = None
          ) -> tuple[BlendedModel, CharTokenizer]:
    """A blend of loaded checkpoints (trainer.checkpoint.Checkpoint: `.model`, `.tokenizer`) and its tokenizer:
    what `BatchSampler(model, tokenizer, device)` takes."""
    model = BlendedModel([c.model for c in checkpoints], [c.tokenizer for c in checkpoints], weights, names)
    return model, model.tokenizer
