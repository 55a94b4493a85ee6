"""Fine-tuning a character model from a base: its vocabulary extended by the new text's characters, its
weights copied into the bigger model so that, before any step, it behaves exactly like the base."""

from __future__ import annotations

import torch

from .model import LanguageModel
from .tokenizer import CharTokenizer


def extend_vocabulary(tokenizer: CharTokenizer, text: str) -> CharTokenizer:
    """The base's characters in their order (so its weights keep their rows), then the characters of
    `text` the base never saw."""
    known = set(tokenizer.vocab)
    return CharTokenizer(tokenizer.vocab + sorted(set(CharTokenizer.build(text).vocab) - known))


@torch.no_grad()
def load_base_weights(model: LanguageModel, base: LanguageModel) -> None:
    """Copy a base model's weights into `model`, whose vocabulary extends the base's at the end.
    New characters get the mean embedding of the known ones (an "unremarkable character" to the
    recurrent layers) and an output row that predicts them as rarely as the base's rarest character,
    so before fine-tuning the model behaves exactly like the base on the base's characters."""
    own, theirs = model.state_dict(), base.state_dict()
    n_old = base.config.vocab_size
    for name, value in theirs.items():
        target = own[name]
        if target.shape == value.shape:
            target.copy_(value)
            continue
        if target.shape[1:] != value.shape[1:] or target.shape[0] < n_old:
            raise ValueError(f"the base's {name} has shape {tuple(value.shape)}, "
                             f"this model needs {tuple(target.shape)}")
        target[:n_old] = value
        if name.endswith("bias"):
            target[n_old:] = value.min()
        else:
            target[n_old:] = value.mean(0)
    model.load_state_dict(own)
