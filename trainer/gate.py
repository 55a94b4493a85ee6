"""The quality gate: a trained model replaces a persona's model only when it predicts held-out text better than
both the pretrained base (what every character persona starts from) and the model now active, all three scored
on the same held-out characters of the run's split (trainer/heldout.py: text that shares no 50-character window
with the training text, so a model cannot pass by having seen it).

Before the first step, `open_gate` refuses a text with too little distinct text (core.dedup) or one the base
already predicts at under DEGENERATE_NATS (nothing left to learn), with the numbers. After the run, `judge`
scores the candidate and the active model on the same characters and says why, with the three numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from core.dedup import check_distinct
from core.text import DOCUMENT_SEPARATOR, CorpusError, DecodedCorpus

from . import checkpoint as ckpt
from .corpus import fit_batch_shape
from .data import TokenStreams, split_corpus
from .evaluate import evaluate
from .finetune import extend_vocabulary, load_base_weights
from .model import ModelConfig, build_model
from .pretrained import DEFAULT_BASE, resolve_init

DEGENERATE_NATS = 0.5  # nats/char: prose costs the base 1.2-1.6; lines of spaces cost it 0.39
GATE_MARGIN = 0.01  # nats/char a candidate must win by: an 8-step fine-tune differs from its base by ~0.001
GATE_MAX_CHARS = 32_768  # held-out characters scored per model: spread blocks of a longer held-out text
GATE_BLOCK = 4096
# A model must also beat counting letters: held-out loss at most this share of the unigram baseline's
# (nats/token). A char LSTM that writes real words is near 0.47 of it; noise stays near 1.0.
GATE_RATIO = {"char-rnn": 0.60, "word-gru": 0.85, "word-mlp": 0.85}


def gate_sample(val_text: str, max_chars: int = GATE_MAX_CHARS, block: int = GATE_BLOCK) -> str:
    """At most `max_chars` of the held-out text: all of it, or whole blocks spread evenly through it."""
    if len(val_text) <= max_chars:
        return val_text
    n_blocks = -(-len(val_text) // block)
    k = max(1, max_chars // block)
    picks = [(2 * i + 1) * n_blocks // (2 * k) for i in range(k)]
    return DOCUMENT_SEPARATOR.join(val_text[p * block:(p + 1) * block] for p in picks)


def _scoring_model(checkpoint: ckpt.Checkpoint, text: str):
    """(model, tokenizer) that can score `text`: a char model gets the text's new characters as rows that
    predict them as rarely as its rarest one (trainer.finetune), in float32 whatever the file's precision."""
    if checkpoint.tokenizer.kind != "char":
        return checkpoint.model.float().eval(), checkpoint.tokenizer
    tokenizer = extend_vocabulary(checkpoint.tokenizer, text)
    model = build_model(ModelConfig.from_dict({**checkpoint.meta["model"], "vocab_size": len(tokenizer),
                                               "dropout": 0.0}))
    load_base_weights(model, checkpoint.model.float())
    return model.eval(), tokenizer


def score(checkpoint: ckpt.Checkpoint, text: str) -> float:
    """Held-out loss of `checkpoint` on `text` in nats per character (nats/token for a char model; a word model's
    total over the characters its tokens cover), state carried through 32 streams as in evaluation."""
    model, tokenizer = _scoring_model(checkpoint, text)
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    if len(ids) < 2:
        return math.nan
    batch, seq, _ = fit_batch_shape(len(ids), 32, 100, min_seq_len=1)
    return evaluate(model, TokenStreams(ids, batch, seq)) * len(ids) / max(len(text), 1)


def base_checkpoint(family: str, init: str) -> ckpt.Checkpoint | None:
    """The base every character persona fine-tunes from (the run's own `init`, else the shipped one); a word
    model has none."""
    return ckpt.load(resolve_init(init or DEFAULT_BASE)) if family == "char-rnn" else None


@dataclass
class Gate:
    text: str  # the held-out characters every model is scored on
    base_loss: float | None  # nats/char; None for a word model
    distinct_bytes: int = 0
    split: dict = field(default_factory=dict)


