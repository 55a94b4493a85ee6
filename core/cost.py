"""What a generate job costs, in units: the one measure every limit counts jobs by (a member's and a server's
jobs in flight, a member's cooldown, the ambient budget).

One unit is a default request of a default persona: the family's default length (db/personas.py's sampling
defaults: 500 characters for a character model, 80 or 60 words for the word models) from a bundled-size model
(3.4 M parameters: 6.7 MB at fp16, 13.5 MB at fp32), without the improbability drive, one voice. A job costs

    tokens / the family's default length  ×  model size factor  ×  drive factor  ×  number of voices

- model size: the checkpoint's bytes over REFERENCE_MODEL_BYTES, never below 1 (a smaller model is not
  cheaper to serve in practice: the step is dominated by fixed overheads);
- drive: the improbability drive on a character model rolls out 48 candidate words at every word boundary
  (trainer/word_drive.py) and scores them; measured at batch 1 on one thread it writes 241-289 characters per
  CPU second against 2,844-3,125 without it (docs/benchmarks.md: "drive cost"), about 12 times the work. On a
  word model it only re-ranks the vocabulary: 1,912 → 1,568 tokens per second, about 1.25 times;
- blend: every voice runs its own model at every step, so n voices cost n times one.

A 2,000-character blend of two voices through the drive: 4 × 1 × 12 × 2 = 96 units.
"""

from __future__ import annotations

from collections.abc import Mapping

DEFAULT_TOKENS = {"char-rnn": 500, "word-gru": 80, "word-mlp": 60}  # db/personas.py's family defaults
REFERENCE_MODEL_BYTES = 16_000_000  # a bundled-size model at fp32 (13.5 MB) and a little room: factor 1
DRIVE_FACTOR = {"char-rnn": 12.0}  # measured (docs/benchmarks.md); word families below
WORD_DRIVE_FACTOR = 1.25
MIN_COST = 0.25  # a job's fixed costs (the queue, a message and its edits), however short the text


def model_factor(model_bytes: int | None) -> float:
    return max(1.0, (model_bytes or 0) / REFERENCE_MODEL_BYTES)


def drive_factor(params: Mapping, family: str) -> float:
    if not params.get("improbability"):
        return 1.0
    return DRIVE_FACTOR.get(family, WORD_DRIVE_FACTOR)


def job_cost(params: Mapping, model_bytes: int | None = None, blend_voices: int = 1,
             family: str = "char-rnn") -> float:
    """The job's cost in units (1 = a default request of a default persona), rounded to 2 decimals."""
    unit = DEFAULT_TOKENS.get(family, DEFAULT_TOKENS["char-rnn"])
    tokens = params.get("max_tokens") or unit
    cost = tokens / unit * model_factor(model_bytes) * drive_factor(params, family) * max(1, blend_voices)
    return round(max(cost, MIN_COST), 2)