def open_gate(config, corpus: DecodedCorpus | str, min_distinct_bytes: int) -> Gate:
    """Before training: refuse (CorpusError "repetitive" or "degenerate", with the numbers) a text with too little
    distinct text, with no held-out text left once overlaps are dropped, or that the base already predicts at
    under DEGENERATE_NATS; else the held-out sample and the base's loss on it."""
    distinct = check_distinct(corpus if isinstance(corpus, str) else corpus.text, min_distinct_bytes)
    split = split_corpus(config, corpus)
    text = gate_sample(split.val_text)
    stats = {"duplicate_chars": split.duplicate_chars, "overlap_chars": split.overlap_chars, "chars": len(text)}
    if config.val_fraction > 0 and len(text) < 2:
        raise CorpusError("repetitive", f"No held-out text is left: every paragraph that could be held out shares "
                                        f"a 50-character passage with the rest ({split.overlap_chars:,} characters "
                                        "dropped). The text repeats itself; upload varied text.")
    base = base_checkpoint(config.family, config.init)
    base_loss = score(base, text) if base is not None and text else None
    if base_loss is not None and base_loss < DEGENERATE_NATS:
        raise CorpusError("degenerate", f"The base model already predicts this text at {base_loss:.3f} nats/char "
                                        f"on {len(text):,} held-out characters (prose costs it 1.2-1.6; the least "
                                        f"accepted is {DEGENERATE_NATS}): it is too repetitive to learn a voice "
                                        "from. Upload varied text.")
    return Gate(text, base_loss, distinct.distinct_bytes, stats)


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    reason: str  # one plain sentence for the user, with the numbers
    losses: dict = field(default_factory=dict)  # nats/char on the gate's text: candidate, base, active


def _unigram_refusal(family: str, val_loss: float | None, unigram: float | None) -> str | None:
    if val_loss is None or unigram is None or not (math.isfinite(val_loss) and math.isfinite(unigram)):
        return None
    limit = GATE_RATIO.get(family, 0.85) * unigram
    if val_loss <= limit:
        return None
    return (f"its held-out loss {val_loss:.3f} nats/token is above {limit:.3f} ({GATE_RATIO.get(family, 0.85):.0%} "
            f"of the {unigram:.3f} that counting letters alone gives), so its text would not read as words yet: "
            "train longer or upload more text")


def verdict(family: str, candidate: float, base: float | None, active: float | None, chars: int,
            val_loss: float | None = None, unigram: float | None = None) -> GateVerdict:
    """Promote only a candidate that beats the base and the active model by GATE_MARGIN nats/char on the same
    held-out characters (and beats counting letters); the reason carries the numbers either way."""
    losses = {"candidate": candidate, "base": base, "active": active, "chars": chars}
    if not math.isfinite(candidate):
        return GateVerdict(False, "the run ended before its held-out loss could be measured; train longer", losses)
    rivals = [(f"the base model's {base:.3f}", base)] if base is not None else []
    if active is not None and math.isfinite(active):
        rivals.append((f"the active model's {active:.3f}", active))
    if rivals:
        against = " and ".join(name for name, _ in rivals)
        numbers = f"held-out loss {candidate:.3f} nats/char against {against} (on {chars:,} held-out characters)"
    else:
        numbers = f"held-out loss {candidate:.3f} nats/char on {chars:,} held-out characters (no model to compare with)"
    beaten = [name for name, loss in rivals if not candidate < loss - GATE_MARGIN]
    if beaten:
        return GateVerdict(False, f"{numbers}: it must beat {' and '.join(beaten)} by {GATE_MARGIN} to replace it; "
                                  "train longer or upload more text", losses)
    refusal = _unigram_refusal(family, val_loss, unigram)
    if refusal:
        return GateVerdict(False, f"{numbers}, but {refusal}", losses)
    return GateVerdict(True, numbers.replace(" against ", " beats ", 1) if rivals else numbers, losses)


def judge(gate: Gate, family: str, best: ckpt.Checkpoint, active: ckpt.Checkpoint | None,
          val_loss: float | None, unigram: float | None) -> GateVerdict:
    """Score the candidate and the active model on the gate's held-out text and decide."""
    candidate = score(best, gate.text) if gate.text else math.nan
    active_loss = score(active, gate.text) if active is not None and gate.text else None
    return verdict(family, candidate, gate.base_loss, active_loss, len(gate.text), val_loss, unigram)
